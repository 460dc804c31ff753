#!/usr/bin/env python3
"""Instructions per request: the gateway's CPU cost counted, not timed, so that two checkouts compare
within a percent or two on a machine whose neighbours come and go.

    python3 bench/instructions.py [--requests 200] [--warm 30] [--compare DIR] [--scenario chat ...]
                                  [--no-valgrind]

`bench/run.py` times the gateway under load; on a shared two-core machine its CPU per request moves
by 10% from one run to the next. This counts instead: each checkout's gateway (its ASGI application,
lifespan and background tasks included, in one process) answers the benchmark's requests one at a time,
driven in-process, with the mock upstream, PostgreSQL and Redis real, under valgrind's callgrind, which
counts the instructions the process executes (`--instr-atstart=no`; counting is switched on around each
scenario's measured requests with `callgrind_control`, after `--warm` requests that fill the caches).
Instruction counts leave out the kernel's share (socket writes, epoll) and the time a cache miss costs,
so they are a measure of the Python work on the request path, which is what code changes move.

`--compare DIR` runs another checkout's gateway (a git worktree of an earlier commit) the same way, in
parallel, with its own database `<name>_instructions_compare` and Redis database, and prints this
checkout's counts as ratios of that one's. Redis databases: BENCH_REDIS_URL and BENCH_COMPARE_REDIS_URL
if set, else REDIS_URL's server, databases 12 and 11 (each flushed first). A scenario whose body holds
`{n}` (the cache-miss rows) gets the request's number there: a body of its own for every request.
`--no-background` stops the gateway's clock-driven background tasks (metrics push, routing stats, in-flight
beat, request-log flush, the cache's expiry sweep) before the first request, so that only the request path is
counted: under valgrind on a loaded machine a request takes long enough for those tasks to add a share that
depends on the machine's load (40% of a stream, in one run), not on the code.
`--no-limits` leaves the key's and tenant's limits out (a call with no limit makes no admission round trip).
`--keep DIR` copies callgrind's dumps (one per scenario and checkout) into DIR, for `callgrind_annotate`.
`--no-valgrind` runs the same driver without valgrind and reports process CPU time per request instead
(quick, and as noisy as any timing).

Installs valgrind (Debian package) if missing.
"""

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def ensure_valgrind() -> None:
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        return
    print("installing valgrind (Debian package)…", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "valgrind"], check=True, capture_output=True)


# --- the child: one checkout's gateway, driven in-process ---

def asgi_request(path: str, body: bytes, key: str) -> tuple[dict, list]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {key}".encode()), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    return scope, [{"type": "http.request", "body": body, "more_body": False}]


async def call(app, path: str, body: bytes, key: str) -> int:
    """One request through the ASGI application, read to its last byte; its status."""
    scope, messages = asgi_request(path, body, key)
    done, status = asyncio.Event(), []

    async def receive():
        if messages:
            return messages.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope, receive, send)
    return status[0]


async def lifespan(app) -> asyncio.Event:
    started, stop, messages = asyncio.Event(), asyncio.Event(), [{"type": "lifespan.startup"}]

    async def receive():
        if messages:
            return messages.pop()
        await stop.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message):
        if message["type"] == "lifespan.startup.complete":
            started.set()

    asyncio.get_running_loop().create_task(app({"type": "lifespan"}, receive, send))
    await started.wait()
    return stop


# The lifespan's loops that run by the clock, by their coroutine's name (an older checkout has fewer).
CLOCK_DRIVEN = frozenset({"push_forever", "sync_forever", "beat_forever", "flush_forever", "drain_forever",
                          "sweep_forever"})


def stop_clock_driven() -> int:
    """Cancel the background loops that run by the clock; how many there were."""
    tasks = [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__name__", "") in CLOCK_DRIVEN]
    for task in tasks:
        task.cancel()
    return len(tasks)


def control(*args: str) -> None:
    """Tell callgrind, from inside the counted process, to switch counting or dump its counts."""
    subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True, capture_output=True)


