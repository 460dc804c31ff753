"""Admission and settlement, on both engines: the Redis Lua scripts and the in-process one."""

import asyncio
import random
import types
from decimal import Decimal

import pytest
import redis as redis_sync
from django.conf import settings as django_settings
from django.core import mail

from gateway_project.lib import redis_keys
from gateway_project.lib.errors import GatewayError
from gateway_project.lib.redis_pool import sync_redis
from tenants.models import AuditLog, Membership
from usage import limit_rules, limits, limits_local
from usage.limits_local import local
from usage.models import BudgetAlert, Limit


@pytest.fixture(params=["redis", "cluster", "local"])
def engine(request, settings, transactional_db):
    """Run the test against one Redis, against a three-master cluster (the same exactness: each
    script touches one slot) and in-process (embedded mode)."""
    redis_sync.Redis.from_url(django_settings.REDIS_URL).flushdb()
    if request.param == "local":
        settings.REDIS_URL = ""
    if request.param == "cluster":
        cluster = request.getfixturevalue("own_cluster")
        cluster.client().flushdb(target_nodes=redis_sync.RedisCluster.PRIMARIES)
        settings.REDIS_URL = cluster.url
    local.reset()
    yield request.param
    local.reset()


def run(coro):
    return asyncio.run(coro)


def estimate(tokens=10, micros=100):
    return lambda: (tokens, micros)


def test_requests_per_minute(engine, tenant, api_key):
    Limit.objects.create(tenant=tenant, api_key=api_key[0], requests_per_minute=5)

    async def scenario():
        admitted = [await limits.admit(tenant.id, api_key[0].id, "m", estimate()) for _ in range(5)]
        with pytest.raises(GatewayError) as refused:
            await limits.admit(tenant.id, api_key[0].id, "m", estimate())
        return admitted, refused.value

    admitted, refused = run(scenario())
    assert [a.headers["x-ratelimit-remaining-requests"] for a in admitted] == ["4", "3", "2", "1", "0"]
    assert admitted[0].headers["x-ratelimit-limit-requests"] == "5"
    assert refused.status == 429 and refused.code == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_limits_on_other_keys_and_models_do_not_apply(engine, tenant, api_key):
    from keys import services as key_services

    other, _ = key_services.issue(tenant, "other")
    Limit.objects.create(tenant=tenant, api_key=other, requests_per_minute=1)
    Limit.objects.create(tenant=tenant, model="expensive", requests_per_minute=1)

    async def scenario():
        return [await limits.admit(tenant.id, api_key[0].id, "cheap", estimate()) for _ in range(3)]

    assert run(scenario()) == [None, None, None]


def test_concurrency_released_on_settle(engine, tenant, api_key):
    Limit.objects.create(tenant=tenant, max_concurrent=2)

    async def scenario():
        first = await limits.admit(tenant.id, api_key[0].id, "m", estimate())
        await limits.admit(tenant.id, api_key[0].id, "m", estimate())
        with pytest.raises(GatewayError) as refused:
            await limits.admit(tenant.id, api_key[0].id, "m", estimate())
        await limits.settle(first, 10, 100)
        third = await limits.admit(tenant.id, api_key[0].id, "m", estimate())
        return refused.value.code, third

    code, third = run(scenario())
    assert code == "concurrency_limit_exceeded" and third is not None


def test_tokens_per_minute(engine, tenant, api_key):
    Limit.objects.create(tenant=tenant, tokens_per_minute=100)

    async def scenario():
        a = await limits.admit(tenant.id, api_key[0].id, "m", estimate(tokens=60))
        await limits.settle(a, 30, 0)  # used less than reserved: the difference comes back
        b = await limits.admit(tenant.id, api_key[0].id, "m", estimate(tokens=60))
        with pytest.raises(GatewayError) as refused:
            await limits.admit(tenant.id, api_key[0].id, "m", estimate(tokens=20))
        return b, refused.value

    b, refused = run(scenario())
    assert b.headers["x-ratelimit-remaining-tokens"] == "10"
    assert refused.code == "tokens_per_minute_exceeded"


