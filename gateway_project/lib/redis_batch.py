"""Script calls (and single commands) issued in the same turn of the event loop go to Redis together.

Every admitted call runs two Lua scripts (its admission, its settlement). Under
load, several calls reach the same step in one turn of the loop; sent one by
one, each pays its own connection checkout, socket write and read wake-up,
which cost more CPU than the script's arguments. Here the first call of a turn
schedules a flush for the end of that turn and every call of the turn joins it:
one pipeline (not a transaction: each script stays atomic on its own, as
before), one write, one read. A lone call goes out as it always did, so one
client's latency is unchanged.

Each caller gets its own script's result or error (a script's error fails that
call only; a connection error fails the whole batch, as it would have failed
each call). On a Redis Cluster each call goes on its own: the client routes it
to the node of its keys' slot.
"""

import asyncio

import redis
from redis.commands.core import AsyncScript

from . import redis_pool
from .redis_pool import async_redis

_pending: dict[asyncio.AbstractEventLoop, list] = {}


async def run_script(script: AsyncScript, keys: list, args: list) -> object:
    """`await script(keys=keys, args=args)`, in one round trip with the other scripts called in this turn."""
    if redis_pool.topology().kind == redis_pool.CLUSTER:
        return await script(keys=keys, args=args)
    return await _join(script, (keys, args))


async def run_command(*args) -> object:
    """`await async_redis().execute_command(*args)`, in one round trip with the others of this turn
    (a stream's in-flight checkpoint: 10,000 open streams write theirs as their chunks come)."""
    if redis_pool.topology().kind == redis_pool.CLUSTER:
        return await async_redis().execute_command(*args)
    return await _join(None, list(args))


async def _join(script: AsyncScript | None, args) -> object:
    loop = asyncio.get_running_loop()
    batch = _pending.get(loop)
    if batch is None:
        batch = _pending[loop] = []
        # A task's first step runs in the loop's next turn, after every callback of this one: the
        # calls of this turn have joined the batch by then, and the sender needs no turn of its own.
        task = loop.create_task(_flush(loop))
        _sending.add(task)
        task.add_done_callback(_sending.discard)
    future = loop.create_future()
    batch.append((script, args, future))
    return await future


async def _flush(loop: asyncio.AbstractEventLoop) -> None:
    if batch := _pending.pop(loop, ()):
        await _send(batch)


_sending: set = set()


async def _send(batch: list) -> None:
    if len(batch) == 1:
        script, args, future = batch[0]
        try:
            _settle(future, await (script(keys=args[0], args=args[1]) if script
                                   else async_redis().execute_command(*args)))
        except BaseException as exc:  # noqa: BLE001 (handed to the one caller, as its own call would)
            _settle(future, exc)
        return
    try:
        async with async_redis().pipeline(transaction=False) as pipe:
            for script, args, _ in batch:
                if script:
                    keys, values = args
                    pipe.evalsha(script.sha, len(keys), *keys, *values)
                else:
                    pipe.execute_command(*args)
            results = await pipe.execute(raise_on_error=False)
    except BaseException as exc:  # noqa: BLE001 (the connection failed: every call of the batch fails)
        for _, _, future in batch:
            _settle(future, exc)
        return
    for (script, args, future), result in zip(batch, results, strict=True):
        if script and isinstance(result, redis.exceptions.NoScriptError):
            # Redis restarted or was flushed: the script's own call loads it and runs it.
            try:
                result = await script(keys=args[0], args=args[1])
            except BaseException as exc:  # noqa: BLE001
                result = exc
        _settle(future, result)


def _settle(future: asyncio.Future, result: object) -> None:
    if future.done():  # its caller gave up (a client that hung up, a timeout)
        return
    if isinstance(result, asyncio.CancelledError):
        future.cancel()
    elif isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