async def drive(opts) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
    import gateway_project.asgi  # noqa: PLC0415  (the checkout's own code, from its directory)

    app = gateway_project.asgi.application
    await lifespan(app)
    if opts.no_background:
        # The clock-driven tasks (metrics push, routing stats, in-flight beat, request-log flush, cache sweep)
        # stopped: under valgrind a request takes many times its real time, so each request would count a
        # share of them that grows with how slow the machine is, not with the request's own work.
        await asyncio.sleep(0.5)  # the first round of each (the in-flight heartbeat's included) is done
        stop_clock_driven()
    for name, (path, body) in json.loads(opts.scenarios).items():
        # {n} in a body: the request's number, a body of its own for every request (a cache miss).
        payloads = (body.replace("{n}", str(n)).encode() if "{n}" in body else body.encode()
                    for n in range(opts.warm + opts.requests))
        for _ in range(opts.warm):
            if (status := await call(app, path, next(payloads), opts.key)) != 200:
                raise SystemExit(f"{name}: the gateway answered {status}")
        gc.collect()  # every scenario starts from the same collector state
        if opts.valgrind:
            control("-i", "on")
            control("-z")
        started = time.process_time()
        for payload in payloads:
            await call(app, path, payload, opts.key)
        cpu = time.process_time() - started
        if opts.valgrind:
            control("-d", name)
            control("-i", "off")
        print(json.dumps({"scenario": name, "cpu_ms": cpu * 1000 / opts.requests}), flush=True)
    os._exit(0)  # the lifespan's background tasks need no orderly stop here


# --- the parent: databases, the mock, one child per checkout ---

def counts(out: Path, requests: int) -> dict[str, float]:
    """{scenario: instructions per request} from callgrind's dumps (one file per scenario)."""
    result = {}
    for dump in out.parent.glob(out.name + ".*"):
        text = dump.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: dump (.+)$", text, re.M)
        totals = re.search(r"^totals: (\d+)", text, re.M)
        if trigger and totals:
            result[trigger.group(1)] = int(totals.group(1)) / requests
    return result


