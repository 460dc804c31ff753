"""Stored responses (usage.responses_store): readable the moment they are saved, drained to the
database in bulk, tenant-scoped, deletable before and after the drain, and gone past retention."""

import asyncio
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from gateway_project.lib import redis_keys
from gateway_project.lib.errors import GatewayError
from keys import services as key_services
from keys.auth import info_for
from keys.models import ApiKey
from tests.conftest import user_in, wait_until
from usage import recorder, responses_store, retention
from usage.models import StoredResponse


@pytest.fixture(autouse=True)
def _empty_store():
    """Each test starts with nothing buffered in this process or in Redis."""
    def empty():
        responses_store._records.clear()
        responses_store._pending.clear()
        responses_store._tombstones.clear()
        if django_settings.REDIS_URL:
            client = redis.Redis.from_url(django_settings.REDIS_URL)
            for key in client.scan_iter("gw:*:resp*", count=1000):
                client.delete(key)
            client.delete(*redis_keys.responses_streams())

    empty()
    yield
    empty()


def key_info(tenant, **fields):
    row, _ = key_services.issue(tenant, "responses key", **fields)
    return info_for(ApiKey.objects.select_related("tenant").get(pk=row.pk))


def response(text: str = "Hello!", model: str = "gpt-test") -> dict:
    return {"id": f"resp_{secrets.token_hex(24)}", "object": "response", "created_at": int(time.time()),
            "status": "completed", "model": model,
            "output": [{"id": f"msg_{secrets.token_hex(24)}", "type": "message", "role": "assistant",
                        "status": "completed", "content": [{"type": "output_text", "text": text, "annotations": []}]}]}


def user_says(text: str) -> dict:
    return {"role": "user", "content": text}


def save(key, answer: dict, items: list[dict], previous: str | None = None) -> dict:
    asyncio.run(responses_store.save(key, answer, items, previous))
    return answer


def load(key, response_id: str):
    return asyncio.run(responses_store.load(key, response_id))


def drop_redis_copy(key, response_id: str) -> None:
    redis.Redis.from_url(django_settings.REDIS_URL).delete(responses_store._record_key(key.tenant_id, response_id))


