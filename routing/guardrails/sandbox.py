"""Python regular expressions under a time limit.

A policy's pattern that RE2 cannot run (a backreference, a lookaround) goes to
Python's engine, which backtracks and cannot be interrupted: `(a+)+$` on a long
run of "a"s would hold the worker for minutes. So such patterns run in one
child process per gateway process; when a match passes its time limit the
child is killed (and started again on the next use) and the check reports a
timeout, which its failure mode turns into a refusal or a recorded pass.
"""

import asyncio
import multiprocessing
import re
import threading
from functools import lru_cache

_child = None
_lock = threading.Lock()


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def serve(conn) -> None:
    """The child's loop: (pattern, text) in, the spans of its matches out."""
    conn.send("ready")
    while True:
        try:
            pattern, text = conn.recv()
        except EOFError:
            return
        try:
            conn.send([m.span() for m in _compiled(pattern).finditer(text)])
        except re.error:
            conn.send([])


def _start():
    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=serve, args=(child,), daemon=True,
                                                           name="guardrail-regex")
    process.start()
    if not parent.poll(30):  # the child's interpreter starting is not the pattern's time
        process.kill()
        raise TimeoutError("the guardrail pattern process did not start")
    parent.recv()
    return process, parent


def finditer_blocking(pattern: str, text: str, seconds: float) -> list[tuple[int, int]] | None:
    """The spans `pattern` matches in `text`, or None when it ran past `seconds`."""
    global _child
    with _lock:
        if _child is None or not _child[0].is_alive():
            _child = _start()
        process, conn = _child
        conn.send((pattern, text))
        if conn.poll(seconds):
            return conn.recv()
        process.kill()
        process.join()
        _child = None
        return None


async def finditer(pattern: str, text: str, seconds: float) -> list[tuple[int, int]] | None:
    return await asyncio.to_thread(finditer_blocking, pattern, text, seconds)
