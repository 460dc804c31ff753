"""Usage rollups per hour and day: exact sums and percentiles, never a request
counted twice however often or however many workers run them at once, late
events and missed hours caught up, nothing lost to retention, and the same
numbers from PostgreSQL and from SQLite (embedded mode)."""

import json
import os
import random
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Sum

from keys import services as key_services
from tenants.models import Tenant
from tests.conftest import ROOT
from tests.usage.test_jobs import record
from usage import retention, rollups
from usage.models import UsageRecord, UsageRollup
from usage.tasks import rollup_usage

TOTALS = {"requests": Count("id"), "prompt_tokens": Sum("prompt_tokens"),
          "completion_tokens": Sum("completion_tokens"), "cached_tokens": Sum("cached_tokens"),
          "cache_write_tokens": Sum("cache_write_tokens"), "cache_write_1h_tokens": Sum("cache_write_1h_tokens"),
          "reasoning_tokens": Sum("reasoning_tokens"), "cost_usd": Sum("cost_usd")}


def rolled_up(granularity: str, **filters) -> dict:
    rows = UsageRollup.objects.filter(granularity=granularity, **filters)
    return {name: rows.aggregate(n=Sum(name))["n"] for name in TOTALS}


def recorded(**filters) -> dict:
    return UsageRecord.objects.filter(**filters).aggregate(**TOTALS)


def test_sums_errors_and_percentiles_per_tenant_key_model_and_provider(transactional_db, tenant, admin_client):
    key_a, _ = key_services.issue(tenant, "a")
    key_b, _ = key_services.issue(tenant, "b")
    hour = datetime(2026, 11, 20, 14, tzinfo=UTC)
    latencies = list(range(10, 510, 10))  # 50 values
    for i, latency in enumerate(latencies):
        record(tenant, key_a if i % 2 else key_b, hour + timedelta(seconds=i * 60), latency=latency,
               cost="0.000123456789", status="ok" if i % 10 else "upstream_error",
               model="gpt-test" if i < 40 else "embed-test", cached_tokens=i % 3, cache_write_tokens=4,
               cache_write_1h_tokens=i % 2, reasoning_tokens=i % 5)
    record(tenant, key_a, hour + timedelta(hours=1))  # the next hour: not in this bucket
    assert rollups.rollup("hour", hour) == 4 and rollups.rollup("day", hour) == 4

    hourly = UsageRollup.objects.filter(granularity="hour", bucket=hour)
    assert hourly.count() == 4  # 2 keys x 2 models
    assert sum(r.requests for r in hourly) == 50 and sum(r.errors for r in hourly) == 5
    assert sum(r.cost_usd for r in hourly) == Decimal("0.000123456789") * 50
    assert sum(r.prompt_tokens for r in hourly) == 500
    assert (sum(r.cache_write_tokens for r in hourly), sum(r.cache_write_1h_tokens for r in hourly)) == (200, 25)
    assert sum(r.reasoning_tokens for r in hourly) == sum(i % 5 for i in range(50))
    day = UsageRollup.objects.filter(granularity="day", bucket=hour.replace(hour=0))
    assert sum(r.requests for r in day) == 51
    # percentile_cont over one group: key_b's gpt-test calls (even i < 40: latencies 10, 30, ..., 390).
    group = hourly.get(api_key=key_b, public_model="gpt-test")
    assert (group.latency_p50_ms, group.latency_p95_ms) == (200, 371)  # 371 = 370 + 0.05 * 20, interpolated
    page = admin_client.get("/admin/usage/usagerollup/?granularity__exact=hour").content.decode()
    assert page.count("embed-test") >= 2 and "371" in page


