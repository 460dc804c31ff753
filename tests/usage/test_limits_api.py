"""Limits as clients meet them, through live gateway processes sharing one Redis."""

import asyncio
import time
from decimal import Decimal

import httpx
import pytest
import redis as redis_sync

from gateway_project.lib import redis_keys
from tests.conftest import Server, wait_until
from usage.models import Limit, UsageRecord


def chat(model="gpt-test", text="hi", **extra):
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture()
def metered(mock_provider):
    """A model whose every completion token costs exactly one micro-dollar (prompts are free)."""
    from providers.models import Deployment

    Deployment.objects.create(provider=mock_provider, public_model="metered", upstream_model="mock-gpt",
                              input_price_per_mtok=0, output_price_per_mtok=1)
    return "metered"


def post(gateway, key, body, **headers):
    return httpx.post(gateway.url + "/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {key}", **headers}, timeout=30)


def test_two_hundred_concurrent_requests_spend_a_budget_for_fifty_exactly(key_client, gateway, tenant, api_key,
                                                                          metered):
    Limit.objects.create(tenant=tenant, model=metered, budget_usd=Decimal("0.000500"), period="day")
    # max_tokens bounds the completion, so the reservation equals the real cost: 10 micro-USD.
    body = chat(metered, "go [[mock chunks=10]]", max_tokens=10)
    assert wait_until(lambda: post(gateway, api_key[1], chat(metered, "[[mock chunks=1]]", max_tokens=1))
                      .status_code == 200)

    async def burst():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client:
            return await asyncio.gather(*(
                client.post(gateway.url + "/v1/chat/completions", json=body,
                            headers={"authorization": f"Bearer {api_key[1]}"}) for _ in range(200)))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    # The warm-up call spent 1 micro-dollar (a one-token answer), leaving room for 49.
    assert statuses.count(200) == 49 and statuses.count(429) == 151
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "budget_exceeded" and refused.headers["retry-after"]

    def spent():
        rows = UsageRecord.objects.filter(tenant=tenant, public_model=metered, status="ok")
        return rows.count() == 50 and sum(r.cost_usd for r in rows)
    assert wait_until(spent) == Decimal("0.000491")  # 49 x 10 + 1: never above 500
    keys = redis_sync.Redis.from_url(__import__("os").environ["REDIS_URL"])
    assert keys.zcard(redis_keys.reservations(tenant.id)) == 0  # every reservation released


def test_responses_carry_openai_rate_limit_headers_and_refusals_say_which_limit(key_client, gateway, tenant,
                                                                               api_key):
    Limit.objects.create(tenant=tenant, api_key=api_key[0], requests_per_minute=3, tokens_per_minute=100_000)
    first = wait_until(lambda: (r := post(gateway, api_key[1], chat())).headers.get("x-ratelimit-limit-requests")
                       and r)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100_000
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    responses = [post(gateway, api_key[1], chat(), **{"x-request-id": f"rl-{i}"}) for i in range(3)]
    assert [r.status_code for r in responses][-1] == 429
    error = responses[-1].json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert 1 <= int(responses[-1].headers["retry-after"]) <= 60
    record = wait_until(lambda: UsageRecord.objects.filter(client_request_id="rl-2").first())
    assert record.http_status == 429 and record.cost_usd == 0


@pytest.fixture()
def low_estimate_gateway(gateway_env, mock_upstream):
    server = Server(["manage.py", "serve", "--port", "{port}", "--log-level", "warning"],
                    env={**gateway_env, "LIMITS_COMPLETION_ESTIMATE": "5"}, ready_path="/v1/models")
    yield server
    server.stop()


