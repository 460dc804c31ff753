"""Usage rolled up per hour and per day by tenant, key, model and provider.

A bucket is always recomputed whole from the usage records and replaced in
one transaction, so re-running the job never counts a request twice. Two
workers recomputing the same bucket take turns (a PostgreSQL advisory lock
per bucket, held by the transaction), so the later one, which saw at least
as many records, is what stays. Percentiles come from PostgreSQL's
percentile_cont; embedded mode (SQLite) computes them in Python.

Usage records are only ever added, until retention deletes them; rollups
outlive them (ROLLUP_RETENTION_DAYS). So a recomputed bucket never replaces
one that counted more requests: that would be records retention has since
deleted, not requests that never happened.
"""

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncHour

from gateway_project.lib.percentiles import percentile

from .models import UsageRecord, UsageRollup

log = logging.getLogger(__name__)

NOT_ERRORS = (UsageRecord.Status.OK, UsageRecord.Status.CLIENT_DISCONNECTED, UsageRecord.Status.HEDGE_CANCELLED)
STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# The two keys of pg_advisory_xact_lock: one namespace per granularity, the bucket's hour.
_LOCK_NAMESPACE = {"hour": 0x524F4C48, "day": 0x524F4C44}

# A constant query: the table is usage_usagerecord, the three statuses that are not errors are parameters.
_SQL = """
SELECT tenant_id, api_key_id, max(key_prefix), public_model, provider_name, count(*),
       count(*) FILTER (WHERE status NOT IN (%s, %s, %s)),
       sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), sum(cost_usd),
       sum(cache_write_tokens), sum(cache_write_1h_tokens), sum(reasoning_tokens),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms),
       route, count(*) FILTER (WHERE cache_hit), sum(cost_saved_usd)
FROM usage_usagerecord
WHERE created_at >= %s AND created_at < %s
GROUP BY tenant_id, api_key_id, public_model, provider_name, route
"""


def bucket_start(moment: datetime, granularity: str) -> datetime:
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if granularity == "day" else moment


def _groups(start: datetime, end: datetime) -> list[tuple]:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_SQL, [*NOT_ERRORS, start, end])
            return cursor.fetchall()
    groups: dict[tuple, list] = {}
    fields = ("tenant_id", "api_key_id", "key_prefix", "public_model", "provider_name", "status", "prompt_tokens",
              "completion_tokens", "cached_tokens", "cost_usd", "cache_write_tokens", "cache_write_1h_tokens",
              "reasoning_tokens", "latency_ms", "route", "cache_hit", "cost_saved_usd")
    for row in UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end).values_list(*fields):
        groups.setdefault((row[0], row[1], row[3], row[4], row[14]), []).append(row)
    result = []
    for (tenant, key, model, provider, route), rows in groups.items():
        latencies = [r[13] for r in rows]
        result.append((tenant, key, max(r[2] for r in rows), model, provider, len(rows),
                       sum(r[5] not in NOT_ERRORS for r in rows), sum(r[6] for r in rows), sum(r[7] for r in rows),
                       sum(r[8] for r in rows), sum((r[9] for r in rows), Decimal(0)),
                       *(sum(r[i] for r in rows) for i in (10, 11, 12)),
                       percentile(latencies, 0.5), percentile(latencies, 0.95),
                       route, sum(r[15] for r in rows), sum((r[16] for r in rows), Decimal(0))))
    return result


def rollup(granularity: str, bucket: datetime) -> int:
    """Recompute one bucket; return how many rollup rows it has."""
    bucket = bucket_start(bucket, granularity)
    with transaction.atomic():
        _take_turns(granularity, bucket)
        rows = [UsageRollup(granularity=granularity, bucket=bucket, tenant_id=g[0], api_key_id=g[1],
                            key_prefix=g[2] or "", public_model=g[3], provider_name=g[4], requests=g[5],
                            errors=g[6], prompt_tokens=g[7] or 0, completion_tokens=g[8] or 0,
                            cached_tokens=g[9] or 0, cost_usd=g[10] or 0, cache_write_tokens=g[11] or 0,
                            cache_write_1h_tokens=g[12] or 0, reasoning_tokens=g[13] or 0,
                            latency_p50_ms=round(g[14] or 0), latency_p95_ms=round(g[15] or 0),
                            route=g[16] or "", cache_hits=g[17] or 0, cost_saved_usd=g[18] or 0)
                for g in _groups(bucket, bucket + STEP[granularity])]
        existing = UsageRollup.objects.filter(granularity=granularity, bucket=bucket)
        counted = existing.aggregate(n=Sum("requests"))["n"] or 0
        if sum(row.requests for row in rows) < counted:
            log.warning("%s rollup of %s kept: it counts %s requests, the records left only %s (retention)",
                        granularity, bucket, counted, sum(row.requests for row in rows))
            return existing.count()
        existing.delete()
        UsageRollup.objects.bulk_create(rows)
    return len(rows)


def _take_turns(granularity: str, bucket: datetime) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                           [_LOCK_NAMESPACE[granularity], int(bucket.timestamp()) // 3600])


def stale_buckets(since: datetime, until: datetime) -> dict[str, set[datetime]]:
    """Buckets from `since` (a day's start) to `until` holding more records than their rollups count."""
    per_hour = dict(UsageRecord.objects.filter(created_at__gte=since, created_at__lt=until).order_by()
                    .annotate(hour=TruncHour("created_at", tzinfo=UTC)).values("hour")
                    .annotate(n=Count("id")).values_list("hour", "n"))
    per_day: Counter = Counter()
    for hour, n in per_hour.items():
        per_day[bucket_start(hour, "day")] += n
    counted = {"hour": per_hour, "day": per_day}
    stale: dict[str, set[datetime]] = {}
    for granularity in STEP:
        rolled = dict(UsageRollup.objects.filter(granularity=granularity, bucket__gte=since, bucket__lt=until)
                      .order_by().values("bucket").annotate(n=Sum("requests")).values_list("bucket", "n"))
        stale[granularity] = {bucket for bucket, n in counted[granularity].items() if n > rolled.get(bucket, 0)}
    return stale


def rollup_recent(now: datetime | None = None) -> int:
    """Every bucket of the last ROLLUP_LOOKBACK_HOURS that gained records since it was rolled up.

    That is the current hour and day as traffic comes in, and any earlier
    bucket that late events reached (a drain held up by a Redis restart or a
    dead worker) or that no job rolled up (workers down for hours)."""
    now = now or datetime.now(UTC)
    since = bucket_start(now - timedelta(hours=settings.ROLLUP_LOOKBACK_HOURS), "day")
    stale = stale_buckets(since, bucket_start(now, "hour") + STEP["hour"])
    return sum(rollup(granularity, bucket) for granularity in STEP for bucket in sorted(stale[granularity]))


def rollup_since(since: datetime, granularity: str, now: datetime | None = None) -> int:
    now = now or datetime.now(UTC)
    bucket, written = bucket_start(since, granularity), 0
    while bucket <= now:
        written += rollup(granularity, bucket)
        bucket += STEP[granularity]
    return written
