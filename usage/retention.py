"""Retention: usage records, health results, audit entries, rollups, usage dead letters and
stored responses older than their retention are deleted in bounded batches (no long lock, no huge
transaction), per tenant where the tenant sets its own retention.

On PostgreSQL the usage ledger is partitioned by month (usage.partitions): a
month past every tenant's retention is dropped whole first, and only the rows
a shorter retention of some tenant ends inside a month still kept go in batches.
"""

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import Q

from providers.models import HealthCheck
from tenants.models import AuditLog, Tenant

from . import partitions
from .models import StoredResponse, UsageDeadLetter, UsageRecord, UsageRollup


def _delete_in_batches(queryset, batch: int) -> int:
    total = 0
    while True:
        ids = list(queryset.values_list("pk", flat=True)[:batch])
        if not ids:
            return total
        total += queryset.model.objects.filter(pk__in=ids).delete()[0]


def _by_tenant(model, field: str, default_days: int, now: datetime, batch: int) -> int:
    """Delete `model` rows older than each tenant's retention (or the default for the rest)."""
    custom = dict(Tenant.objects.exclude(retention_days=None).values_list("id", "retention_days"))
    deleted = 0
    for tenant_id, days in custom.items():
        deleted += _delete_in_batches(model.objects.filter(
            tenant_id=tenant_id, **{f"{field}__lt": now - timedelta(days=days)}), batch)
    others = model.objects.filter(**{f"{field}__lt": now - timedelta(days=default_days)})
    others = others.filter(~Q(tenant_id__in=list(custom)) | Q(tenant_id=None)) if custom else others
    return deleted + _delete_in_batches(others, batch)


def drop_expired_partitions(now: datetime) -> list[str]:
    """The ledger's months that no tenant's retention still reaches, dropped whole."""
    longest = max([settings.USAGE_RETENTION_DAYS, *Tenant.objects.exclude(retention_days=None)
                   .values_list("retention_days", flat=True)])
    return partitions.drop_before(now - timedelta(days=longest))


def cleanup(now: datetime | None = None) -> dict[str, int]:
    now = now or datetime.now(UTC)
    batch = settings.RETENTION_BATCH
    return {
        "usage partitions": len(drop_expired_partitions(now)),
        "usage records": _by_tenant(UsageRecord, "created_at", settings.USAGE_RETENTION_DAYS, now, batch),
        "audit entries": _by_tenant(AuditLog, "created_at", settings.AUDIT_RETENTION_DAYS, now, batch),
        "health checks": _delete_in_batches(HealthCheck.objects.filter(
            checked_at__lt=now - timedelta(days=settings.HEALTH_RETENTION_DAYS)), batch),
        "rollups": _delete_in_batches(UsageRollup.objects.filter(
            bucket__lt=now - timedelta(days=settings.ROLLUP_RETENTION_DAYS)), batch),
        "usage dead letters": _delete_in_batches(UsageDeadLetter.objects.filter(
            created_at__lt=now - timedelta(days=settings.USAGE_DEAD_LETTER_RETENTION_DAYS)), batch),
        # Past the expiry set when stored, or past the tenant's retention should it have shortened since.
        "stored responses": _delete_in_batches(StoredResponse.objects.filter(expires_at__lte=now), batch)
        + _by_tenant(StoredResponse, "created_at", settings.RESPONSES_RETENTION_DAYS, now, batch),
    }
