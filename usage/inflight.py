"""Calls in flight, so that a gateway worker killed mid-call still bills what it sent and relayed.

A call's usage event is normally buffered when the call ends, and a worker
that dies (SIGKILL, out of memory, a crashed host) never gets there. So, when
a call is admitted, the worker writes the event as it would stand if the call
stopped there (status "interrupted", the prompt's tokens at the prices of the
deployment about to be called) into its own hash in Redis, one per shard of
tenants, `gw:T:inflight:<worker>` (T the tenant's hash tag,
gateway_project/lib/redis_keys.py): inside the admission script when a limit applies (no
added round trip), else with one HSET beside the upstream call. Once a
stream's first chunk has gone out, the entry is rewritten with the completion
tokens relayed so far, then at most every USAGE_INFLIGHT_CHECKPOINT seconds
while chunks flow. The call's real event deletes the entry in the round trip
that buffers it (the settle script, or a pipeline).

Every gateway process beats (`gw:T:workers` of every shard: worker -> last
beat, by the clock of the Redis serving that shard) several times per
USAGE_INFLIGHT_LEASE, and reaps shard by shard: the entries of a worker whose
last beat in that shard is older than the lease are moved into the shard's
usage stream by one Lua script, so exactly once; the drain then writes them like any event
(and, the request id being unique, an event written twice is one row).

A process reaps only after its own beats have gone through promptly for a
whole lease: after Redis was paused or unreachable, every live worker has
beaten again before anyone judges it dead.
"""

import asyncio
import logging
import os
import secrets
import socket
import time

from django.conf import settings

from gateway_project.lib import redis_batch, redis_health, redis_keys
from gateway_project.lib.redis_pool import async_redis, redis_failures

log = logging.getLogger(__name__)



def workers_key(shard: int) -> str:
    return f"gw:{redis_keys.tag(shard)}:workers"


def prefix(shard: int) -> str:
    return f"gw:{redis_keys.tag(shard)}:inflight:"


_BEAT = r"""
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], t[1] * 1000 + math.floor(t[2] / 1000))
return 1
"""

# Move the entries of every worker silent for longer than the lease (ARGV[1],
# ms) into the usage stream (KEYS[3]); forget the worker. Returns how many were moved.
_REAP = r"""
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local moved = 0
local workers = redis.call('HGETALL', KEYS[1])
for i = 1, #workers, 2 do
  if now - tonumber(workers[i + 1]) > tonumber(ARGV[1]) then
    local entries = KEYS[2] .. workers[i]
    for _, event in ipairs(redis.call('HVALS', entries)) do
      redis.call('XADD', KEYS[3], '*', 'e', event)
      moved = moved + 1
    end
    redis.call('DEL', entries)
    redis.call('HDEL', KEYS[1], workers[i])
  end
end
return moved
"""

_worker: tuple[int, str] | None = None
# (hash, request id) of entries whose stream ended while Redis was unreachable.
_undeleted: set[tuple[str, str]] = set()