def test_two_hundred_concurrent_requests_never_overspend_a_budget_for_fifty(engine, tenant, api_key):
    # Each request reserves exactly what it will cost: 0 overshoot.
    Limit.objects.create(tenant=tenant, budget_usd=Decimal("0.005"), period="day")  # 5000 micro-USD

    async def one():
        try:
            admission = await limits.admit(tenant.id, api_key[0].id, "m", estimate(tokens=10, micros=100))
        except GatewayError as refused:
            return refused.code
        await asyncio.sleep(0.01)
        await limits.settle(admission, 10, 100)
        return "ok"

    async def scenario():
        return await asyncio.gather(*(one() for _ in range(200)))

    outcomes = run(scenario())
    assert outcomes.count("ok") == 50
    assert set(outcomes) == {"ok", "budget_exceeded"}
    rule = limits._load_rules()[tenant.id][0]
    start, _ = limits.period_bounds(rule, __import__("time").time())
    if engine != "local":
        client = sync_redis()  # one Redis, or the cluster
        counters = client.hgetall(redis_keys.limit_key(rule.tenant_id, rule.id, f"p:{start}"))
        assert {k.decode(): int(v) for k, v in counters.items()} == {"tok": 500, "tokres": 0, "cost": 5000,
                                                                      "costres": 0}
        assert client.zcard(redis_keys.reservations(rule.tenant_id)) == 0
    else:
        assert local.periods[(rule.id, start)] == [500, 0, 5000, 0]
        assert local.reservations == {}


def test_settle_counts_once(engine, tenant, api_key):
    Limit.objects.create(tenant=tenant, token_quota=100, period="total")

    async def scenario():
        a = await limits.admit(tenant.id, api_key[0].id, "m", estimate(tokens=40))
        await limits.settle(a, 40, 0)
        a.settled = False  # a retried settle of the same reservation
        await limits.settle(a, 40, 0)
        await limits.admit(tenant.id, api_key[0].id, "m", estimate(tokens=60))
        with pytest.raises(GatewayError) as refused:
            await limits.admit(tenant.id, api_key[0].id, "m", estimate(tokens=1))
        return refused.value.code

    assert run(scenario()) == "quota_exceeded"


def test_period_counters_are_rebuilt_from_the_database(engine, tenant, api_key):
    from usage import recorder

    Limit.objects.create(tenant=tenant, budget_usd=Decimal("0.001"), period="month")  # 1000 micro-USD
    event = {"request_id": "earlier", "ts": __import__("time").time(), "tenant_id": tenant.id,
             "api_key_id": api_key[0].id, "key_prefix": "", "provider_id": None, "provider_name": "",
             "deployment_id": None, "endpoint": "chat.completions", "public_model": "m", "upstream_model": "m",
             "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "cached_tokens": 0,
             "tokens_estimated": False, "cost_usd": "0.000950", "latency_ms": 1, "ttft_ms": None,
             "status": "ok", "http_status": 200, "error_type": "", "streamed": False}
    recorder.write([event])  # spent before Redis knew of it (or after it lost its data)

    async def scenario():
        await limits.admit(tenant.id, api_key[0].id, "m", estimate(micros=50))
        with pytest.raises(GatewayError) as refused:
            await limits.admit(tenant.id, api_key[0].id, "m", estimate(micros=1))
        return refused.value.code

    assert run(scenario()) == "budget_exceeded"


def test_reservation_of_a_dead_process_expires_at_its_estimate(engine, tenant, api_key, monkeypatch):
    monkeypatch.setattr(limit_rules, "RESERVATION_TTL_MS", 200)
    Limit.objects.create(tenant=tenant, max_concurrent=1, token_quota=1000, period="total")

    async def scenario():
        await limits.admit(tenant.id, api_key[0].id, "m", estimate(tokens=300))  # never settled
        await asyncio.sleep(0.3)
        admitted = await limits.admit(tenant.id, api_key[0].id, "m", estimate(tokens=700))
        with pytest.raises(GatewayError) as refused:
            await limits.admit(tenant.id, api_key[0].id, "m", estimate(tokens=1))
        return admitted, refused.value.code

    admitted, code = run(scenario())
    # The dead reservation freed its slot and was charged its 300 tokens.
    assert admitted is not None and code in ("concurrency_limit_exceeded", "quota_exceeded")


