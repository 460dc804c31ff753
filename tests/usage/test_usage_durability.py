"""No usage event lost or doubled: 10,000 requests while drainers are killed
mid-batch and Redis restarts, through live gateway processes."""

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time

import httpx
from django.db.models import Count, Sum

from tests.conftest import ROOT, Server, wait_until
from usage.models import UsageRecord

TOTAL = 10_000


def start_drainer(env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "manage.py", "drain_usage", "--loop", "--interval", "0.02"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def send_all(url: str, key: str, bodies: list[dict], concurrency: int = 32) -> list[int]:
    queue = iter(bodies)
    statuses: list[int] = []

    async def worker(client):
        for body in queue:
            if body.get("stream"):
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    async for _ in response.aiter_bytes():
                        pass
            else:
                response = await client.post("/v1/chat/completions", json=body)
            statuses.append(response.status_code)

    # A new connection per request: a connection the server closed as idle while the
    # loaded machine stalled it would otherwise fail a request that never reached it.
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"authorization": f"Bearer {key}"},
                                 limits=httpx.Limits(max_connections=concurrency,
                                                     max_keepalive_connections=0)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


def test_ten_thousand_requests_survive_killed_drainers_and_a_redis_restart(
        gateway_env, mock, tenant, api_key, mock_provider, own_redis):
    import os

    env = {**os.environ, **gateway_env, "REDIS_URL": own_redis.url, "USAGE_DRAIN_IN_PROCESS": "false",
           "USAGE_CLAIM_IDLE_MS": "500", "USAGE_FLUSH_BATCH": "250"}
    server = Server(["manage.py", "serve", "--port", "{port}", "--log-level", "warning"],
                    env={**env, "GATEWAY_PROCESSES": "2"}, ready_path="/v1/models")
    drainers = [start_drainer(env), start_drainer(env)]
    stop_killing = threading.Event()
    kills = 0

    def killer():
        # Every ~0.4 s one drainer dies without warning (SIGKILL: no cleanup,
        # whatever batch it holds unacknowledged) and a new one takes its place.
        nonlocal kills
        while not stop_killing.wait(0.4):
            i = random.randrange(len(drainers))
            drainers[i].send_signal(signal.SIGKILL)
            drainers[i].wait()
            kills += 1
            drainers[i] = start_drainer(env)

    rng = random.Random(7)
    bodies = []
    for i in range(TOTAL):
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": f"request {i} [[mock chunks="
                                                   f"{rng.randint(1, 6)}]]"}]}
        if i % 4 == 0:
            body.update(stream=True, stream_options={"include_usage": True})
        bodies.append(body)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        half = TOTAL // 2
        statuses = asyncio.run(send_all(server.url, api_key[1], bodies[:half]))
        # Redis goes away with events buffered in it and comes back from its
        # append-only file; the gateway holds what arrives meanwhile in process.
        own_redis.stop()
        statuses += asyncio.run(send_all(server.url, api_key[1], bodies[half:half + 500]))
        own_redis.start()
        statuses += asyncio.run(send_all(server.url, api_key[1], bodies[half + 500:]))
        assert statuses.count(200) == TOTAL, {s: statuses.count(s) for s in set(statuses)}
        # The drainers were killed all along the traffic; now let the last ones finish the job.
        stop_killing.set()
        thread.join()

        rows = UsageRecord.objects.filter(tenant=tenant)
        assert wait_until(lambda: rows.count() >= TOTAL, timeout=180), rows.count()
        time.sleep(1.5)  # a last reclaimed batch, if any, would show up as an extra row now
        totals = rows.aggregate(n=Count("id"), ids=Count("request_id", distinct=True),
                                prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
        served = httpx.get(mock.url + "/_mock/stats").json()["tokens"]
        assert totals["n"] == TOTAL and totals["ids"] == TOTAL
        assert (totals["prompt"], totals["completion"]) == (served["prompt"], served["completion"])
        assert not rows.filter(tokens_estimated=True).exists()
        assert kills >= 5
    finally:
        stop_killing.set()
        thread.join()
        for proc in drainers:
            proc.kill()
            proc.wait()
        server.stop()
