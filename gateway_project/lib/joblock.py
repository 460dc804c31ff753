"""One run of a periodic job at a time, however many Celery workers there are.

Every job is also idempotent on its own (it recomputes, upserts or claims rows
under unique constraints), so the lock only saves duplicate work; a job that
finds the lock taken returns at once.
"""

import secrets
from contextlib import contextmanager

from django.conf import settings

from .redis_pool import sync_redis

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


@contextmanager
def single_run(name: str, ttl_seconds: int = 900):
    """Yield whether this caller holds the lock for job `name` (embedded mode: always)."""
    if not settings.REDIS_URL:
        yield True
        return
    client, token, key = sync_redis(), secrets.token_hex(8), f"gw:job:{name}"
    held = bool(client.set(key, token, nx=True, ex=ttl_seconds))
    try:
        yield held
    finally:
        if held:
            client.eval(_RELEASE, 1, key, token)
