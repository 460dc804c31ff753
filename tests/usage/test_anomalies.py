"""Spend anomalies on generated usage: a planted spike (one key at 10x for two hours) is flagged in
one run of the job, a slow drift is not, nor a quiet key's single call; the owners, admins and staff
are mailed once on a real SMTP server; acknowledged and muted anomalies stay quiet; the metric counts
it; the dashboard lists it, for its own tenant only."""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from django.contrib.auth import get_user_model
from django_celery_beat.models import PeriodicTask

from gateway_project.lib.metrics import COUNTERS_KEY
from gateway_project.lib.redis_pool import sync_redis
from keys import services as key_services
from tests.conftest import user_in
from usage import anomalies, rollups, tasks
from usage.models import AnomalyMute, SpendAnomaly, UsageRecord

HOUR = timedelta(hours=1)
METRIC = orjson.dumps(["gateway_spend_anomalies_total", "spend"])


def calls(key, hour: datetime, n: int, cost: str) -> list[UsageRecord]:
    return [UsageRecord(request_id=f"req_{uuid.uuid4().hex}", created_at=hour + timedelta(seconds=20 * i + 1),
                        tenant_id=key.tenant_id, api_key=key, key_prefix=key.prefix, endpoint="chat.completions",
                        public_model="gpt-big", provider_name="openai", prompt_tokens=100, completion_tokens=50,
                        total_tokens=150, cost_usd=Decimal(cost)) for i in range(n)]


@pytest.fixture()
def usage(tenant, other_tenant, settings):
    """Three closed hours of today and the same hours of the 14 days before, rolled up as the rollup
    job would have; then today's spike (key "busy" at 10x in the last two hours), not yet rolled up."""
    settings.ANOMALY_LOOKBACK_HOURS = 3
    settings.ROLLUP_LOOKBACK_HOURS = 16 * 24
    keys = {name: key_services.issue(tenant, name)[0] for name in ("busy", "drifting", "quiet")}
    keys["globex"] = key_services.issue(other_tenant, "globex")[0]
    now = datetime.now(UTC)
    current = rollups.bucket_start(now, "hour")
    hours = [current - HOUR * i for i in (3, 2, 1)]
    rows = []
    for day in range(15):  # day 0 is today
        for hour in hours:
            at = hour - timedelta(days=day)
            rows += calls(keys["busy"], at, 12, "0.25")  # $3 an hour, every day
            rows += calls(keys["drifting"], at, 26 - day, "0.25")  # one more call each day: +4% to +8% a day
            rows += calls(keys["globex"], at, 12, "0.25")
    rows += calls(keys["quiet"], hours[2], 1, "3.00")  # one dear call, the key's first
    UsageRecord.objects.bulk_create(rows)
    rollups.rollup_recent(now)
    # The spike: 108 more calls in each of the last two hours, $30 an hour with the usual 12.
    UsageRecord.objects.bulk_create(calls(keys["busy"], hours[1], 108, "0.25") + calls(keys["busy"], hours[2], 108,
                                                                                         "0.25"))
    return keys, hours


@pytest.fixture()
def people(tenant, other_tenant):
    users = {role: user_in(tenant, role, email=f"{role}@acme.test") for role in ("owner", "admin", "member")}
    users["globex"] = user_in(other_tenant, "owner", name="globex-owner", email="owner@globex.test")
    users["staff"] = get_user_model().objects.create_superuser("staff", "staff@example.com", "x")
    return users


def metric() -> float:
    return float(sync_redis().hget(COUNTERS_KEY, METRIC) or 0)


def test_a_spike_is_flagged_in_one_run_and_a_drift_and_a_single_call_are_not(usage, people, smtp):
    keys, hours = usage
    counted = metric()
    assert tasks.detect_anomalies() == 1  # the Celery task, run once
    [anomaly] = SpendAnomaly.objects.all()
    assert (anomaly.api_key_id, anomaly.public_model, anomaly.started_at, anomaly.last_hour, anomaly.hours) == (
        keys["busy"].id, "gpt-big", hours[1], hours[2], 2)
    assert anomaly.metrics == "spend, requests" and anomaly.status == "open"
    assert (anomaly.spend_usd, anomaly.baseline_spend_usd, anomaly.requests, anomaly.baseline_requests) == (
        Decimal("30"), Decimal("3"), 120, 12)
    assert metric() == counted + 1

    # One email to the tenant's owner and admin, one to staff; nobody else, nothing of it twice.
    assert sorted(sorted(to) for to, _ in smtp.messages) == [["admin@acme.test", "owner@acme.test"],
                                                             ["staff@example.com"]]
    message = smtp.messages[0][1]
    assert message["subject"].strip() == f"[Acme] Spend anomaly: key {keys['busy'].prefix}… on gpt-big"
    body = message.get_content()
    assert f"Key {keys['busy'].prefix}… spent $30.00 on gpt-big in the hour from {hours[2]:%Y-%m-%d %H}:00 UTC" in body
    assert "10.0x the median of $3.00 for that hour over the 14 days before; 120 requests (median 12)" in body
    assert f"/admin/usage/spendanomaly/{anomaly.pk}/change/" in body

    assert tasks.detect_anomalies() == 0  # the next run (or a second worker) adds nothing, mails nothing
    assert SpendAnomaly.objects.count() == 1 and len(smtp.messages) == 2 and metric() == counted + 1