def test_racing_workers_and_reruns_never_count_a_request_twice(transactional_db, tenant):
    keys = [key_services.issue(tenant, name)[0] for name in ("a", "b", "c")] + [None]
    now = datetime.now(UTC)
    rng = random.Random(6)

    def add_records(count: int) -> None:
        for _ in range(count):
            record(tenant, rng.choice(keys), now - timedelta(minutes=rng.randrange(0, 90)),
                   model=rng.choice(["gpt-test", "embed-test"]), provider=rng.choice(["openai", "azure"]),
                   prompt=rng.randrange(1, 500), completion=rng.randrange(0, 500),
                   cost=f"0.{rng.randrange(10**11, 10**12)}", latency=rng.randrange(5, 3000))

    add_records(300)
    start = threading.Barrier(7)
    failures: list[BaseException] = []

    def race(job) -> None:
        try:
            start.wait()
            for _ in range(3):
                job()
        except BaseException as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)
        finally:
            connection.close()

    # Three workers run the task (one Redis lock between them), three run the
    # rollup itself with no lock at all, while records keep arriving.
    jobs = [rollup_usage.apply] * 3 + [rollups.rollup_recent] * 3 + [lambda: add_records(100)]
    threads = [threading.Thread(target=race, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    rollups.rollup_recent()  # the next scheduled run after the last record

    # (Filtered by tenant: a gateway left running by another test may still be writing its usage.)
    total = recorded(tenant=tenant)
    assert total["requests"] == 600
    assert rolled_up("hour", tenant=tenant) == total and rolled_up("day", tenant=tenant) == total
    for key in keys:
        assert rolled_up("hour", tenant=tenant, api_key=key) == recorded(tenant=tenant, api_key=key)


def test_late_events_and_hours_no_job_rolled_up_are_caught_up(transactional_db, tenant):
    now = datetime.now(UTC)
    five_hours_ago, yesterday = now - timedelta(hours=5), now - timedelta(hours=30)
    record(tenant, None, five_hours_ago)
    for _ in range(3):
        record(tenant, None, yesterday)
    rollups.rollup_recent()  # the workers come back after a day away
    assert rolled_up("hour", tenant=tenant, bucket=rollups.bucket_start(five_hours_ago, "hour"))["requests"] == 1
    assert rolled_up("hour", tenant=tenant, bucket=rollups.bucket_start(yesterday, "hour"))["requests"] == 3

    # An event of five hours ago written only now (its drain was held up by a Redis restart).
    record(tenant, None, five_hours_ago, cost="0.5")
    rollups.rollup_recent()
    assert rolled_up("hour", tenant=tenant, bucket=rollups.bucket_start(five_hours_ago, "hour"))["requests"] == 2
    assert rolled_up("day", tenant=tenant) == recorded(tenant=tenant)

    # Beyond ROLLUP_LOOKBACK_HOURS the job does not look; the backfill command does.
    last_week = now - timedelta(days=7)
    record(tenant, None, last_week)
    rollups.rollup_recent()
    assert not UsageRollup.objects.filter(bucket__lt=now - timedelta(days=3)).exists()
    call_command("rollup_usage", since=(last_week - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    assert rolled_up("hour", tenant=tenant) == recorded(tenant=tenant) == rolled_up("day", tenant=tenant)


def test_rollups_outlive_the_records_retention_deletes(transactional_db, tenant, settings):
    tenant.retention_days = 2
    tenant.save()
    three_days_ago = datetime.now(UTC) - timedelta(days=3)
    for _ in range(5):
        record(tenant, None, three_days_ago, cost="0.25")
    call_command("rollup_usage", since=three_days_ago.strftime("%Y-%m-%d"))
    assert retention.cleanup()["usage records"] == 5
    # Re-running the backfill (or the job) over those buckets keeps what they counted.
    call_command("rollup_usage", since=three_days_ago.strftime("%Y-%m-%d"))
    rollups.rollup_recent()
    assert rolled_up("hour", tenant=tenant)["requests"] == 5
    assert rolled_up("day", tenant=tenant)["cost_usd"] == Decimal("1.25")


def scenario() -> dict:
    """Records of two tenants across midnight, rolled up; the rows as plain values.

    Run here on PostgreSQL and in a subprocess on SQLite (embedded mode)."""
    rng = random.Random(42)
    tenants = [Tenant.objects.create(name=name, slug=name) for name in ("red", "blue")]
    keys = [key_services.issue(t, f"{t.slug}-{i}")[0] for t in tenants for i in range(2)] + [None]
    midnight = datetime(2026, 11, 21, tzinfo=UTC)
    for _ in range(120):
        key = rng.choice(keys)
        UsageRecord.objects.create(
            request_id=f"req_{uuid.uuid4().hex}", created_at=midnight + timedelta(minutes=rng.randrange(-90, 90)),
            tenant=key.tenant if key else tenants[1], api_key=key, key_prefix=key.prefix if key else "",
            provider_name=rng.choice(["openai", "anthropic"]), endpoint="chat.completions",
            public_model=rng.choice(["gpt-test", "claude"]), prompt_tokens=rng.randrange(0, 900),
            completion_tokens=rng.randrange(0, 900), cached_tokens=rng.randrange(0, 50),
            cache_write_tokens=rng.randrange(20, 40), cache_write_1h_tokens=rng.randrange(0, 20),
            reasoning_tokens=rng.randrange(0, 30),
            cost_usd=Decimal(rng.randrange(0, 10**9)) / 10**12, latency_ms=rng.randrange(1, 5000),
            status=rng.choice(["ok", "ok", "ok", "upstream_error", "client_disconnected", "stream_cut"]))
    for granularity in rollups.STEP:
        rollups.rollup_since(midnight - timedelta(days=1), granularity, now=midnight + timedelta(hours=2))
    rows = [[r.granularity, r.bucket.isoformat(), r.tenant.slug, r.api_key.name if r.api_key else None,
             r.public_model, r.provider_name, r.requests, r.errors, r.prompt_tokens, r.completion_tokens,
             r.cached_tokens, r.cache_write_tokens, r.cache_write_1h_tokens, r.reasoning_tokens,
             str(r.cost_usd.normalize()), r.latency_p50_ms, r.latency_p95_ms]
            for r in UsageRollup.objects.select_related("tenant", "api_key")]
    return {"rows": sorted(rows, key=lambda row: [str(value) for value in row]),
            "keyless rows unique": _refused(UsageRollup.objects.filter(api_key=None).first())}


def _refused(row: UsageRollup) -> bool:
    """Whether the database refuses a second copy of this rollup row."""
    row.pk = None
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError:
        return True
    return False


def test_sqlite_and_postgresql_roll_up_the_same(transactional_db, tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "REDIS_URL": "",
           "CELERY_BROKER_URL": "memory://", "GATEWAY_DATA_DIR": str(tmp_path),
           "DJANGO_SETTINGS_MODULE": "gateway_project.settings"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
    embedded = subprocess.run(
        [sys.executable, "-c", "import django, json; django.setup(); from tests.usage.test_rollups import scenario; "
                               "print(json.dumps(scenario()))"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert embedded.returncode == 0, embedded.stderr
    on_sqlite = json.loads(embedded.stdout.splitlines()[-1])
    on_postgresql = scenario()
    assert connection.vendor == "postgresql"
    rows = on_postgresql["rows"]
    assert len(rows) > 30 and sum(row[6] for row in rows) == 240  # hours and days: 120 requests each
    assert on_postgresql["keyless rows unique"]
    assert on_sqlite == on_postgresql