def start_child(root: Path, env: dict, key: str, scenarios: dict, opts, out: Path) -> subprocess.Popen:
    python = os.path.realpath(sys.executable)  # valgrind must see the interpreter, not a shim that execs it
    command = [python, str(Path(__file__).resolve()), "--child", "--key", key, "--scenarios", json.dumps(scenarios),
               "--requests", str(opts.requests), "--warm", str(opts.warm)] + (
                   ["--no-background"] if opts.no_background else [])
    if not opts.no_valgrind:
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *command,
                   "--valgrind"]
    child_env = {**env, "PYTHONPATH": str(root), "PYTHONHASHSEED": "0", "DJANGO_SETTINGS_MODULE": "gateway_project.settings"}
    return subprocess.Popen(command, cwd=root, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def main() -> None:
    if "--child" in sys.argv:  # the driven checkout's code comes from its own directory (PYTHONPATH)
        sys.path.remove(str(Path(__file__).resolve().parent))
        bench = None
    else:
        sys.path.insert(0, str(ROOT))
        from bench import run as bench  # noqa: PLC0415  (the load benchmark's database and mock helpers)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="measured requests per scenario")
    parser.add_argument("--warm", type=int, default=30, help="requests per scenario before counting starts")
    parser.add_argument("--compare", type=Path, metavar="DIR", help="also count another checkout's gateway")
    parser.add_argument("--scenario", action="append", dest="names", metavar="NAME",
                        help="one of bench/run.py's scenarios (repeat for more; all by default): "
                        + "; ".join(bench.SCENARIOS if bench else ()))
    parser.add_argument("--no-valgrind", action="store_true", help="time in-process CPU instead of counting")
    parser.add_argument("--no-background", action="store_true",
                        help="stop the gateway's clock-driven background tasks before counting (request path only)")
    parser.add_argument("--no-limits", action="store_true",
                        help="no limits on the key and tenant (they are on by default, as in bench/run.py)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy callgrind's dumps (one per scenario and checkout) into DIR, for callgrind_annotate")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--valgrind", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--scenarios", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        asyncio.run(drive(opts))
        return

    names = opts.names or list(bench.SCENARIOS)
    if unknown := [n for n in names if n not in bench.SCENARIOS]:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    if not opts.no_valgrind:
        ensure_valgrind()
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gateway")
    tmp = Path(tempfile.mkdtemp(prefix="gateway-instructions-"))
    common = {**os.environ, "LOG_LEVEL": "WARNING", "DEBUG": "false", "USAGE_DRAIN_IN_PROCESS": "false"}
    mock_port = bench.free_port()
    mock_url = f"http://127.0.0.1:{mock_port}/v1"
    mock = bench.start([sys.executable, "-m", "providers.mock_upstream", "--port", str(mock_port)], common)
    checkouts = {"this": ROOT} | ({"other": opts.compare.resolve()} if opts.compare else {})
    children = {}
    try:
        bench.wait_http(mock_url + "/models")
        for n, (tag, root) in enumerate(checkouts.items()):
            redis_url = os.environ.get(("BENCH_REDIS_URL", "BENCH_COMPARE_REDIS_URL")[n]) or os.environ.get(
                "REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + f"/{12 - n}"
            env = {**common, "DATABASE_URL": base + ("_instructions" if tag == "this" else "_instructions_compare"),
                   "REDIS_URL": redis_url, "GATEWAY_DATA_DIR": str(tmp / tag)}
            (tmp / tag).mkdir()
            redis.Redis.from_url(redis_url).flushdb()
            key = bench.prepare_database(env, mock_url, not opts.no_limits, root)
            scenarios = {s: bench.SCENARIOS[s] for s in names if not (tag == "other" and s in bench.NEWER
                                                                     and not bench.knows(root, s))}
            children[tag] = start_child(root, env, key, scenarios, opts, tmp / f"{tag}.out")
        results = {}
        for tag, child in children.items():
            out, err = child.communicate(timeout=3600)
            if child.returncode != 0:
                raise SystemExit(f"{checkouts[tag]}: the driven gateway failed:\n{err[-3000:]}")
            cpu = {row["scenario"]: row["cpu_ms"] for row in map(json.loads, out.splitlines()) if row}
            results[tag] = (cpu, {} if opts.no_valgrind else counts(tmp / f"{tag}.out", opts.requests))
    finally:
        mock.terminate()
        for child in children.values():
            if child.poll() is None:
                child.kill()
    print_tables(names, results, opts, bench)
    if opts.keep:
        opts.keep.mkdir(parents=True, exist_ok=True)
        for dump in tmp.glob("*.out.*"):
            shutil.copy(dump, opts.keep / dump.name)
    shutil.rmtree(tmp, ignore_errors=True)


def print_tables(names: list[str], results: dict, opts, bench) -> None:
    counted = not opts.no_valgrind
    unit = "M instructions/req" if counted else "CPU ms/req (in-process)"

    def figure(tag: str, scenario: str) -> float | None:
        cpu, instructions = results.get(tag, ({}, {}))
        value = instructions.get(scenario) if counted else cpu.get(scenario)
        return None if value is None else value / 1e6 if counted else value

    print(f"\n{opts.requests} requests per scenario, one at a time, after {opts.warm} to warm up; "
          + ("instructions counted by callgrind" if counted else "CPU time of the process") + "\n")
    compare = "other" in results
    head = ["scenario", f"this {unit}"] + ([f"other {unit}", "this/other"] if compare else [])
    print("| " + " | ".join(head) + " |\n|" + " --- |" + " ---: |" * (len(head) - 1))
    for scenario in names:
        this, other = figure("this", scenario), figure("other", scenario)
        cells = [scenario, f"{this:.3f}" if this is not None else "-"]
        if compare:
            ratio = f"{this / other:.3f}" if this is not None and other else "-"
            cells += [f"{other:.3f}" if other is not None else "-", ratio]
        print("| " + " | ".join(cells) + " |")
    pairs = [(r, c) for r, c in bench.AGAINST_CHAT.items() if r in names and c in names]
    if pairs:
        print("\n| scenario | chat | it | it/chat |\n| --- | ---: | ---: | ---: |")
        for other, chat in pairs:
            a, b = figure("this", chat), figure("this", other)
            print(f"| {other} | {a:.3f} | {b:.3f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