def test_stream_running_past_its_reservation_is_settled_at_its_real_cost(low_estimate_gateway, tenant, api_key,
                                                                         metered):
    limit = Limit.objects.create(tenant=tenant, model=metered, token_quota=10_000, budget_usd=1, period="total")
    gateway = low_estimate_gateway
    assert wait_until(lambda: post(gateway, api_key[1], chat(metered, "[[mock chunks=1]]")).status_code == 200)
    with httpx.stream("POST", gateway.url + "/v1/chat/completions",
                      json=chat(metered, "a long answer", stream=True, stream_options={"include_usage": True}),
                      headers={"authorization": f"Bearer {api_key[1]}"}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    usage = __import__("json").loads(lines[-1][6:])["usage"]
    assert usage["completion_tokens"] == 20  # four times the 5 tokens reserved
    counters = redis_sync.Redis.from_url(__import__("os").environ["REDIS_URL"]).hgetall(redis_keys.limit_key(limit.tenant_id, limit.id, "p:0"))
    counters = {k.decode(): int(v) for k, v in counters.items()}
    warmup_tokens = wait_until(lambda: UsageRecord.objects.filter(tenant=tenant, public_model=metered,
                                                                  completion_tokens=1).first())
    assert counters["tokres"] == 0 and counters["costres"] == 0
    assert counters["tok"] == usage["total_tokens"] + warmup_tokens.total_tokens
    assert counters["cost"] == 20 + 1  # micro-dollars: one per completion token


@pytest.fixture()
def second_gateway(gateway_env, mock_upstream):
    server = Server(["manage.py", "serve", "--port", "{port}", "--log-level", "warning"], env=gateway_env,
                    ready_path="/v1/models")
    yield server
    server.stop()


def test_two_processes_hold_sixty_per_minute_in_every_window(key_client, gateway, second_gateway, tenant, api_key):
    Limit.objects.create(tenant=tenant, api_key=api_key[0], requests_per_minute=60)
    assert wait_until(lambda: post(second_gateway, api_key[1], chat(), **{"x-request-id": "warm"})
                      .headers.get("x-ratelimit-limit-requests") == "60")
    assert wait_until(lambda: post(gateway, api_key[1], chat(), **{"x-request-id": "warm"})
                      .headers.get("x-ratelimit-limit-requests") == "60")
    deadline, n = time.monotonic() + 66, 0
    while time.monotonic() < deadline:  # about 6 requests a second, alternating processes
        post(gateway if n % 2 else second_gateway, api_key[1], chat(), **{"x-request-id": f"w{n}"})
        n += 1
        time.sleep(0.15)
    traffic = UsageRecord.objects.filter(client_request_id__regex=r"^(w\d+|warm)$")
    assert wait_until(lambda: traffic.exclude(client_request_id="warm").count() == n)
    records = list(traffic)
    admitted = sorted(r.created_at.timestamp() for r in records if r.http_status == 200)
    # Every 60-second window holds at most 60 admitted requests (50 ms of slack for clock reading order).
    for i, start in enumerate(admitted):
        in_window = [t for t in admitted[i:] if t < start + 59.95]
        assert len(in_window) <= 60
    first_window = [t for t in admitted if t < admitted[0] + 60]
    assert len(first_window) >= 57  # at least 95% of the limit admitted
    assert len(admitted) > 60  # and the window slid: more were admitted after it


def test_redis_stopped_mid_traffic_follows_the_documented_policy(gateway_env, mock_upstream, tenant, api_key,
                                                                 mock_provider, own_redis):
    from providers.models import Deployment

    for model in ("strict", "credited"):
        Deployment.objects.create(provider=mock_provider, public_model=model, upstream_model="mock-gpt",
                                  output_price_per_mtok=1)
    Limit.objects.create(tenant=tenant, api_key=api_key[0], requests_per_minute=10)
    Limit.objects.create(tenant=tenant, model="strict", budget_usd=1)
    Limit.objects.create(tenant=tenant, model="credited", budget_usd=1, offline_credit_usd=Decimal("0.000100"))
    server = Server(["manage.py", "serve", "--port", "{port}", "--log-level", "warning"],
                    env={**gateway_env, "REDIS_URL": own_redis.url, "GATEWAY_PROCESSES": "2"},
                    ready_path="/v1/models")
    try:
        ok = []
        for model in ("gpt-test", "strict", "credited"):
            response = post(server, api_key[1], chat(model, "[[mock chunks=20]]"))
            assert response.status_code == 200, response.text
            ok.append(response)
        own_redis.stop()

        assert post(server, api_key[1], chat("strict")).json()["error"]["code"] == "limits_unavailable"
        credited = [post(server, api_key[1], chat("credited", "[[mock chunks=20]]", max_tokens=20))
                    for _ in range(6)]
        # 100 micro-USD of credit at 20 per call, and half the key's 10 per minute: 5 at most.
        assert [r.status_code for r in credited].count(200) == 5
        assert credited[-1].status_code == 429
        # This process alone may admit half the key's 10 per minute while Redis is away.
        plain = [post(server, api_key[1], chat()) for _ in range(6)]
        admitted_offline = sum(r.status_code == 200 for r in credited + plain)
        assert sum(r.status_code == 200 for r in plain) <= 5 and admitted_offline <= 5
        ok += [r for r in credited + plain if r.status_code == 200]

        own_redis.start()  # back
        after = wait_until(lambda: (r := post(server, api_key[1], chat("strict"))).status_code == 200 and r,
                           timeout=10)
        ok.append(after)
        served = {r.headers["x-request-id"] for r in ok}
        recorded = wait_until(lambda: set(UsageRecord.objects.filter(request_id__in=served, status="ok")
                                          .values_list("request_id", flat=True)) == served and served)
        assert recorded == served
    finally:
        server.stop()
