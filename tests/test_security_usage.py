"""Security findings of issue 16 on usage: a usage event the database refuses never
jams the ledger (finding 4), and budgets and token limits hold when an upstream
ignores max_tokens (finding 13)."""

import time

import httpx
import orjson
import redis

from tests.conftest import Server, wait_until
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
    server = Server(["manage.py", "serve", "--port", "{port}", "--log-level", "warning"], env=env,
                    ready_path="/v1/models")
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
        assert redis.Redis.from_url(own_redis.url).xlen(recorder.STREAM) == 0
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
    client.delete(recorder.STREAM)
    metric = orjson.dumps(("gateway_usage_dead_letters_total",))
    before = float(client.hget("gw:metrics:c", metric) or 0)
    # Straight into the buffer, as an older gateway (or anything else) might have put them:
    # a NUL the drain makes safe, a row PostgreSQL refuses (no tenant), a field no record
    # has, an entry that is no JSON at all, and good events around them.
    entries = [_event("good-a", tenant.id), _event("nul-b", tenant.id, public_model="a\u0000b"),
               _event("no-tenant-c", None), _event("good-d", tenant.id),
               _event("unknown-field-e", tenant.id, colour="red"), b"\x00not json{", _event("good-f", tenant.id)]
    for raw in entries:
        client.xadd(recorder.STREAM, {"e": raw})

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
    assert client.xlen(recorder.STREAM) == 0
    assert client.xpending(recorder.STREAM, recorder.GROUP)["pending"] == 0
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
    client.delete(recorder.STREAM)
    client.xadd(recorder.STREAM, {"e": _event("waits", tenant.id)})

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
    assert client.xlen(recorder.STREAM) == 0
