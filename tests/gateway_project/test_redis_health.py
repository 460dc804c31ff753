"""The "Redis is down" memo (gateway_project/lib/redis_health.py), against a Redis server of the test's own
paused with SIGSTOP: a hanging Redis costs one socket timeout, not one per call, and is used again as
soon as it answers."""

import asyncio
import os
import signal
import threading
import time

import orjson
import redis

from tests.conftest import wait_until


def event(request_id: str) -> dict:
    return {"request_id": request_id, "ts": time.time()}


def record_each(events: list[dict]) -> list[float]:
    """Buffer the events one after the other (usage.recorder.record, the hot path's last step); the seconds each took."""
    from gateway_project.lib.redis_pool import async_redis
    from usage import recorder

    async def run() -> list[float]:
        took = []
        try:
            for e in events:
                started = time.monotonic()
                await recorder.record(e)
                took.append(time.monotonic() - started)
        finally:
            await async_redis().aclose()
        return took

    return asyncio.run(run())


def probing() -> bool:
    return any(thread.name == "redis-probe" for thread in threading.enumerate())


def test_a_hanging_redis_costs_one_timeout_then_is_skipped_until_it_answers_again(own_redis, settings):
    from gateway_project.lib import redis_health
    from usage import recorder

    settings.REDIS_URL = own_redis.url
    assert not redis_health.down
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        first, *rest = record_each([event("memo-1"), event("memo-2"), event("memo-3")])
        assert first > 4  # the first one had to find out: it waited out the 5 s socket timeout
        assert max(rest) < 0.5, rest  # the others knew at once
        assert redis_health.down and probing()
        time.sleep(1.5)
        assert redis_health.down  # the probe's PINGs go unanswered while Redis hangs
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
    try:
        assert wait_until(lambda: not redis_health.down, timeout=5)
        assert time.monotonic() - resumed_at < 1.5  # REDIS_PROBE_INTERVAL is 0.5 s
        assert wait_until(lambda: not probing())
        record_each([event("memo-4")])
        assert recorder.held_ids() == {"memo-1", "memo-2", "memo-3"}  # to be written straight to the database
        stream = redis.Redis.from_url(own_redis.url).xrange(recorder.stream_of(event("memo-4")))
        assert [orjson.loads(fields[b"e"])["request_id"] for _, fields in stream] == ["memo-4"]  # Redis again
    finally:
        recorder._local.clear()  # not real events: no drain in this process may try to write them


def test_an_error_reply_or_a_full_pool_does_not_mark_redis_down():
    from gateway_project.lib import redis_health

    redis_health.failed(redis.ResponseError("ERR Error running script"))
    redis_health.failed(redis.ConnectionError("No connection available."))
    assert not redis_health.down and not probing()


def test_on_a_cluster_a_failure_marks_only_the_shard_it_met(own_cluster, settings):
    """The memo per node: a failure on a tenant's key marks that tenant's shard, not the others nor
    the shared keys, and the probe clears it once the node serving the shard answers."""
    from gateway_project.lib import redis_health, redis_keys

    settings.REDIS_URL = own_cluster.url
    first = own_cluster.node_of(redis_keys.usage_stream(0))
    elsewhere = next(n for n in redis_keys.shards()
                     if own_cluster.node_of(redis_keys.usage_stream(n)).port != first.port)
    redis_health.failed(redis.ConnectionError("refused"), redis_keys.usage_stream(0))
    assert redis_health.down_for(redis_keys.reservations(0))  # tenant 0's shard: the same node
    assert not redis_health.down_for(redis_keys.usage_stream(elsewhere)) and not redis_health.down
    assert not redis_health.unreachable()
    assert wait_until(lambda: not redis_health.down_shards, timeout=5)  # the node answers: used again
    assert wait_until(lambda: not probing())