def test_acknowledged_and_muted_anomalies_stay_quiet(usage, people, smtp, client):
    keys, hours = usage
    rollups.rollup("hour", hours[1])
    rollups.rollup("hour", hours[2])
    [anomaly] = anomalies.check_hour(hours[1], datetime.now(UTC))  # the spike's first hour, not yet mailed
    client.force_login(people["admin"])
    response = client.post("/admin/usage/spendanomaly/", {"action": "acknowledge", "_selected_action": [anomaly.pk]})
    assert response.status_code == 302
    anomaly.refresh_from_db()
    assert anomaly.status == "acknowledged" and anomaly.acknowledged_by == people["admin"]
    # The spike goes on: the same run, still acknowledged, never mailed.
    assert anomalies.check_hour(hours[2], datetime.now(UTC)) == []
    assert tasks.detect_anomalies() == 0
    anomaly.refresh_from_db()
    assert (anomaly.hours, anomaly.status, anomaly.notified_at) == (2, "acknowledged", None)
    assert smtp.messages == []

    # Another tenant's owner cannot see it, nor acknowledge it.
    client.force_login(people["globex"])
    assert client.get(f"/admin/usage/spendanomaly/{anomaly.pk}/change/").status_code == 404
    assert anomaly.tenant.name not in client.get("/admin/usage/spendanomaly/").content.decode()

    # Muted from the admin: the key's next spike is not looked for; unmuted, it is.
    client.force_login(people["owner"])
    client.post("/admin/usage/spendanomaly/", {"action": "mute_keys", "_selected_action": [anomaly.pk]})
    assert AnomalyMute.objects.get().api_key_id == keys["busy"].id
    SpendAnomaly.objects.all().delete()
    assert tasks.detect_anomalies() == 0 and smtp.messages == []
    AnomalyMute.objects.all().delete()
    assert tasks.detect_anomalies() == 1 and len(smtp.messages) == 2


def test_the_dashboard_lists_open_anomalies_of_its_own_tenant(usage, people, client):
    tasks.detect_anomalies()
    client.force_login(people["admin"])
    listed = client.get("/admin/dashboard/data").json()["anomalies"]
    assert [(a["key"], a["model"], a["spend_usd"], a["hours"]) for a in listed] == [
        (usage[0]["busy"].prefix, "gpt-big", "30.000000", 2)]
    for who in ("globex", "member"):  # another tenant's owner; a member, who sees no anomalies
        client.force_login(people[who])
        assert client.get("/admin/dashboard/data").json()["anomalies"] == []
    SpendAnomaly.objects.update(status="acknowledged")
    client.force_login(people["staff"])
    assert client.get("/admin/dashboard/data").json()["anomalies"] == []


def test_the_detector_is_scheduled_with_the_other_jobs(db):
    job = PeriodicTask.objects.get(name="usage: spend anomalies of the last hours")
    assert job.task == "usage.tasks.detect_anomalies" and job.enabled
    assert job.crontab.minute == "5,20,35,50" and job.crontab.hour == "*"


def test_the_median_and_mad_judge_an_hour():
    steady = [3.0] * 14
    assert anomalies.judge(30, steady, 1).anomalous
    assert not anomalies.judge(3.3, steady, 1).anomalous  # the spread floor: 10% of the median
    assert not anomalies.judge(0.9, [0.0] * 14, 1).anomalous  # below the minimum volume
    noisy = [1.0, 9.0] * 7  # median 5, MAD 4: 30 is 4.2 spreads above, not 6
    assert not anomalies.judge(30, noisy, 1).anomalous and anomalies.judge(45, noisy, 1).anomalous
