"""Slowing down key guessing from one address, without touching valid keys.

Only failed authentications are counted (per client address, per minute), and
only their answers are delayed: a valid key from the same address is served
at full speed. The address is the connection's peer, or, from one of
TRUSTED_PROXIES, the client they name (`manage.py serve`): a header the client
writes itself cannot give it a fresh count. Counts live in Redis (shared by every process) or, in embedded
mode and while Redis is unreachable, in this process.
"""

import asyncio
import logging
import time

from django.conf import settings

from gateway_project.lib import redis_health
from gateway_project.lib.redis_pool import async_redis, redis_failures

log = logging.getLogger(__name__)

MAX_DELAY = 5.0
WINDOW = 60
_local: dict[str, tuple[int, float]] = {}


async def _count(address: str) -> int:
    """Failures from `address` in the minute since its first recent failure."""
    if settings.REDIS_URL and not redis_health.down:
        key = f"gw:authfail:{address}"
        try:
            async with async_redis().pipeline(transaction=False) as pipe:
                count, _ = await pipe.incr(key).expire(key, WINDOW, nx=True).execute()
            return count
        except redis_failures as exc:
            redis_health.failed(exc)
    now = time.monotonic()
    count, since = _local.get(address, (0, now))
    if now - since > WINDOW:
        count, since = 0, now
    if len(_local) > 100_000:
        _local.clear()
    _local[address] = (count + 1, since)
    return count + 1


async def failed_attempt(address: str) -> float:
    """Count a failed key from `address` and wait if it has failed too often; return the wait."""
    count = await _count(address)
    excess = count - settings.AUTH_FAILURES_PER_MINUTE
    if excess <= 0:
        return 0.0
    delay = min(MAX_DELAY, 0.25 * excess)
    if excess == 1:
        log.warning("slowing down failed API key attempts from %s", address)
    await asyncio.sleep(delay)
    return delay
