"""Per-deployment latency (moving average) and requests in flight, shared by all processes.

The hot path reads and writes only this process's numbers. Once a second a
background task (see asgi.py) publishes them to Redis and reads back every
process's, so the strategies decide on the whole fleet's view without a Redis
round trip per request.
"""

import asyncio
import logging
import os
import socket
import time

from django.conf import settings

from gateway_project.lib import redis_health
from gateway_project.lib.redis_pool import async_redis, redis_failures

log = logging.getLogger(__name__)

ALPHA = 0.2  # weight of the newest sample in the moving average
_PROC = f"{socket.gethostname()}-{os.getpid()}"

_latency: dict[int, float] = {}
_in_flight: dict[int, int] = {}
_fleet_latency: dict[int, float] = {}
_fleet_in_flight: dict[int, int] = {}


def latency_ms(deployment_id: int) -> float:
    """The fleet's moving average; 0 for a deployment never measured (so it gets tried)."""
    return _fleet_latency.get(deployment_id, _latency.get(deployment_id, 0.0))


def in_flight(deployment_id: int) -> int:
    local = _in_flight.get(deployment_id, 0)
    return max(local, _fleet_in_flight.get(deployment_id, 0))


def observe_latency(deployment_id: int, ms: float) -> None:
    previous = _latency.get(deployment_id)
    _latency[deployment_id] = ms if previous is None else previous + ALPHA * (ms - previous)


def started(deployment_id: int) -> None:
    _in_flight[deployment_id] = _in_flight.get(deployment_id, 0) + 1


def finished(deployment_id: int) -> None:
    _in_flight[deployment_id] = max(0, _in_flight.get(deployment_id, 0) - 1)


async def sync_once() -> None:
    client, now = async_redis(), time.time()
    ids = set(_latency) | set(_in_flight)
    async with client.pipeline(transaction=False) as pipe:
        for dep in ids:
            pipe.hset(f"gw:stats:{dep}", _PROC, f"{_latency.get(dep, -1):.3f},{_in_flight.get(dep, 0)},{now:.0f}")
            pipe.expire(f"gw:stats:{dep}", 60)
        for dep in ids:
            pipe.hgetall(f"gw:stats:{dep}")
        results = await pipe.execute()
    for dep, entries in zip(ids, results[2 * len(ids):], strict=True):
        lat, busy = [], 0
        for value in entries.values():
            ms, count, ts = value.decode().split(",")
            if now - float(ts) < 30:
                if float(ms) >= 0:
                    lat.append(float(ms))
                busy += int(count)
        if lat:
            _fleet_latency[dep] = sum(lat) / len(lat)
        _fleet_in_flight[dep] = busy


async def sync_forever(stop: asyncio.Event) -> None:
    while not stop.is_set():
        if settings.REDIS_URL:
            try:
                await sync_once()
            except redis_failures as exc:
                redis_health.failed(exc)
                log.debug("routing stats: Redis unreachable; deciding on this process's numbers")
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass
