"""Security findings of issue 16 on usage: a usage event the database refuses never
jams the ledger (finding 4), and budgets and token limits hold when an upstream
ignores max_tokens (finding 13)."""

import asyncio
import time
from decimal import Decimal

import httpx
import orjson
import pytest
import redis
from django.db.models import Sum

from gateway_project.lib import redis_keys
from tests.conftest import start_gateway, wait_until
from usage import recorder
from usage.models import UsageDeadLetter, UsageRecord

NUL_MODEL = "mock\u0000model"


def chat(url: str, secret: str, model: str, request_id: str, **extra) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {secret}", "x-request-id": request_id},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


# --- finding 4: one request jams the usage ledger ------------------------------------

def test_a_nul_model_name_neither_jams_the_usage_ledger_nor_readiness(gateway_env, mock_provider, api_key,
                                                                      own_redis):
    # A gateway of its own: its own Redis (a stream with nothing else in it) and a
    # readiness lag short enough that a stuck event would show within the test.
    env = {**gateway_env, "REDIS_URL": own_redis.url, "READY_MAX_USAGE_LAG": "3"}
    server = start_gateway(env)
    try:
        secret = api_key[1]
        assert wait_until(lambda: chat(server.url, secret, "gpt-test", "warm-up").status_code == 200, timeout=20)
        bad = chat(server.url, secret, NUL_MODEL, "nul-model-1")
        assert bad.status_code == 404 and bad.json()["error"]["type"] == "invalid_request_error"
        sent = {}
        for i in range(5):
            sent[f"good-{i}"] = time.monotonic()
            assert chat(server.url, secret, "gpt-test", f"good-{i}").status_code == 200
        # Every good call is in the ledger within moments (drains run every second).
        assert wait_until(lambda: UsageRecord.objects.filter(client_request_id__in=sent).count() == 5, timeout=3)
        # The bad call is billed too, its name made safe (NUL shown as U+FFFD), not dropped.
        record = wait_until(lambda: UsageRecord.objects.filter(client_request_id="nul-model-1").first())
        assert record.public_model == "mock\ufffdmodel" and record.http_status == 404
        assert not UsageDeadLetter.objects.exists()
        # Past the readiness lag, the process is still ready: nothing waits in the buffer.
        time.sleep(4)
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 200, ready.text
        own = redis.Redis.from_url(own_redis.url)
        assert sum(own.xlen(stream) for stream in redis_keys.usage_streams()) == 0
        assert "Traceback" not in server.output()
    finally:
        server.stop()


def _event(request_id: str, tenant_id, **fields) -> bytes:
    event = {"request_id": request_id, "client_request_id": "", "ts": time.time(), "tenant_id": tenant_id,
             "api_key_id": None, "key_prefix": "", "provider_id": None, "provider_name": "",
             "deployment_id": None, "endpoint": "chat.completions", "route": "", "strategy": "", "attempts": 1,
             "public_model": "gpt-test", "upstream_model": "", "prompt_tokens": 3, "completion_tokens": 5,
             "total_tokens": 8, "cached_tokens": 0, "tokens_estimated": False, "cost_usd": "0.000002",
             "latency_ms": 5, "ttft_ms": None, "status": "ok", "http_status": 200, "error_type": "",
             "streamed": False, **fields}
    return orjson.dumps(event)


def test_events_the_database_refuses_become_dead_letters_and_the_stream_drains(transactional_db, tenant, caplog):
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    stream = recorder.stream_of({"tenant_id": tenant.id})
    client.delete(stream)
    metric = orjson.dumps(("gateway_usage_dead_letters_total",))
    before = float(client.hget("gw:metrics:c", metric) or 0)
    # Straight into the buffer, as an older gateway (or anything else) might have put them:
    # a NUL the drain makes safe, a row PostgreSQL refuses (no tenant), a field no record
    # has, an entry that is no JSON at all, and good events around them.
    entries = [_event("good-a", tenant.id), _event("nul-b", tenant.id, public_model="a\u0000b"),
               _event("no-tenant-c", None), _event("good-d", tenant.id),
               _event("unknown-field-e", tenant.id, colour="red"), b"\x00not json{", _event("good-f", tenant.id)]
    for raw in entries:
        client.xadd(stream, {"e": raw})

    assert recorder.drain_all() == len(entries)

    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {"good-a", "nul-b", "good-d", "good-f"}
    assert UsageRecord.objects.get(request_id="nul-b").public_model == "a\ufffdb"
    letters = {letter.request_id: letter for letter in UsageDeadLetter.objects.all()}
    assert set(letters) == {"no-tenant-c", "unknown-field-e", ""}
    assert "IntegrityError" in letters["no-tenant-c"].reason and letters["no-tenant-c"].tenant_id is None
    assert "colour" in letters["unknown-field-e"].reason
    assert orjson.loads(letters["unknown-field-e"].event)["colour"] == "red"  # kept as sent
    assert letters[""].event == "\\u0000not json{" and "not a usage event" in letters[""].reason
    assert float(client.hget("gw:metrics:c", metric)) - before == 3
    # Acknowledged and gone: nothing is retried for ever.
    assert client.xlen(stream) == 0
    assert client.xpending(stream, recorder.GROUP)["pending"] == 0
    # One line each, no traceback.
    refused = [r for r in caplog.records if "dead letter" in r.getMessage()]
    assert len(refused) == 3 and not any(r.exc_info for r in caplog.records)


def test_dead_letters_are_for_staff_only_in_the_admin(client, transactional_db, tenant):
    from django.contrib.auth.models import User

    from tenants.models import Membership

    letter = UsageDeadLetter.objects.create(request_id="req-x", tenant_id=tenant.id, reason="refused", event="{}")
    staff = User.objects.create_superuser("root", "root@example.com", "pw")
    admin_user = User.objects.create_user("tenant-admin", "a@example.com", "pw", is_staff=True)
    Membership.objects.create(tenant=tenant, user=admin_user, role="admin")
    client.force_login(staff)
    base = "/admin/usage/usagedeadletter/"
    assert client.get(base).status_code == 200
    page = client.get(f"{base}{letter.pk}/change/")
    assert page.status_code == 200 and b"refused" in page.content
    assert client.post(f"{base}{letter.pk}/delete/", {"post": "yes"}).status_code == 403  # read-only
    client.force_login(admin_user)
    assert client.get(base).status_code == 403
    assert client.get(f"{base}{letter.pk}/change/").status_code in (403, 404)


def test_a_database_that_does_not_answer_keeps_events_buffered(transactional_db, tenant, monkeypatch):
    from django.conf import settings
    from django.db import OperationalError

    client = redis.Redis.from_url(settings.REDIS_URL)
    stream = recorder.stream_of({"tenant_id": tenant.id})
    client.delete(stream)
    client.xadd(stream, {"e": _event("waits", tenant.id)})

    def away(events):
        raise OperationalError("connection refused")

    def no_answer():
        raise OperationalError("connection refused")

    monkeypatch.setattr(recorder, "write", away)
    monkeypatch.setattr(recorder, "_database_answers", no_answer)
    try:
        recorder.drain()
    except OperationalError:
        pass
    assert not UsageDeadLetter.objects.exists()  # an outage is nobody's bad event
    monkeypatch.undo()
    assert wait_until(lambda: recorder.drain() or UsageRecord.objects.filter(request_id="waits").exists())
    assert client.xlen(stream) == 0


# --- finding 13: budgets and token limits when an upstream ignores max_tokens ---------

# The mock reports 475 reasoning tokens besides the 5 visible ones max_tokens allows:
# an upstream that ignores max_tokens. The deployment can answer at most 1,000 tokens.
OVERRUN = {"model": "overrun-model", "max_tokens": 5,
           "messages": [{"role": "user", "content": "go [[mock reasoning_tokens=475]]"}]}
LARGEST_OUTPUT = 1000
OUTPUT_PRICE = Decimal("2")  # USD per million tokens; input 1


async def _burst(url: str, secret: str, calls: int, concurrency: int) -> list[int]:
    queue, statuses = iter(range(calls)), []

    async def worker(client):
        for _ in queue:
            statuses.append((await client.post("/v1/chat/completions", json=OVERRUN)).status_code)

    async with httpx.AsyncClient(base_url=url, timeout=30, headers={"authorization": f"Bearer {secret}"}) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


def _billed(key, admitted: int) -> tuple[int, Decimal]:
    """(tokens, USD) of the key's answered calls, once all are in the ledger."""
    answered = UsageRecord.objects.filter(api_key=key, http_status=200)
    assert wait_until(lambda: answered.count() == admitted, timeout=10)
    sums = answered.aggregate(tokens=Sum("total_tokens"), cost=Sum("cost_usd"))
    return sums["tokens"] or 0, sums["cost"] or Decimal(0)


@pytest.fixture()
def overrun_model(gateway, mock_provider, api_key):
    from providers.models import Deployment

    Deployment.objects.create(provider=mock_provider, public_model="overrun-model", upstream_model="mock-gpt",
                              max_output_tokens=LARGEST_OUTPUT, input_price_per_mtok="1",
                              output_price_per_mtok=OUTPUT_PRICE)
    assert wait_until(lambda: chat(gateway.url, api_key[1], "overrun-model", "probe").status_code == 200, timeout=10)
    return gateway


def test_a_budget_is_overspent_by_at_most_one_largest_answer(overrun_model, tenant):
    from keys import services as key_services
    from usage.models import Limit

    key, secret = key_services.issue(tenant, "budgeted")
    Limit.objects.create(tenant=tenant, api_key=key, budget_usd=Decimal("0.05"), period="total")
    time.sleep(1.5)  # the limit reaches the gateway's rules cache (pushed over Redis)

    # About fifty answers' worth; the first calls, trusting max_tokens, teach the limit that
    # this upstream ignores it, and from then on calls hold their largest answer.
    statuses = asyncio.run(_burst(overrun_model.url, secret, calls=200, concurrency=10))
    admitted = statuses.count(200)
    tokens, spent = _billed(key, admitted)
    print(f"\nbudget $0.05, 200 calls at 10 at once: {admitted} admitted, ${spent} spent")
    assert set(statuses) <= {200, 429}
    prompt = tokens // admitted - 480
    largest = (prompt + LARGEST_OUTPUT * OUTPUT_PRICE) / 1_000_000  # a call's largest answer, in USD
    # Before: every call in flight when the budget ran out overran it (about $0.009 over).
    assert spent - Decimal("0.05") <= largest


def test_tokens_per_minute_stop_trusting_max_tokens_once_overrun(overrun_model, tenant):
    from django.conf import settings

    from keys import services as key_services
    from usage.models import Limit

    key, secret = key_services.issue(tenant, "rate limited")
    limit = Limit.objects.create(tenant=tenant, api_key=key, tokens_per_minute=500)
    time.sleep(1.5)

    # First burst: every call reserves what it asked for (5 tokens and its prompt), so the
    # calls in flight when the first overrun settles all get through: the bound is one
    # concurrency's worth of overrun (before the fix, the same every minute).
    first = asyncio.run(_burst(overrun_model.url, secret, calls=50, concurrency=10))
    first_tokens, _ = _billed(key, first.count(200))
    assert first.count(200) <= 10 and first_tokens <= 500 + 10 * 480
    # The minute moves on (its buckets expire): the limit now reserves each call's largest
    # answer or what is left of the minute, so one call at a time gets through.
    redis.Redis.from_url(settings.REDIS_URL).delete(redis_keys.limit_key(limit.tenant_id, limit.id, "tpm"))
    second = asyncio.run(_burst(overrun_model.url, secret, calls=50, concurrency=10))
    total_tokens, _ = _billed(key, first.count(200) + second.count(200))
    second_tokens = total_tokens - first_tokens
    print(f"\n500 TPM, 50 calls at 10 at once: {first.count(200)} admitted ({first_tokens} tokens); "
          f"the next minute {second.count(200)} admitted ({second_tokens} tokens)")
    assert second.count(200) <= 2 and second_tokens <= 500 + 480