def test_threshold_alerts_email_admins_once_per_threshold(engine, tenant, api_key, django_user_model, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    owner = django_user_model.objects.create_user("owner", "owner@acme.test", "pw")
    Membership.objects.create(tenant=tenant, user=owner, role="owner")
    limit = Limit.objects.create(tenant=tenant, budget_usd=Decimal("0.001"), period="day",
                                 alert_thresholds=[50, 80, 100])

    async def scenario():
        for _ in range(3):
            a = await limits.admit(tenant.id, api_key[0].id, "m", estimate(micros=300))
            await limits.settle(a, 10, 300)
        await asyncio.gather(*limits._background)

    run(scenario())  # 300, 600, 900 micro-USD: crosses 50% and 80%
    alerts = sorted(BudgetAlert.objects.filter(limit=limit).values_list("threshold", flat=True))
    assert alerts == [50, 80]
    assert len(mail.outbox) == 2 and all(m.to == ["owner@acme.test"] for m in mail.outbox)
    subjects = sorted(m.subject for m in mail.outbox)
    assert "budget at 50%" in subjects[0] and "budget at 80%" in subjects[1]
    assert AuditLog.objects.filter(action="limit.threshold").count() == 2


def test_free_models_settle_cleanly(engine, tenant, api_key):
    # A zero-cost reservation once broke the Lua settle (Lua renders -0 as "-0").
    Limit.objects.create(tenant=tenant, budget_usd=Decimal("0.001"), token_quota=100, period="total")

    async def scenario():
        for _ in range(3):
            admission = await limits.admit(tenant.id, api_key[0].id, "free", estimate(tokens=0, micros=0))
            assert await limits.settle(admission, 0, 0) is False
        more = await limits.admit(tenant.id, api_key[0].id, "free", estimate(tokens=100, micros=1000))
        await limits.settle(more, 100, 1000)
        with pytest.raises(GatewayError) as refused:
            await limits.admit(tenant.id, api_key[0].id, "free", estimate(tokens=1, micros=0))
        return refused.value.code

    assert run(scenario()) == "quota_exceeded"


def _overrunning_calls(tenant, api_key, count: int) -> list[str]:
    """`count` calls at once, each estimated at 100 micro-USD, answering its largest answer: 10,000."""
    async def one():
        try:
            admission = await limits.admit(tenant.id, api_key[0].id, "m", lambda: (10, 100, 1000, 10_000))
        except GatewayError as refused:
            return refused.code
        await asyncio.sleep(0.01)
        await limits.settle(admission, 1000, 10_000)
        return "ok"

    async def scenario():
        return await asyncio.gather(*(one() for _ in range(count)))

    return run(scenario())


def test_a_budget_that_saw_an_overrun_reserves_largest_answers(engine, tenant, api_key):
    Limit.objects.create(tenant=tenant, api_key=api_key[0], budget_usd=Decimal("0.05"), period="day")
    assert _overrunning_calls(tenant, api_key, 1) == ["ok"]  # estimated 100, cost 10,000: learnt
    outcomes = _overrunning_calls(tenant, api_key, 20)
    # 40,000 left: four calls hold their largest answer, and nothing is overspent.
    # Trusting the estimate, all twenty were admitted (210,000 spent).
    assert outcomes.count("ok") == 4 and set(outcomes) == {"ok", "budget_exceeded"}
    assert limits.current_use(Limit.objects.get())["period_micros"] == 50_000


def test_never_trusting_max_tokens_overspends_by_one_largest_answer_at_most(engine, tenant, api_key, settings):
    settings.LIMITS_TRUST_MAX_TOKENS = False
    Limit.objects.create(tenant=tenant, api_key=api_key[0], budget_usd=Decimal("0.005"), period="day")
    outcomes = _overrunning_calls(tenant, api_key, 20)
    # The first call holds all that is left, so it is the only one in flight; its overrun
    # is carried, so nothing more is admitted.
    assert outcomes.count("ok") == 1 and set(outcomes) == {"ok", "budget_exceeded"}
    assert limits.current_use(Limit.objects.get())["period_micros"] == 10_000  # 5,000 over: one largest answer


def test_tokens_per_minute_reserve_the_largest_answer_once_overrun(engine, tenant, api_key):
    Limit.objects.create(tenant=tenant, api_key=api_key[0], tokens_per_minute=1000)
    sizes = lambda: (10, 1, 2000, 200)  # noqa: E731  (estimate 10 tokens, largest answer 2,000)

    async def scenario():
        first = await limits.admit(tenant.id, api_key[0].id, "m", sizes)
        second = await limits.admit(tenant.id, api_key[0].id, "m", sizes)  # trusted: both fit
        await limits.settle(first, 400, 1)  # far over its 10: the upstream ignored max_tokens
        await limits.settle(second, 10, 1)
        third = await limits.admit(tenant.id, api_key[0].id, "m", sizes)  # holds the 590 left
        with pytest.raises(GatewayError) as refused:
            await limits.admit(tenant.id, api_key[0].id, "m", sizes)
        return third, refused.value

    third, refused = run(scenario())
    assert third.headers["x-ratelimit-remaining-tokens"] == "0"
    assert refused.code == "tokens_per_minute_exceeded"


def test_batch_lines_fill_only_their_share_of_a_tenants_requests_per_minute(engine, tenant, api_key):
    Limit.objects.create(tenant=tenant, requests_per_minute=10, max_concurrent=100)

    async def scenario():
        batch = [await limits.admit(tenant.id, api_key[0].id, "m", estimate(), share=0.5) for _ in range(5)]
        with pytest.raises(GatewayError) as batch_refused:
            await limits.admit(tenant.id, api_key[0].id, "m", estimate(), share=0.5)
        live = [await limits.admit(tenant.id, api_key[0].id, "m", estimate()) for _ in range(5)]
        with pytest.raises(GatewayError) as live_refused:
            await limits.admit(tenant.id, api_key[0].id, "m", estimate())
        return batch, batch_refused.value, live, live_refused.value

    batch, batch_refused, live, live_refused = run(scenario())
    assert len(batch) == 5 and batch_refused.code == "rate_limit_exceeded"
    assert len(live) == 5 and live_refused.code == "rate_limit_exceeded"  # the limit itself holds for both


def test_batch_lines_fill_only_their_share_of_a_keys_tokens_per_minute(engine, tenant, api_key):
    Limit.objects.create(tenant=tenant, api_key=api_key[0], tokens_per_minute=100)

    async def scenario():
        batch = [await limits.admit(tenant.id, api_key[0].id, "m", estimate(20), share=0.5) for _ in range(2)]
        with pytest.raises(GatewayError) as batch_refused:
            await limits.admit(tenant.id, api_key[0].id, "m", estimate(20), share=0.5)
        live = [await limits.admit(tenant.id, api_key[0].id, "m", estimate(20)) for _ in range(3)]
        with pytest.raises(GatewayError) as live_refused:
            await limits.admit(tenant.id, api_key[0].id, "m", estimate(20))
        return batch, batch_refused.value, live, live_refused.value

    batch, batch_refused, live, live_refused = run(scenario())
    assert len(batch) == 2 and batch_refused.code == "tokens_per_minute_exceeded"
    assert len(live) == 3 and live_refused.code == "tokens_per_minute_exceeded"
    assert limit_rules.share_of(1, 0.5) == 1 and limit_rules.share_of(0, 0.5) == 0  # no limit stays none


@pytest.fixture()
def clock(monkeypatch):
    """The limits' clock (usage.limits and the in-process engine), moved by the test: [now]."""
    now = [1_800_000_000.0]
    fake = types.SimpleNamespace(time=lambda: now[0])
    monkeypatch.setattr(limits, "time", fake)
    monkeypatch.setattr(limits_local, "time", fake)
    return now


def test_requests_per_minute_hold_across_a_second_boundary(engine, tenant, api_key, clock):
    # 60 calls late in one second; 60 s later, a bucket of whole seconds alone would admit again while
    # those calls are 59.5 s old, and the 60 s window around them would hold 120.
    Limit.objects.create(tenant=tenant, api_key=api_key[0], requests_per_minute=60)
    start = clock[0]

    async def at(offset):
        clock[0] = start + offset
        try:
            return await limits.admit(tenant.id, api_key[0].id, "m", estimate())
        except GatewayError as refused:
            return refused

    async def scenario():
        first = [await at(0.9) for _ in range(60)]
        return first, await at(60.4), await at(60.95)

    first, early, later = run(scenario())
    assert all(a.headers for a in first)
    assert early.code == "rate_limit_exceeded" and early.headers["retry-after"] == "1"  # room at 60.9
    assert later.headers["x-ratelimit-remaining-requests"] == "59"


def test_requests_per_minute_hold_in_every_window_and_admit_nearly_all_of_it(engine, tenant, api_key, clock):
    # Callers asking four times a 60-a-minute limit for five minutes (the test's clock); the same
    # limit counts tokens too (never reached), in the same window hash.
    Limit.objects.create(tenant=tenant, api_key=api_key[0], requests_per_minute=60, tokens_per_minute=10**6)
    start, admitted, refusals = clock[0], [], set()

    async def scenario():
        rng = random.Random(24)
        while clock[0] < start + 300:
            try:
                admission = await limits.admit(tenant.id, api_key[0].id, "m", estimate())
            except GatewayError as refused:
                refusals.add((refused.code, 1 <= int(refused.headers["retry-after"]) <= 60))
            else:
                admitted.append(clock[0])
                await limits.settle(admission, 10, 100)
            clock[0] += rng.expovariate(4.0)

    run(scenario())
    windows = [sum(1 for t in admitted if s <= t < s + 60) for s in (start + i * 0.1 for i in range(2400))]
    assert max(windows) == 60  # never more than the limit in any 60-second window
    minutes = [sum(1 for t in admitted if start + 60 * m <= t < start + 60 * (m + 1)) for m in range(5)]
    assert min(minutes) >= 57, minutes  # at least 95% of the allowance in every whole minute
    assert refusals == {("rate_limit_exceeded", True)}
