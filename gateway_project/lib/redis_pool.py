"""The process's Redis clients: one async client per event loop, one sync client.

The async pool blocks for a free connection instead of failing: under a burst
the hot path waits a moment rather than reading a full pool as an outage. Its
connections pack commands with hiredis's C encoder, as redis-py's sync client
already does: the asyncio client packs them in Python, one call per argument,
which cost about 50 us of the admission script's 39 arguments on every request.
"""

import asyncio
import weakref
from functools import cache

import hiredis
import redis
import redis.asyncio as aioredis
from django.conf import settings

# Keyed weakly by event loop: a client must not outlive, or cross, its loop.
_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def async_redis() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=settings.REDIS_POOL_SIZE, timeout=5,
            socket_timeout=5, socket_connect_timeout=2,
        )
        pool.connection_class = packed_by_hiredis(pool.connection_class)
        client = _async_clients[loop] = aioredis.Redis(connection_pool=pool)
    return client


@cache
def packed_by_hiredis(connection_class: type) -> type:
    """`connection_class` (plain, TLS or Unix socket) with commands packed by hiredis. What hiredis
    does not take (None, a bool, a bytearray) and a command name with a space in it ("CONFIG GET",
    split by redis-py) go to redis-py's own packing, which raises its usual DataError."""

    class Packed(connection_class):
        def pack_command(self, *args):
            name = args[0]
            if (" " if isinstance(name, str) else b" ") not in name:
                try:
                    return [hiredis.pack_command(args)]
                except TypeError:
                    pass
            return super().pack_command(*args)

    Packed.__name__ = Packed.__qualname__ = f"Hiredis{connection_class.__name__}"
    return Packed


@cache
def sync_redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)


def channel(name: str) -> str:
    """A pub/sub channel name for this deployment's Redis database.

    Keys live in the database of REDIS_URL, but pub/sub channels are shared by
    every database of a server: two gateways on one Redis server (staging on
    db 1, production on db 0, say) would otherwise hear each other's breaker
    and configuration news.
    """
    return f"gw:{_database()}:{name}"


@cache
def _database() -> int:
    return int(redis.connection.parse_url(settings.REDIS_URL).get("db") or 0) if settings.REDIS_URL else 0