def test_a_saved_response_is_readable_at_once_and_writes_no_row_on_the_request_path(transactional_db, tenant):
    key = key_info(tenant)
    answer = response()
    with CaptureQueriesContext(connection) as queries:
        save(key, answer, [user_says("Hi")])
        record = load(key, answer["id"])  # straight after, before any drain
    assert queries.captured_queries == []
    assert record["response"] == answer
    assert record["model"] == "gpt-test" and record["previous_response_id"] == ""
    [item] = record["input_items"]
    assert item == {"id": item["id"], "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
    assert item["id"].startswith("msg_")
    assert not StoredResponse.objects.exists()


def test_drained_once_then_read_from_the_database_when_the_redis_copy_is_gone(transactional_db, tenant):
    key = key_info(tenant)
    answer = save(key, response(), [user_says("Hi"), {"type": "function_call_output", "call_id": "c1", "output": "4"}])
    recorder.drain_all()
    recorder.drain_all()
    # A gateway process of the suite drains the same Redis stream: its drainer may have taken the
    # entry first, and write it a moment later.
    row = wait_until(lambda: StoredResponse.objects.first())
    assert row is not None and StoredResponse.objects.count() == 1
    assert (row.response_id, row.tenant_id, row.api_key_id, row.model) == (answer["id"], tenant.id, key.id, "gpt-test")
    assert row.input_items[1]["id"].startswith("fco_")
    assert (row.expires_at - row.created_at).days == 30  # RESPONSES_RETENTION_DAYS
    drop_redis_copy(key, answer["id"])
    assert load(key, answer["id"])["response"] == answer
    # A second copy of the same record (a drainer that died before acknowledging) leaves one row.
    responses_store.write([responses_store._row_record(row)])
    assert StoredResponse.objects.count() == 1


def test_embedded_mode_keeps_it_in_process_until_drained(transactional_db, tenant, settings):
    settings.REDIS_URL = ""
    key = key_info(tenant)
    answer = save(key, response(), [user_says("Hi")])
    assert load(key, answer["id"])["response"] == answer
    assert not StoredResponse.objects.exists()
    assert responses_store.drain_all() == 1
    assert responses_store._records == {}
    assert load(key, answer["id"])["response"] == answer  # now from the database


def test_other_tenants_and_keys_that_may_not_use_the_model_do_not_see_it(transactional_db, tenant, other_tenant):
    key = key_info(tenant)
    answer = save(key, response(), [user_says("Hi")])
    outsider = key_info(other_tenant)
    narrow = key_info(tenant, models_allowed=["other-model"])
    for stage in ("buffered", "drained"):
        assert load(outsider, answer["id"]) is None, stage
        assert load(narrow, answer["id"]) is None, stage
        assert load(key_info(tenant), answer["id"]) is not None, stage  # any key of the tenant that may use it
        assert asyncio.run(responses_store.delete(outsider, answer["id"])) is False
        recorder.drain_all()
        drop_redis_copy(key, answer["id"])
    assert StoredResponse.objects.count() == 1


@pytest.mark.parametrize("redis_mode", [True, False])
def test_a_delete_before_the_drain_wins(transactional_db, tenant, settings, redis_mode):
    if not redis_mode:
        settings.REDIS_URL = ""
    key = key_info(tenant)
    answer = save(key, response(), [user_says("Hi")])
    assert asyncio.run(responses_store.delete(key, answer["id"])) is True
    assert load(key, answer["id"]) is None
    recorder.drain_all()
    assert not StoredResponse.objects.exists()
    assert load(key, answer["id"]) is None
    assert asyncio.run(responses_store.delete(key, answer["id"])) is False


def test_a_delete_after_the_drain_removes_the_row(transactional_db, tenant):
    key = key_info(tenant)
    answer = save(key, response(), [user_says("Hi")])
    recorder.drain_all()
    assert asyncio.run(responses_store.delete(key, answer["id"])) is True
    assert not StoredResponse.objects.exists()
    assert load(key, answer["id"]) is None


def test_expired_responses_are_never_served_and_the_retention_job_deletes_them(transactional_db, tenant, settings):
    key = key_info(tenant)
    old = save(key, response(), [user_says("Hi")])
    recorder.drain_all()
    StoredResponse.objects.update(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    drop_redis_copy(key, old["id"])
    assert load(key, old["id"]) is None  # before the job runs
    # A tenant that shortens its retention: older responses stop being served at once.
    fresh = save(key, response(), [user_says("Hi")])
    recorder.drain_all()
    StoredResponse.objects.filter(response_id=fresh["id"]).update(created_at=datetime.now(UTC) - timedelta(days=3))
    tenant.retention_days = 2
    tenant.save()
    shorter = key_info(tenant)
    assert shorter.response_retention_days == 2
    drop_redis_copy(key, fresh["id"])
    assert load(shorter, fresh["id"]) is None
    kept = save(shorter, response(), [user_says("Hi")])
    recorder.drain_all()
    assert retention.cleanup()["stored responses"] == 2
    assert list(StoredResponse.objects.values_list("response_id", flat=True)) == [kept["id"]]
    row = StoredResponse.objects.get()
    assert (row.expires_at - row.created_at).days == 2


def test_history_follows_the_chain_oldest_first_and_a_missing_link_is_openais_400(transactional_db, tenant):
    key = key_info(tenant)
    first = save(key, response("One."), [user_says("Count")])
    recorder.drain_all()
    drop_redis_copy(key, first["id"])  # the oldest link from the database, the rest from Redis
    second = save(key, response("Two."), [user_says("Go on")], first["id"])
    third = save(key, response("Three."), [user_says("More")], second["id"])
    items = asyncio.run(responses_store.history(key, third["id"]))
    texts = [item["content"][0]["text"] for item in items]
    assert texts == ["Count", "One.", "Go on", "Two.", "More", "Three."]
    found = asyncio.run(responses_store.find_items(key, [first["output"][0]["id"], third["output"][0]["id"], "x"]))
    assert found == {first["output"][0]["id"]: first["output"][0], third["output"][0]["id"]: third["output"][0]}
    assert asyncio.run(responses_store.find_items(key_info(tenant, models_allowed=["other"]),
                                                  [first["output"][0]["id"]])) == {}

    asyncio.run(responses_store.delete(key, first["id"]))
    with pytest.raises(GatewayError) as missing:
        asyncio.run(responses_store.history(key, third["id"]))
    error = missing.value
    assert (error.status, error.param, error.code) == (400, "previous_response_id", "previous_response_not_found")
    assert error.message == f"Previous response with id '{first['id']}' not found."


def test_a_chain_that_loops_is_refused_not_followed_forever(transactional_db, tenant):
    key = key_info(tenant)
    a, b = response(), response()
    save(key, a, [user_says("a")], b["id"])
    save(key, b, [user_says("b")], a["id"])
    with pytest.raises(GatewayError) as loop:
        asyncio.run(responses_store.history(key, a["id"]))
    assert loop.value.status == 400 and loop.value.param == "previous_response_id"


def test_a_record_holds_no_header_or_key(transactional_db, tenant):
    row, secret = key_services.issue(tenant, "secret key")
    key = info_for(ApiKey.objects.select_related("tenant").get(pk=row.pk))
    answer = save(key, response(), [user_says("Hi")])
    recorder.drain_all()
    stored = StoredResponse.objects.get()
    raw = str(stored.response) + str(stored.input_items)
    assert secret not in raw and key.prefix not in raw
    assert stored.response == answer


def test_draining_everything_waits_for_what_another_drainer_is_writing(transactional_db, tenant):
    """Another process (a gateway's own drainer, a Celery worker) may have read a record from the
    buffer and not written it yet: "drain everything" returns once it is in the database."""
    key = key_info(tenant)
    answer = save(key, response(), [user_says("Hi")])
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    (stream,) = [s for s in redis_keys.responses_streams() if client.xlen(s)]
    try:
        client.xgroup_create(stream, responses_store.GROUP, id="0", mkstream=True)
    except redis.ResponseError:
        pass
    [(_, entries)] = client.xreadgroup(responses_store.GROUP, "another-drainer", {stream: ">"})

    def the_other_drainer_writes_late():
        time.sleep(0.6)
        responses_store.write([orjson.loads(fields[b"r"]) for _, fields in entries])
        client.xack(stream, responses_store.GROUP, *[i for i, _ in entries])
        client.xdel(stream, *[i for i, _ in entries])

    other = threading.Thread(target=the_other_drainer_writes_late)
    other.start()
    started = time.monotonic()
    recorder.drain_all()
    waited = time.monotonic() - started
    other.join()
    assert StoredResponse.objects.filter(response_id=answer["id"]).exists()
    assert 0.5 < waited < 3


def test_a_tenant_admin_sees_only_their_tenants_stored_responses(transactional_db, tenant, other_tenant, client):
    mine = save(key_info(tenant), response(), [user_says("Hi")])
    theirs = save(key_info(other_tenant), response(), [user_says("Hi")])
    recorder.drain_all()
    client.force_login(user_in(tenant, "admin"))
    listing = client.get("/admin/usage/storedresponse/")
    assert listing.status_code == 200
    assert mine["id"] in listing.content.decode() and theirs["id"] not in listing.content.decode()
    other_row = StoredResponse.objects.get(response_id=theirs["id"])
    assert client.get(f"/admin/usage/storedresponse/{other_row.pk}/change/").status_code == 404
    own_row = StoredResponse.objects.get(response_id=mine["id"])
    assert client.get(f"/admin/usage/storedresponse/{own_row.pk}/change/").status_code == 200
    assert client.post(f"/admin/usage/storedresponse/{own_row.pk}/delete/").status_code == 403


def test_key_info_carries_the_tenants_retention_or_the_default(transactional_db, tenant, settings):
    settings.RESPONSES_RETENTION_DAYS = 30
    assert key_info(tenant).response_retention_days == 30
    tenant.retention_days = 0
    tenant.save()
    assert key_info(tenant).response_retention_days == 1  # at least a day: a follow-up must find its answer


def test_a_conversation_only_in_the_database_comes_back_whole_and_in_order(transactional_db, tenant):
    key = key_info(tenant)
    answers, previous = [], None
    for n in range(5):
        answers.append(save(key, response(f"Answer {n}."), [user_says(f"Question {n}")], previous))
        previous = answers[-1]["id"]
    recorder.drain_all()
    for answer in answers:
        drop_redis_copy(key, answer["id"])
    items = asyncio.run(responses_store.history(key, answers[-1]["id"]))
    assert [item["content"][0]["text"] for item in items] == [
        text for n in range(5) for text in (f"Question {n}", f"Answer {n}.")]
    # A loop among rows (ids reused by hand) is refused too, not followed to the depth limit and served.
    StoredResponse.objects.filter(response_id=answers[0]["id"]).update(previous_response_id=answers[-1]["id"])
    with pytest.raises(GatewayError) as loop:
        asyncio.run(responses_store.history(key, answers[-1]["id"]))
    assert loop.value.param == "previous_response_id"


def test_with_redis_down_the_saving_process_holds_it_and_drains_it_itself(transactional_db, tenant, settings,
                                                                         own_redis):
    from gateway_project.lib import redis_health

    settings.REDIS_URL = own_redis.url
    key = key_info(tenant)
    own_redis.stop()
    try:
        answer = save(key, response(), [user_says("Hi")])  # no error for the client
        assert load(key, answer["id"])["response"] == answer
        assert asyncio.run(responses_store.history(key, answer["id"]))[-1] == answer["output"][0]
    finally:
        own_redis.start()
    assert wait_until(lambda: not redis_health.down, timeout=15)
    recorder.drain_all()
    assert StoredResponse.objects.filter(response_id=answer["id"]).exists()
    assert load(key, answer["id"])["response"] == answer
