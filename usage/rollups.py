"""Usage rolled up per hour and per day by tenant, key, model and provider.

A bucket is always recomputed whole from the usage records and replaced in
one transaction, so re-running the job (or running it on two workers at
once: the unique constraint lets only one write a bucket) never counts a
request twice. Percentiles come from PostgreSQL's percentile_cont; embedded
mode (SQLite) computes them in Python.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import IntegrityError, connection, transaction

from .models import UsageRecord, UsageRollup

NOT_ERRORS = (UsageRecord.Status.OK, UsageRecord.Status.CLIENT_DISCONNECTED, UsageRecord.Status.HEDGE_CANCELLED)
STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}

# A constant query: the table is usage_usagerecord, the three statuses that are not errors are parameters.
_SQL = """
SELECT tenant_id, api_key_id, max(key_prefix), public_model, provider_name, count(*),
       count(*) FILTER (WHERE status NOT IN (%s, %s, %s)),
       sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), sum(cost_usd),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
FROM usage_usagerecord
WHERE created_at >= %s AND created_at < %s
GROUP BY tenant_id, api_key_id, public_model, provider_name
"""


def bucket_start(moment: datetime, granularity: str) -> datetime:
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if granularity == "day" else moment


def _percentile(values: list[int], fraction: float) -> float:
    """percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _groups(start: datetime, end: datetime) -> list[tuple]:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_SQL, [*NOT_ERRORS, start, end])
            return cursor.fetchall()
    groups: dict[tuple, list] = {}
    fields = ("tenant_id", "api_key_id", "key_prefix", "public_model", "provider_name", "status", "prompt_tokens",
              "completion_tokens", "cached_tokens", "cost_usd", "latency_ms")
    for row in UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end).values_list(*fields):
        groups.setdefault((row[0], row[1], row[3], row[4]), []).append(row)
    result = []
    for (tenant, key, model, provider), rows in groups.items():
        latencies = [r[10] for r in rows]
        result.append((tenant, key, max(r[2] for r in rows), model, provider, len(rows),
                       sum(r[5] not in NOT_ERRORS for r in rows), sum(r[6] for r in rows), sum(r[7] for r in rows),
                       sum(r[8] for r in rows), sum((r[9] for r in rows), Decimal(0)),
                       _percentile(latencies, 0.5), _percentile(latencies, 0.95)))
    return result


def rollup(granularity: str, bucket: datetime) -> int:
    """Recompute one bucket; return how many rollup rows it has."""
    bucket = bucket_start(bucket, granularity)
    rows = [UsageRollup(granularity=granularity, bucket=bucket, tenant_id=g[0], api_key_id=g[1], key_prefix=g[2] or "",
                        public_model=g[3], provider_name=g[4], requests=g[5], errors=g[6], prompt_tokens=g[7] or 0,
                        completion_tokens=g[8] or 0, cached_tokens=g[9] or 0, cost_usd=g[10] or 0,
                        latency_p50_ms=round(g[11] or 0), latency_p95_ms=round(g[12] or 0))
            for g in _groups(bucket, bucket + STEP[granularity])]
    try:
        with transaction.atomic():
            UsageRollup.objects.filter(granularity=granularity, bucket=bucket).delete()
            UsageRollup.objects.bulk_create(rows)
    except IntegrityError:
        pass  # another worker wrote the same bucket at the same moment: its rows are the same
    return len(rows)


def rollup_recent(now: datetime | None = None) -> int:
    """The current and the previous hour and day (late events land in the previous one)."""
    now = now or datetime.now(UTC)
    written = 0
    for granularity, step in STEP.items():
        current = bucket_start(now, granularity)
        for bucket in (current - step, current):
            written += rollup(granularity, bucket)
    return written


def rollup_since(since: datetime, granularity: str, now: datetime | None = None) -> int:
    now = now or datetime.now(UTC)
    bucket, written = bucket_start(since, granularity), 0
    while bucket <= now:
        written += rollup(granularity, bucket)
        bucket += STEP[granularity]
    return written
