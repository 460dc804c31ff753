"""A gateway behind Sentinel (a master, a replica, three sentinels of the test's own) while the master
is killed: the sentinels promote the replica, the gateway finds it, no usage event is lost and a
budget is not overspent (docs/scaling.md, "Sentinel failover")."""

import threading
import time
from collections import Counter
from decimal import Decimal

import httpx
import pytest

from tests.conftest import start_gateway, wait_until
from tests.redis_servers import OwnSentinel
from usage.models import Limit, UsageRecord


def chat(model: str, text: str = "hi", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


class Caller(threading.Thread):
    """Calls with one key, one call after the other, until stopped; keeps (time, status, error code)."""

    def __init__(self, url: str, key: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.body, self.calls = url, key, body, []
        self.running = True
        self.start()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while self.running:
                response = client.post(self.url + "/v1/chat/completions", json=self.body,
                                       headers={"authorization": f"Bearer {self.key}"})
                code = response.json()["error"]["code"] if response.status_code != 200 else ""
                self.calls.append((time.monotonic(), response.status_code, code))


@pytest.fixture()
def sentinel(tmp_path, settings, monkeypatch):
    from gateway_project.lib import config_cache

    topology = OwnSentinel(tmp_path)
    settings.REDIS_URL = topology.url  # this process's configuration news go through it too
    monkeypatch.setattr(config_cache, "CHANNEL", "gw:0:config-changed")
    yield topology
    topology.stop()


def test_a_sentinel_failover_loses_no_usage_and_overspends_no_budget(sentinel, gateway_env, mock_upstream,
                                                                     mock_provider, tenant, other_tenant):
    from django.conf import settings

    from keys import services as key_services
    from providers.models import Deployment

    Deployment.objects.create(provider=mock_provider, public_model="metered", upstream_model="mock-gpt",
                              input_price_per_mtok=0, output_price_per_mtok=1)  # one micro-dollar a token
    Limit.objects.create(tenant=tenant, model="metered", budget_usd=Decimal("0.000800"), period="day")
    budgeted = key_services.issue(tenant, "budgeted")[1]
    free = key_services.issue(other_tenant, "free")[1]
    server = start_gateway({**gateway_env, "REDIS_URL": sentinel.url, "CELERY_BROKER_URL": settings.REDIS_URL,
                            "GATEWAY_PROCESSES": "2", "REDIS_PROBE_INTERVAL": "0.2",
                            # What makes a failover lose no usage event (docs/scaling.md): with the default 0,
                            # a killed master can take its last acknowledged event with it.
                            "REDIS_WAIT_REPLICAS": "1"}, workers=2)
    try:
        spend = chat("metered", "go [[mock chunks=10]]", max_tokens=10)  # reserves, and costs, 10 micro-USD
        assert wait_until(lambda: httpx.post(server.url + "/v1/chat/completions", json=chat("gpt-test"), timeout=30,
                                             headers={"authorization": f"Bearer {free}"}).status_code == 200)
        callers = [Caller(server.url, budgeted, spend) for _ in range(2)] + \
                  [Caller(server.url, free, chat("gpt-test")) for _ in range(2)]
        old_master = sentinel.master.port
        try:
            time.sleep(1.5)
            sentinel.master.kill()
            killed_at = time.monotonic()
            assert wait_until(lambda: sentinel.current_master() == sentinel.replica.port, timeout=30)
            promoted_after = time.monotonic() - killed_at
            # Until the budget runs out on the new master (a second more, for the free tenant).
            assert wait_until(lambda: any(code == "budget_exceeded" for c in callers[:2] for _, _, code in c.calls),
                              timeout=60)
            time.sleep(1.5)
        finally:
            for caller in callers:
                caller.running = False
                caller.join(timeout=30)
        budget_calls = [c for caller in callers[:2] for c in caller.calls]
        free_calls = [c for caller in callers[2:] for c in caller.calls]
        statuses = Counter((status, code) for _, status, code in budget_calls)
        # Served again on the promoted replica: the last second's calls of the free tenant all answered.
        assert {status for t, status, _ in free_calls if t > time.monotonic() - 1.5} == {200}
        # While no master answered, the budget failed closed (503) rather than guess; never a 500.
        assert set(statuses) <= {(200, ""), (429, "budget_exceeded"), (503, "limits_unavailable")}, statuses

        def recorded():
            return (UsageRecord.objects.filter(tenant=tenant).count() == len(budget_calls)
                    and UsageRecord.objects.filter(tenant=other_tenant).count() == len(free_calls) + 1)
        assert wait_until(recorded, timeout=30), (UsageRecord.objects.filter(tenant=tenant).count(), len(budget_calls),
                                              UsageRecord.objects.filter(tenant=other_tenant).count(), len(free_calls) + 1)
        spent = sum(r.cost_usd for r in UsageRecord.objects.filter(tenant=tenant, status="ok"))
        assert spent <= Decimal("0.000800")  # not one call over the budget across the failover
        print(f"\nSentinel failover: master {old_master} killed, replica promoted after {promoted_after:.1f} s; "
              f"budgeted calls {dict(statuses)}, spent {spent} of 0.000800; {len(free_calls)} free calls, "
              "every call recorded")
    finally:
        server.stop()


def test_an_event_no_replica_confirmed_is_kept_by_the_process_too(sentinel, settings):
    """REDIS_WAIT_REPLICAS: the round trip that buffers an event waits for a replica; without one
    in time, the process keeps the event as well (written by it, one row by its request id)."""
    import asyncio

    import redis

    from gateway_project.lib.redis_pool import async_redis
    from usage import recorder

    settings.REDIS_WAIT_REPLICAS, settings.REDIS_WAIT_MS = 1, 200

    def record(request_id: str) -> None:
        async def go():
            try:
                await recorder.record({"request_id": request_id, "ts": time.time(), "tenant_id": 1})
            finally:
                await async_redis().aclose()
        asyncio.run(go())

    master = redis.Redis(port=sentinel.master.port)
    stream = recorder.stream_of({"tenant_id": 1})
    assert wait_until(lambda: master.info("replication").get("slave0", {}).get("state") == "online", timeout=20)
    try:
        record("replicated")
        assert recorder.held_ids() == set()  # the replica had it: buffered in Redis only
        sentinel.replica.kill()
        assert wait_until(lambda: master.info("replication")["connected_slaves"] == 0)
        record("unreplicated")
        assert recorder.held_ids() == {"unreplicated"}  # kept by the process as well
        assert [__import__("orjson").loads(f[b"e"])["request_id"] for _, f in master.xrange(stream)] == [
            "replicated", "unreplicated"]
    finally:
        recorder._local.clear()  # not real events: no drain in this process may try to write them
