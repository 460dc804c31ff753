"""Django's cache on a Redis Cluster or behind Sentinel: Django's own Redis backend, on the
gateway's clients (gateway_project/lib/redis_pool.py) instead of one server's pool.

Multi-key commands go key by key where a cluster would refuse keys of several slots.
"""

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient

from gateway_project.lib.redis_pool import sync_redis


class _Client(RedisCacheClient):
    def get_client(self, key=None, *, write=False):
        return sync_redis()

    def get_many(self, keys):
        values = sync_redis().mget_nonatomic(keys) if hasattr(sync_redis(), "mget_nonatomic") else \
            sync_redis().mget(keys)
        return {k: self._serializer.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def set_many(self, data, timeout):
        for key, value in data.items():
            self.set(key, value, timeout)

    def clear(self):
        # FLUSHDB would empty the gateway's own keys (counters, buffers) too: drop the cache's only.
        client = sync_redis()
        keys = list(client.scan_iter(match=":*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
        return True


class RedisCache(DjangoRedisCache):
    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = _Client
