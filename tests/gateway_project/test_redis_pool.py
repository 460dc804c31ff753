"""The async Redis pool packs commands with hiredis (gateway_project/lib/redis_pool.py): what reaches the
real Redis server is what redis-py's own packing would send, and what hiredis cannot take still fails
as redis-py fails."""

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from gateway_project.lib.redis_pool import async_redis, packed_by_hiredis


def run(coro_fn):
    async def go():
        try:
            return await coro_fn(async_redis())
        finally:
            await async_redis().aclose()

    return asyncio.run(go())


def test_the_pool_packs_with_hiredis_and_the_bytes_are_redis_pys():
    plain = aioredis.Connection()
    packed = packed_by_hiredis(aioredis.Connection)()
    for args in [("SET", "k", "v"), ("EVALSHA", "ab" * 20, 2, "gw:a", "gw:b", 1700000000123, 0.25, b"\x00\xff"),
                 ("HSET", "h", "name", "caf\u00e9 \u2603"), ("XADD", "s", "*", "e", b"x" * 100_000)]:
        assert b"".join(packed.pack_command(*args)) == b"".join(plain.pack_command(*args)), args[0]
    assert packed_by_hiredis(aioredis.Connection) is packed_by_hiredis(aioredis.Connection)  # one class per kind
    assert packed_by_hiredis(aioredis.SSLConnection).__mro__[1] is aioredis.SSLConnection


def test_round_trips_through_the_real_server(django_db_setup):
    async def calls(client):
        assert type(client.connection_pool).__name__ == "BlockingConnectionPool"
        assert client.connection_pool.connection_class.__name__.startswith("Hiredis")
        await client.delete("gw:test:list")
        await client.set("gw:test:pack", "caf\u00e9")
        await client.rpush("gw:test:list", 1, 2.5, b"\x00raw", memoryview(b"view"), bytearray(b"array"))
        await client.client_setname("gateway-test")  # "CLIENT SETNAME": a name of two words
        script = client.register_script("return {ARGV[1], ARGV[2], #KEYS}")
        return (await client.get("gw:test:pack"), await client.lrange("gw:test:list", 0, -1),
                await client.client_getname(), await script(keys=["gw:test:a"], args=[42, "x y"]))

    value, items, name, scripted = run(calls)
    assert value == "caf\u00e9".encode()
    assert items == [b"1", b"2.5", b"\x00raw", b"view", b"array"]
    assert name == "gateway-test"  # redis-py decodes CLIENT GETNAME
    assert scripted == [b"42", b"x y", 1]


@pytest.mark.parametrize("bad", [None, True])
def test_what_redis_refuses_is_refused_as_before(django_db_setup, bad):
    async def calls(client):
        await client.set("gw:test:bad", bad)

    with pytest.raises(redis.DataError, match="Invalid input of type"):
        run(calls)


@pytest.mark.parametrize("url, kind, nodes, master, db", [
    ("redis://127.0.0.1:6379/4", "single", (), "", 4),
    ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001", "cluster", (("10.0.0.1", 7000), ("10.0.0.2", 7001)), "", 0),
    ("redis+sentinel://:pw@s1:26379,s2/gw/3", "sentinel", (("s1", 26379), ("s2", 26379)), "gw", 3),
])
def test_redis_url_names_one_redis_a_cluster_or_a_sentinel_master(url, kind, nodes, master, db):
    from gateway_project.lib.redis_pool import parse

    top = parse(url)
    assert (top.kind, top.nodes, top.master, top.db) == (kind, nodes, master, db)
    assert parse("redis+sentinel://:pw@s1:26379/gw").password == "pw"


@pytest.mark.parametrize("url", ["redis+sentinel://s1:26379", "redis+cluster://h:1/2", "redis+cluster://",
                                 "redis+cluster://h:port"])
def test_a_redis_url_that_cannot_be_read_says_which_form_it_needs(url):
    from django.core.exceptions import ImproperlyConfigured

    from gateway_project.lib.redis_pool import parse

    with pytest.raises(ImproperlyConfigured, match="REDIS_URL"):
        parse(url)


def test_shard_tags_spread_evenly_over_the_slots(settings):
    from redis.crc import key_slot

    from gateway_project.lib import redis_keys

    settings.REDIS_SHARDS = 16
    slots = [key_slot(redis_keys.usage_stream(n).encode()) for n in redis_keys.shards()]
    assert [slot * 16 // 16384 for slot in slots] == list(range(16))  # shard N in the Nth sixteenth
    # Every key of a tenant's admission is in its shard's slot.
    tenant = 37
    keys = [redis_keys.reservations(tenant), redis_keys.limit_key(tenant, 5, "req"),
            redis_keys.usage_stream(redis_keys.shard_of(tenant))]
    assert len({key_slot(k.encode()) for k in keys}) == 1


def test_djangos_cache_works_on_a_cluster(own_cluster, settings):
    """Django's cache (django-ratelimit's counters, sessions' cache if any) on the gateway's cluster
    client: keys of many slots in one get_many, set_many and delete_many, and clear() drops the
    cache's keys only, not the gateway's."""
    from gateway_project.lib.redis_cache import RedisCache
    from gateway_project.lib.redis_pool import sync_redis

    settings.REDIS_URL = own_cluster.url
    cache = RedisCache(own_cluster.url, {})
    names = [f"k{n}" for n in range(20)]  # over all three masters
    cache.set_many({name: {"n": n} for n, name in enumerate(names)}, 60)
    assert cache.get_many(names) == {name: {"n": n} for n, name in enumerate(names)}
    cache.set("count", 1)
    assert cache.incr("count", 2) == 3
    sync_redis().set("gw:{g0.43}:kept", 1)
    cache.delete_many(names[:10])
    assert sorted(cache.get_many(names)) == sorted(names[10:])
    cache.clear()
    assert cache.get_many(names) == {} and cache.get("count") is None
    assert sync_redis().get("gw:{g0.43}:kept") == b"1"


def test_breakers_are_shared_through_a_cluster(own_cluster, settings, mock_provider):
    """Open breakers live under one hash tag: one MGET reads the fleet's view of many on a cluster."""
    import time

    from providers.models import Deployment
    from routing import breakers

    settings.REDIS_URL = own_cluster.url
    ids = list(Deployment.objects.values_list("id", flat=True))
    breakers.force(ids[0], time.time() + 60, breakers.State.OPEN, "test")
    try:
        assert breakers.shared(ids[0])[0] is breakers.State.OPEN
        assert asyncio.run(breakers.fleet_states(ids)) == {ids[0]: 1, **{d: 0 for d in ids[1:]}}
    finally:
        breakers.force(ids[0], 0.0, breakers.State.CLOSED, "test")
    assert breakers.shared(ids[0])[0] is breakers.State.CLOSED
