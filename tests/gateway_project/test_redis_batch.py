"""Scripts called in one turn of the event loop share a round trip (gateway_project/lib/redis_batch.py),
and each caller still gets its own script's answer or error, against the real Redis server."""

import asyncio
import uuid

import redis

from gateway_project.lib import redis_batch
from gateway_project.lib.redis_pool import async_redis


def run(coro_fn):
    async def go():
        try:
            return await coro_fn(async_redis())
        finally:
            await async_redis().aclose()

    return asyncio.run(go())


def test_scripts_of_one_turn_each_get_their_own_answer_and_error():
    async def go(client):
        add = client.register_script("return tonumber(ARGV[1]) + 1")
        boom = client.register_script("return redis.error_reply('refused ' .. ARGV[1])")
        # Never loaded on this server: its EVALSHA fails with NOSCRIPT, and its call loads it and runs it.
        fresh = client.register_script(f"return '{uuid.uuid4().hex}' .. ARGV[1]")
        calls = [redis_batch.run_script(add, [], [n]) for n in range(20)]
        calls += [redis_batch.run_script(boom, [], ["seven"]), redis_batch.run_script(fresh, [], ["!"])]
        return await asyncio.gather(*calls, return_exceptions=True), fresh

    results, fresh = run(go)
    assert results[:20] == list(range(1, 21))
    assert isinstance(results[20], redis.ResponseError) and "refused seven" in str(results[20])
    assert results[21].endswith(b"!") and len(results[21]) == 33


def test_a_lone_call_and_a_later_turn_go_on_their_own():
    async def go(client):
        add = client.register_script("return tonumber(ARGV[1]) * 2")
        first = await redis_batch.run_script(add, [], [21])
        second = await asyncio.gather(redis_batch.run_script(add, [], [1]), redis_batch.run_script(add, [], [2]))
        return first, second

    assert run(go) == (42, [2, 4])


def test_an_unreachable_redis_fails_every_call_of_the_batch(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

    async def go(client):
        add = client.register_script("return 1")
        return await asyncio.gather(*(redis_batch.run_script(add, [], []) for _ in range(3)), return_exceptions=True)

    results = run(go)
    assert len(results) == 3 and all(isinstance(r, redis.ConnectionError) for r in results), results



def test_commands_of_one_turn_share_it_with_scripts():
    key = f"gw:test:batch:{uuid.uuid4().hex}"

    async def go(client):
        add = client.register_script("return tonumber(ARGV[1]) + 1")
        try:
            results = await asyncio.gather(
                *(redis_batch.run_command("HSET", key, f"r{n}", n) for n in range(5)), redis_batch.run_script(add, [], [1]))
            return results, await client.hgetall(key)
        finally:
            await client.delete(key)

    results, stored = run(go)
    assert results == [1, 1, 1, 1, 1, 2]
    assert stored == {f"r{n}".encode(): str(n).encode() for n in range(5)}
