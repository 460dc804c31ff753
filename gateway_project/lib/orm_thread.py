"""Run synchronous ORM code from the async hot path.

The hot path touches the database only on a cache miss. Those calls run on a
small dedicated pool so that they neither block the event loop nor open a new
connection per request (asgiref's thread-sensitive mode gives every request
its own thread, and so its own connection).
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from typing import TypeVar

from django.db import close_old_connections, connections

T = TypeVar("T")

_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gateway-orm")


def _with_connection(fn: Callable[..., T], *args) -> T:
    # Drop connections past CONN_MAX_AGE or broken by a database restart.
    close_old_connections()
    return fn(*args)


async def run_orm(fn: Callable[..., T], *args) -> T:
    return await asyncio.get_running_loop().run_in_executor(_pool, _with_connection, fn, *args)


def close_connections() -> None:
    """Close each pool thread's database connection (tests call this before dropping their database)."""
    workers = _pool._max_workers
    barrier = Barrier(workers)

    def close() -> None:
        barrier.wait(timeout=5)  # one task per thread: each closes its own connection
        connections.close_all()

    for future in [_pool.submit(close) for _ in range(workers)]:
        future.result()
