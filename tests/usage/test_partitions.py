"""The usage ledger's monthly partitions on the real PostgreSQL (usage.partitions): created ahead by
the job, a row of any time accepted, a call billed once across them, whole months dropped by
retention once no tenant keeps them, and the ledger bench's smoke."""

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from tests.conftest import ROOT
from tests.usage.test_jobs import record
from usage import partitions, recorder, retention, tasks
from usage.models import UsageRecord

pytestmark = pytest.mark.skipif(os.environ.get("DATABASE_URL", "").startswith("sqlite"),
                                reason="partitions are PostgreSQL's; embedded mode is tests/gateway_project")


@pytest.fixture(autouse=True)
def _months_made_here_go(transactional_db):
    """Partitions are schema, which the flush between tests keeps: those a test made go after it."""
    before = set(partitions.existing().values())
    yield
    with connection.cursor() as cursor:
        for name in set(partitions.existing().values()) - before:
            cursor.execute(f"DROP TABLE {name}")


def months_from_now(n: int) -> datetime:
    month = partitions.month_of(datetime.now(UTC))
    for _ in range(n):
        month = partitions.next_month(month)
    return datetime(month.year, month.month, 15, tzinfo=UTC)


def holder(request_id: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM usage_usagerecord WHERE request_id = %s", [request_id])
        return cursor.fetchone()[0]


def event(tenant, ts: float, **fields) -> dict:
    return {"request_id": f"req_{uuid.uuid4().hex}", "ts": ts, "tenant_id": tenant.id, "api_key_id": None,
            "key_prefix": "", "provider_id": None, "provider_name": "mock", "deployment_id": None,
            "endpoint": "chat.completions", "public_model": "gpt-test", "prompt_tokens": 3, "completion_tokens": 4,
            "total_tokens": 7, "cost_usd": "0.000123456789", "status": "ok", **fields}


def test_the_job_creates_this_month_and_the_months_ahead(transactional_db, settings):
    settings.USAGE_PARTITIONS_AHEAD = 5
    tasks.create_usage_partitions()
    have = partitions.existing()
    for n in range(6):
        assert partitions.month_of(months_from_now(n)) in have
    assert tasks.create_usage_partitions() == 0  # run again, or on a second worker: nothing more


def test_a_row_of_any_time_is_kept_and_moves_into_its_month_when_created(transactional_db, tenant):
    long_ago = datetime(2019, 5, 7, 12, tzinfo=UTC)
    old = record(tenant, None, long_ago)
    assert holder(old.request_id) == partitions.DEFAULT  # no month holds it: not refused
    assert partitions.ensure(first=long_ago, last=long_ago)[0] == "usage_usagerecord_p201905"
    assert holder(old.request_id) == "usage_usagerecord_p201905"
    assert UsageRecord.objects.get(request_id=old.request_id).created_at == long_ago


def test_an_event_written_twice_is_billed_once(transactional_db, tenant):
    partitions.ensure()
    now = time.time()
    first, second = event(tenant, now), event(tenant, now - 86400 * 40)
    recorder.write([first, second])
    # Its drainer died before acknowledging: the batch comes again, with a new event in it.
    third = event(tenant, now, guardrails={"checks": [{"check": "pii", "action": "redacted"}]})
    recorder.write([second, third, first])
    recorder.write([third])
    rows = UsageRecord.objects.filter(tenant=tenant)
    assert sorted(rows.values_list("request_id", flat=True)) == sorted(e["request_id"] for e in (first, second, third))
    assert str(rows.get(request_id=first["request_id"]).cost_usd) == "0.000123456789"
    assert rows.get(request_id=third["request_id"]).guardrails == third["guardrails"]


def test_retention_drops_whole_months_no_tenant_keeps(transactional_db, tenant, other_tenant, settings):
    settings.USAGE_RETENTION_DAYS = 400
    now = datetime.now(UTC)
    very_old, old = now - timedelta(days=560), now - timedelta(days=460)
    partitions.ensure(first=very_old)
    for when in (very_old, old, now):
        record(tenant, None, when)
    other_tenant.retention_days = 500  # keeps the month of `old`, not the one of `very_old`
    other_tenant.save()

    result = retention.cleanup(now)
    assert partitions.name_of(partitions.month_of(very_old)) not in partitions.existing().values()
    assert partitions.month_of(old) in partitions.existing()
    assert result["usage partitions"] >= 1
    assert result["usage records"] == 1  # `old`, past the global 400 days, deleted alone
    assert list(UsageRecord.objects.values_list("created_at", flat=True)) == [now]


def test_the_truncating_flush_empties_every_partition(transactional_db, tenant):
    partitions.ensure(first=datetime(2020, 1, 1, tzinfo=UTC))
    record(tenant, None, datetime(2020, 1, 2, tzinfo=UTC))
    record(tenant, None, datetime(2018, 1, 2, tzinfo=UTC))  # the default partition
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE usage_usagerecord")
    assert not UsageRecord.objects.exists()


def test_ledger_bench_smoke():
    """bench/ledger.py end to end on a few thousand records (its own database, dropped after)."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    base = f"postgres://{db['USER']}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}_smoke"
    out = subprocess.run([sys.executable, "bench/ledger.py", "--records", "6000", "--days", "70", "--tenants", "3",
                          "--samples", "2", "--drain-events", "500"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "DATABASE_URL": base,
                                                    # a Redis db of its own: the suite's gateways drain the suite's
                                                    "BENCH_REDIS_URL": settings.REDIS_URL.rsplit("/", 1)[0] + "/14"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| dashboard, 30 days, staff, one tenant |" in out.stdout
    assert "| drop the oldest month (usage_usagerecord_p" in out.stdout
    assert " records/s |" in out.stdout
