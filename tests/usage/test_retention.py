"""Retention: usage records, audit entries, health checks and rollups past their
retention (a tenant's own, else the global one) deleted in bounded batches."""

import io
import re
from datetime import UTC, datetime, timedelta

from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from providers.models import HealthCheck
from tenants import audit
from tenants.models import AuditLog, Tenant
from tests.conftest import make_provider
from tests.usage.test_jobs import record
from usage import retention
from usage.models import UsageDeadLetter, UsageRecord, UsageRollup

NOTHING = {"usage partitions": 0, "usage records": 0, "audit entries": 0, "health checks": 0, "rollups": 0, "usage dead letters": 0,
           "stored responses": 0}


def audit_entry(tenant, age: timedelta) -> None:
    entry = audit.record("test", tenant_id=tenant.pk if tenant is not None else None)
    AuditLog.objects.filter(pk=entry.pk).update(created_at=datetime.now(UTC) - age)


def test_each_kind_goes_after_its_own_or_its_tenants_retention(transactional_db, tenant, other_tenant, settings):
    settings.USAGE_RETENTION_DAYS, settings.AUDIT_RETENTION_DAYS = 30, 60
    settings.HEALTH_RETENTION_DAYS, settings.ROLLUP_RETENTION_DAYS = 14, 400
    settings.USAGE_DEAD_LETTER_RETENTION_DAYS = 30
    tenant.retention_days = 7  # shorter than the global retention
    tenant.save()
    patient = Tenant.objects.create(name="Initech", slug="initech", retention_days=90)  # longer
    now = datetime.now(UTC)
    for days, count in ((1, 2), (10, 4), (40, 5), (100, 1)):
        for owner in (tenant, other_tenant, patient):
            for _ in range(count):
                record(owner, None, now - timedelta(days=days))
    for days in (10, 90):
        for owner in (tenant, other_tenant, None):
            audit_entry(owner, timedelta(days=days))
    provider = make_provider("openai", "http://127.0.0.1:9", name="old")
    for days in (20, 1):
        HealthCheck.objects.create(provider=provider, checked_at=now - timedelta(days=days), ok=True)
    for days in (500, 300):
        UsageRollup.objects.create(granularity="day", bucket=now - timedelta(days=days), tenant=tenant,
                                   public_model="gpt-test", requests=1)
    for days in (31, 29):
        letter = UsageDeadLetter.objects.create(request_id=f"req-{days}", reason="refused", event="{}")
        UsageDeadLetter.objects.filter(pk=letter.pk).update(created_at=now - timedelta(days=days))

    # The months before this one have no partition here (the default partition holds their rows),
    # so every row goes in batches, counted.
    assert retention.cleanup() == {"usage partitions": 0, "usage records": (4 + 5 + 1) + (5 + 1) + 1, "audit entries": 2 + 1 + 1,
                                   "health checks": 1, "rollups": 1, "usage dead letters": 1,
                                   "stored responses": 0}
    assert UsageDeadLetter.objects.get().request_id == "req-29"
    assert UsageRecord.objects.filter(tenant=tenant).count() == 2  # its own 7 days
    assert UsageRecord.objects.filter(tenant=other_tenant).count() == 2 + 4  # the global 30 days
    assert UsageRecord.objects.filter(tenant=patient).count() == 2 + 4 + 5  # its own 90 days
    assert AuditLog.objects.filter(tenant=tenant).count() == 0  # 10 days old, past its 7
    assert AuditLog.objects.filter(tenant=other_tenant).count() == 1
    assert AuditLog.objects.filter(tenant=None).count() == 1  # no tenant: the global 60 days
    assert list(HealthCheck.objects.values_list("checked_at__date", flat=True)) == [(now - timedelta(days=1)).date()]
    assert UsageRollup.objects.get().bucket.date() == (now - timedelta(days=300)).date()
    assert retention.cleanup() == NOTHING  # run again, or on a second worker: nothing more


def test_deletes_in_batches_of_retention_batch_rows(transactional_db, tenant, settings):
    settings.RETENTION_BATCH = 40
    old = datetime.now(UTC) - timedelta(days=settings.USAGE_RETENTION_DAYS + 1)
    for _ in range(250):
        record(tenant, None, old)
    record(tenant, None, datetime.now(UTC))

    with CaptureQueriesContext(connection) as queries:
        out = io.StringIO()
        call_command("cleanup_retention", stdout=out)
    assert "250 usage records deleted" in out.getvalue()
    deletes = [q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "usage_usagerecord"')]
    rows_per_statement = [len(re.search(r"IN \(([^)]*)\)", sql).group(1).split(",")) for sql in deletes]
    assert rows_per_statement == [40] * 6 + [10]  # never more than a batch per statement
    assert UsageRecord.objects.filter(tenant=tenant).count() == 1