def worker_id() -> str:
    """This process's name in gw:workers (new after a fork)."""
    global _worker
    if _worker is None or _worker[0] != os.getpid():
        _worker = (os.getpid(), f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")
    return _worker[1]


def entries_key(tenant_id: int) -> str:
    """The hash of this worker's calls in flight for the tenant's shard."""
    return prefix(redis_keys.shard_of(tenant_id)) + worker_id()


async def checkpoint(key: str, request_id: str, event: bytes) -> bool:
    """Write (or rewrite) a call's in-flight entry into `key` (this worker's hash); whether it was."""
    if redis_health.down_for(key):
        return False
    try:
        # One command, beside the upstream call or the relay, in one round trip with the other
        # checkpoints of this turn of the loop (thousands of open streams would otherwise queue for the
        # pool's connections). The worker is known to the reapers from its first beat, at startup.
        await redis_batch.run_command("HSET", key, request_id, event)
    except redis_failures as exc:
        redis_health.failed(exc, key)
        log.warning("in-flight entry of %s not written (%s)", request_id, exc)
        return False
    return True


async def checkpoint_and_read(key: str, request_id: str, event: bytes, read: tuple[str, int, str]) -> bytes | None:
    """Write a call's in-flight entry and read `read` (a key, the TTL to renew it at or 0, and the sorted set
    its renewed expiry is recorded in or "") in one round trip: for a call with no limit, whose admission
    makes none. The value read; None when absent or when Redis failed (the entry is then not written either,
    as with `checkpoint`)."""
    if redis_health.down_for(key):
        return None
    name, renew, expiries = read
    try:
        async with async_redis().pipeline(transaction=False) as pipe:
            pipe.hset(key, request_id, event)
            pipe.getex(name, ex=renew) if renew else pipe.get(name)
            if renew and expiries:
                pipe.zadd(expiries, {name: int((time.time() + renew) * 1000)}, xx=True)
            value = (await pipe.execute())[1]
    except redis_failures as exc:
        redis_health.failed(exc, key)
        log.warning("in-flight entry of %s not written (%s)", request_id, exc)
        return None
    return value


# Per event loop: the streams' checkpoints queued in this turn ({hash: {request id: event}}), and the
# future their write resolves (to the hashes that were not written).
_queued: dict[asyncio.AbstractEventLoop, tuple[dict[str, dict[str, bytes]], asyncio.Future]] = {}
_flushing: set[asyncio.Task] = set()


def checkpoint_soon(key: str, request_id: str, event: bytes) -> asyncio.Future:
    """Queue a stream's checkpoint: the checkpoints of one turn of the loop go out as one HSET per hash,
    with no task or reply of their own (10,000 open streams write 10,000 a second). The future is
    shared by the turn's checkpoints; it resolves to the set of hashes that could not be written."""
    loop = asyncio.get_running_loop()
    queued = _queued.get(loop)
    if queued is None:
        queued = _queued[loop] = ({}, loop.create_future())
        # A task's first step runs in the loop's next turn: this turn's checkpoints have joined by then.
        task = loop.create_task(_write_queued(loop))
        _flushing.add(task)
        task.add_done_callback(_flushing.discard)
    entries = queued[0].get(key)
    if entries is None:
        entries = queued[0][key] = {}
    entries[request_id] = event
    return queued[1]


async def _write_queued(loop: asyncio.AbstractEventLoop) -> None:
    by_key, done = _queued.pop(loop)
    written = set()
    try:
        for key, entries in by_key.items():
            if redis_health.down_for(key):
                continue
            try:
                await redis_batch.run_command("HSET", key, *[v for item in entries.items() for v in item])
            except redis_failures as exc:
                redis_health.failed(exc, key)
                log.warning("in-flight entries of %d streams not written (%s)", len(entries), exc)
            else:
                written.add(key)
    finally:
        done.set_result(set(by_key) - written)


def delete_later(key: str, request_id: str) -> None:
    """The call ended but its entry could not be deleted (Redis unreachable): retry from the beat."""
    _undeleted.add((key, request_id))


async def _delete_undeleted(held: set[str]) -> None:
    # An event still held in this process is not in the database yet: its entry
    # stays, so that it is billed should this process die first.
    due = [(key, rid) for key, rid in _undeleted if rid not in held]
    if not due:
        return
    async with async_redis().pipeline(transaction=False) as pipe:
        for key, rid in due:
            pipe.hdel(key, rid)
        await pipe.execute()
    _undeleted.difference_update(due)


class Beat:
    """This process's heartbeat and reaper (one per gateway process, see asgi.py)."""

    def __init__(self) -> None:
        client = async_redis()
        self.beat = client.register_script(_BEAT)
        self.reap = client.register_script(_REAP)
        self.healthy_since: float | None = None

    async def once(self, held: set[str]) -> int:
        """Beat; reap if this process has beaten promptly for a whole lease. Returns events reaped."""
        lease = settings.USAGE_INFLIGHT_LEASE
        started = time.monotonic()
        try:
            await self._each_shard(self.beat, lambda shard: ([workers_key(shard)], [worker_id()]))
        except redis_failures:
            self.healthy_since = None
            raise
        now = time.monotonic()
        if now - started > min(1.0, lease / 3):
            self.healthy_since = None  # a slow beat: Redis may have been paused, others may have missed theirs
            return 0
        if self.healthy_since is None:
            self.healthy_since = started
        await _delete_undeleted(held)
        if now - self.healthy_since < lease:
            return 0
        moved = sum(int(n) for n in await self._each_shard(self.reap, lambda shard: (
            [workers_key(shard), prefix(shard), redis_keys.usage_stream(shard)], [int(lease * 1000)])))
        if moved:
            log.warning("reaped %d calls of gateway workers that died mid-call", moved)
        return moved


    @staticmethod
    async def _each_shard(script, keys_and_args) -> list:
        """Run `script` once per shard, all at once (each on the node serving that shard)."""
        calls = [script(keys=keys, args=args) for keys, args in map(keys_and_args, redis_keys.shards())]
        return await asyncio.gather(*calls)


async def beat_forever(stop: asyncio.Event, held) -> None:
    """Beat and reap until `stop`; `held()` gives the request ids of events this process still holds."""
    beat = Beat()
    interval = max(0.2, settings.USAGE_INFLIGHT_LEASE / 6)
    while not stop.is_set():
        try:
            await beat.once(held())
        except redis_failures as exc:
            redis_health.failed(exc)  # noticed here, the hot path need not wait to find out
            log.warning("in-flight heartbeat failed (%s)", exc)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
