"""Four gateway workers on a three-master Redis Cluster of the test's own (tests/redis_servers.py):
limits hold as on one Redis, usage events spread over the masters, and a master killed mid-run
loses no usage. The longer runs (a 600-per-minute limit over whole minutes) are bench/redis_load.py's."""

import asyncio
import threading
import time
from collections import Counter
from decimal import Decimal

import httpx
import pytest

from gateway_project.lib import redis_keys
from tests.conftest import start_gateway, wait_until
from usage.models import Limit, UsageRecord


def chat(model="gpt-test", text="hi", **extra):
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture()
def on_cluster(own_cluster, settings, monkeypatch):
    """This test process on the cluster too: its configuration news reach the gateways through it
    (on the channel of the cluster's one database, not the suite's Redis database's)."""
    from gateway_project.lib import config_cache

    own_cluster.wait_ok()
    own_cluster.client().flushdb(target_nodes="primaries")
    settings.REDIS_URL = own_cluster.url
    monkeypatch.setattr(config_cache, "CHANNEL", "gw:0:config-changed")
    return own_cluster


@pytest.fixture(scope="module")
def cluster_gateway(own_cluster, gateway_env, mock_upstream):
    from django.conf import settings

    server = start_gateway({**gateway_env, "REDIS_URL": own_cluster.url, "CELERY_BROKER_URL": settings.REDIS_URL,
                            "GATEWAY_PROCESSES": "4"}, workers=4)
    yield server
    server.stop()


async def burst(url: str, key: str, body: dict, calls: int, at_once: int) -> list[httpx.Response]:
    limit = asyncio.Semaphore(at_once)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=at_once)) as client:
        async def one():
            async with limit:
                return await client.post(url + "/v1/chat/completions", json=body,
                                         headers={"authorization": f"Bearer {key}"})
        return await asyncio.gather(*(one() for _ in range(calls)))


def warm(gateway, key: str, body: dict) -> None:
    """Every worker has the key and its limits (a worker new to them loads them once)."""
    assert wait_until(lambda: httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30,
                                         headers={"authorization": f"Bearer {key}"}).status_code == 200, timeout=30)


def test_a_tenant_rate_limit_holds_across_four_workers_on_a_cluster(on_cluster, cluster_gateway, tenant, api_key,
                                                                    mock_provider):
    Limit.objects.create(tenant=tenant, requests_per_minute=60)
    warm(cluster_gateway, api_key[1], chat())
    responses = asyncio.run(burst(cluster_gateway.url, api_key[1], chat(), calls=100, at_once=20))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 59, 429: 41}, statuses  # 60 in the minute, the warm-up call among them
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {"rate_limit_exceeded"}


def test_two_hundred_concurrent_calls_on_a_budget_for_fifty_overshoot_by_nothing(on_cluster, cluster_gateway, tenant,
                                                                                 api_key, mock_provider):
    from providers.models import Deployment

    Deployment.objects.create(provider=mock_provider, public_model="metered", upstream_model="mock-gpt",
                              input_price_per_mtok=0, output_price_per_mtok=1)  # one micro-dollar a token
    Limit.objects.create(tenant=tenant, model="metered", budget_usd=Decimal("0.000500"), period="day")
    warm(cluster_gateway, api_key[1], chat("metered", "[[mock chunks=1]]", max_tokens=1))
    body = chat("metered", "go [[mock chunks=10]]", max_tokens=10)  # reserves, and costs, 10 micro-USD
    responses = asyncio.run(burst(cluster_gateway.url, api_key[1], body, calls=200, at_once=200))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 49, 429: 151}, statuses  # the warm-up's 1 micro-dollar leaves room for 49

    def spent():
        rows = UsageRecord.objects.filter(tenant=tenant, public_model="metered", status="ok")
        return rows.count() == 50 and sum(r.cost_usd for r in rows)
    assert wait_until(spent, timeout=20) == Decimal("0.000491")  # never above the 500 budgeted


class Caller(threading.Thread):
    """Calls one key one after the other until stopped; keeps each status."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.statuses = url, key, []
        self.running = True
        self.start()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while self.running:
                response = client.post(self.url + "/v1/chat/completions", json=chat(),
                                       headers={"authorization": f"Bearer {self.key}"})
                self.statuses.append((time.monotonic(), response.status_code))


def test_a_master_killed_mid_run_loses_no_usage(on_cluster, cluster_gateway, mock_provider):
    from keys import services as key_services
    from tenants.models import Tenant

    # Tenants until each master serves at least one of them (a tenant's keys follow its shard).
    by_node: dict[int, Tenant] = {}
    while len(by_node) < len(on_cluster.nodes):
        tenant = Tenant.objects.create(name=f"t{len(by_node)}-{time.monotonic_ns()}", slug=f"t{time.monotonic_ns()}")
        node = on_cluster.node_of(redis_keys.usage_stream(redis_keys.shard_of(tenant.id)))
        by_node.setdefault(node.port, tenant)
    keys = {port: key_services.issue(tenant, "k")[1] for port, tenant in by_node.items()}
    for key in keys.values():
        warm(cluster_gateway, key, chat())
    victim = on_cluster.nodes[0]
    callers = {port: [Caller(cluster_gateway.url, key) for _ in range(2)] for port, key in keys.items()}
    try:
        time.sleep(2)
        victim.kill()
        killed_at = time.monotonic()
        time.sleep(4)
        victim.start()
        time.sleep(3)
    finally:
        for caller in [c for group in callers.values() for c in group]:
            caller.running = False
            caller.join(timeout=30)
    made = {port: sum(len(c.statuses) for c in group) for port, group in callers.items()}
    while_down = [s for c in callers[victim.port] for t, s in c.statuses if killed_at + 0.5 < t < killed_at + 4]
    assert while_down and set(while_down) == {200}  # the victim's tenant was served throughout
    for port, tenant in by_node.items():
        rows = UsageRecord.objects.filter(tenant=tenant)
        # Each call made is one record, the warm-up's included: none lost, none twice.
        assert wait_until(lambda rows=rows, port=port: rows.count() == made[port] + 1, timeout=30), (
            port, victim.port, rows.count(), made[port] + 1,
            [line for line in cluster_gateway.output().splitlines() if "failed after the answer" in line][:3])
    print(f"\nmaster killed for 4 s of 9: {made} calls by master port, every one recorded")
