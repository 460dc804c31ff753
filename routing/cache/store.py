"""Cache entries: in Redis (shared by every process), or in this process in embedded mode.

A Redis that fails or is marked down (gateway_project.lib.redis_health) makes a
lookup a miss and a store a no-op: requests go on uncached, nothing fails. A
sliding entry is renewed by the read itself (GETEX), so a hit costs one round
trip either way. On a call with limits, the lookup is read by the admission
script and a JSON answer's entry set by the settle script (usage/limit_scripts.py),
in round trips the call makes anyway; without limits, the lookup goes with the
call's in-flight entry (usage/inflight.py) and the entry is set in the usage
event's pipeline (usage/recorder.py).

Redis expires entries itself, and says nothing of it to the gateway. So every
write (and sliding renewal) of an entry also records when it expires in the
sorted set of its shard (`expiries_of`), in the same round trip, and each gateway process sweeps
the members whose time has passed (`sweep`, every METRICS_PUSH_INTERVAL):
ZREMRANGEBYSCORE is atomic, so each expiry is counted once, by the process that
removed it, in gateway_cache_evictions_total{reason="expired"}. A purge takes
its keys out of the set (they are counted as purged).
"""

import asyncio
import logging
import time
from collections import OrderedDict

from django.conf import settings

from gateway_project.lib import metrics, redis_health, redis_keys
from gateway_project.lib.redis_pool import async_redis, redis_failures, sync_redis

from . import hashing, semantic

log = logging.getLogger(__name__)

# Embedded mode: key -> (expires at, monotonic; ttl to renew by or 0; value), least recently used first.
_local: OrderedDict[str, tuple[float, int, bytes]] = OrderedDict()


def expiries_of(key: str) -> str:
    """The sorted set of entry key -> when it expires (unix ms) for `key`'s shard, counted by `sweep`:
    under the key's own hash tag, so the settle script that writes an entry writes its expiry too."""
    return key.split(":cache:", 1)[0] + ":cache-expiries"


def _all_expiries() -> list[str]:
    return [f"gw:{redis_keys.tag(shard)}:cache-expiries" for shard in redis_keys.shards()]


def expires_at(ttl: int) -> int:
    """The expiries' score of an entry written or renewed now for `ttl` seconds."""
    return int((time.time() + ttl) * 1000)


def shared() -> bool:
    """Whether entries go to Redis (configured and not marked down), where the usage round trip can write them."""
    return bool(settings.REDIS_URL) and not redis_health.unreachable()


async def get(key: str, renew_ttl: int = 0) -> bytes | None:
    """The entry under `key`, its lifetime restarted at `renew_ttl` seconds when given (sliding)."""
    if not settings.REDIS_URL:
        return _local_get(key, renew_ttl)
    if redis_health.down_for(key):
        return None
    try:
        client = async_redis()
        if not renew_ttl:
            return await client.get(key)
        async with client.pipeline(transaction=False) as pipe:
            pipe.getex(key, ex=renew_ttl)
            pipe.zadd(expiries_of(key), {key: expires_at(renew_ttl)}, xx=True)  # XX: only an entry that was stored
            value, _ = await pipe.execute()
        return value
    except redis_failures as exc:
        redis_health.failed(exc, key)
        log.warning("response cache unreachable (%s); serving uncached", type(exc).__name__)
        return None


async def put(key: str, value: bytes, ttl: int) -> bool:
    if not settings.REDIS_URL:
        _local_put(key, value, ttl)
        return True
    if redis_health.down_for(key):
        return False
    try:
        async with async_redis().pipeline(transaction=False) as pipe:
            pipe.set(key, value, ex=ttl)
            pipe.zadd(expiries_of(key), {key: expires_at(ttl)})
            await pipe.execute()
        return True
    except redis_failures as exc:
        redis_health.failed(exc, key)
        return False


async def sweep() -> int:
    """Count the entries Redis has expired since the last sweep (any process's); how many."""
    if not settings.REDIS_URL or redis_health.down:
        return 0
    now = int(time.time() * 1000)
    async with async_redis().pipeline(transaction=False) as pipe:
        for expiries in _all_expiries():
            pipe.zremrangebyscore(expiries, "-inf", now)
        gone = sum(await pipe.execute())
    if gone:
        metrics.inc("gateway_cache_evictions_total", "expired", by=gone)
    return gone


async def sweep_forever(stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.METRICS_PUSH_INTERVAL)
        except TimeoutError:
            pass
        try:
            await sweep()
        except redis_failures as exc:
            redis_health.failed(exc)


def _local_get(key: str, renew_ttl: int) -> bytes | None:
    found = _local.get(key)
    if found is None:
        return None
    now = time.monotonic()
    if found[0] <= now:
        del _local[key]
        metrics.inc("gateway_cache_evictions_total", "expired")
        return None
    if renew_ttl:
        _local[key] = (now + renew_ttl, renew_ttl, found[2])
    _local.move_to_end(key)
    return found[2]


def _local_put(key: str, value: bytes, ttl: int) -> None:
    _local[key] = (time.monotonic() + ttl, 0, value)
    _local.move_to_end(key)
    while len(_local) > settings.CACHE_LOCAL_MAX_ENTRIES:
        _local.popitem(last=False)
        metrics.inc("gateway_cache_evictions_total", "capacity")


def purge(tenant_id: int, model: str = "", entry: str = "") -> int:
    """Delete the tenant's entries (of one model or route, or the one entry `entry` names); how many went.
    Sync: for the admin, the management API and the CLI."""
    prefix = hashing.model_prefix(tenant_id, model) if model else hashing.tenant_prefix(tenant_id)
    if not settings.REDIS_URL:
        gone = [k for k in _local if k.startswith(prefix) and (not entry or hashing.entry_id(k) == entry)]
        for k in gone:
            del _local[k]
    else:
        client = sync_redis()
        pattern = f"{prefix}*{entry}" if entry else f"{prefix}*"
        gone = [k for k in client.scan_iter(match=pattern, count=1000)
                if not entry or hashing.entry_id(k.decode()) == entry]
        for start in range(0, len(gone), 500):
            client.delete(*gone[start:start + 500])
            client.zrem(expiries_of(prefix), *gone[start:start + 500])  # purged, not expired
    semantic.forget(prefix)
    if gone:
        metrics.shared_inc("gateway_cache_evictions_total", "purge", by=len(gone))
    return len(gone)
