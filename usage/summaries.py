"""Sums of usage over a time range, at a cost that does not grow with the ledger.

A range is cut into whole UTC days that daily rollups cover, whole hours that
hourly rollups cover, and the rest, read from the usage records themselves:
the range's ragged edges, the current hour, and any hour no rollup job has
covered yet. A bucket is covered when its rollup was recomputed after the
bucket had closed (usage.rollups recomputes a bucket whole, so every group of
it then counts every record the bucket held); an hour without traffic has no
rollup and costs the records query nothing. So the records read are a few
hours' worth whatever the range, and the rollups read are one row per group
per day (per hour for hourly charts).

Counts, tokens and money are exact either way (money as Decimal). Latency
percentiles are exact over records; over rolled-up buckets they are the
request-weighted mean of each bucket's and group's own percentile (exact for
one group in one hour, an approximation over several).

A late event (a drain held up for hours) reaches a covered bucket's records
before its rollup is recomputed, by the next rollup job within
ROLLUP_LOOKBACK_HOURS; until then the sums leave it out.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import Aggregate, Count, F, FloatField, Min, Q, Sum

from gateway_project.lib.percentiles import percentile

from .models import UsageRollup
from .rollups import NOT_ERRORS, STEP, bucket_start

RECORD_SUMS = {
    "requests": Count("id"),
    "errors": Count("id", filter=~Q(status__in=NOT_ERRORS)),
    "prompt_tokens": Sum("prompt_tokens"),
    "completion_tokens": Sum("completion_tokens"),
    "cached_tokens": Sum("cached_tokens"),
    "cache_write_tokens": Sum("cache_write_tokens"),
    "reasoning_tokens": Sum("reasoning_tokens"),
    "cost_usd": Sum("cost_usd"),
    "cache_hits": Count("id", filter=Q(cache_hit=True)),
    "cost_saved_usd": Sum("cost_saved_usd"),
}
# Named apart from the rollup's own fields (an aggregate may not shadow the field it sums).
ROLLUP_SUMS = {f"sum_{name}": Sum(name) for name in RECORD_SUMS}
_WEIGHTED = {"p50": Sum(F("latency_p50_ms") * F("requests")), "p95": Sum(F("latency_p95_ms") * F("requests"))}


class PercentileCont(Aggregate):
    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), **extra)


@dataclass(frozen=True)
class Split:
    """Where a range's usage is read from: rollup rows (`rollups`) and record ranges (`records`)."""

    rollups: Q
    records: Q
    ranges: list[tuple[datetime, datetime]]  # what `records` reads


def _covered(granularity: str, start: datetime, end: datetime) -> list[datetime]:
    """The buckets of `granularity` from `start` to `end` (bucket starts) rolled up after they closed."""
    if end <= start:
        return []
    rows = (UsageRollup.objects.filter(granularity=granularity, bucket__gte=start, bucket__lt=end).order_by()
            .values("bucket").annotate(computed=Min("updated_at")).values_list("bucket", "computed"))
    return sorted(bucket for bucket, computed in rows if computed >= bucket + STEP[granularity])


def _ceil(moment: datetime, granularity: str) -> datetime:
    start = bucket_start(moment, granularity)
    return start if start == moment else start + STEP[granularity]


def _gaps(start: datetime, end: datetime, buckets: list[datetime], step: timedelta) -> list[tuple[datetime, datetime]]:
    """The parts of [start, end) that no bucket of `buckets` (each `step` long, sorted) covers."""
    gaps, moment = [], start
    for bucket in buckets:
        if bucket > moment:
            gaps.append((moment, bucket))
        moment = max(moment, bucket + step)
    if moment < end:
        gaps.append((moment, end))
    return gaps


def split(start: datetime, end: datetime, coarsest: str | None = "day") -> Split:
    """Cut [start, end) into covered rollup buckets no coarser than `coarsest` ("day", "hour"; None:
    none) and the record ranges left."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    days = _covered("day", _ceil(start, "day"), bucket_start(end, "day")) if coarsest == "day" else []
    hours, rest = [], []
    for low, high in _gaps(start, end, days, STEP["day"]):
        covered = _covered("hour", _ceil(low, "hour"), bucket_start(high, "hour")) if coarsest else []
        hours += covered
        rest += _gaps(low, high, covered, STEP["hour"])
    rollups = Q(granularity="day", bucket__in=days) | Q(granularity="hour", bucket__in=hours)
    records = Q()
    for low, high in rest:
        records |= Q(created_at__gte=low, created_at__lt=high)
    return Split(rollups=rollups if days or hours else Q(pk__in=[]),
                 records=records if rest else Q(pk__in=[]), ranges=rest)


def _record_groups(records, field: str | None, percentiles: bool) -> list[dict]:
    rows = records.values(field) if field else records
    if percentiles and connection.vendor == "postgresql":
        sums = {**RECORD_SUMS, "p50": PercentileCont("latency_ms", 0.5), "p95": PercentileCont("latency_ms", 0.95)}
        return [dict(r) for r in rows.annotate(**sums)] if field else [records.aggregate(**sums)]
    result = [dict(r) for r in rows.annotate(**RECORD_SUMS)] if field else [records.aggregate(**RECORD_SUMS)]
    if percentiles:
        latencies: dict = defaultdict(list)
        for value, latency in records.values_list(field or "id", "latency_ms"):
            latencies[value if field else None].append(latency)
        for row in result:
            values = latencies.get(row[field] if field else None)
            row["p50"] = percentile(values, 0.5) if values else None
            row["p95"] = percentile(values, 0.95) if values else None
    return result


def _rollup_groups(rollups, field: str | None, percentiles: bool) -> list[dict]:
    if rollups is None:  # the records alone hold the usage asked for
        return []
    sums = {**ROLLUP_SUMS, **(_WEIGHTED if percentiles else {})}
    rows = [dict(r) for r in rollups.values(field).annotate(**sums)] if field else [rollups.aggregate(**sums)]
    rows = [{name.removeprefix("sum_"): value for name, value in row.items()} for row in rows]
    for row in rows:
        for name in _WEIGHTED if percentiles else ():
            row[name] = row[name] / row["requests"] if row.get("requests") and row[name] is not None else None
    return rows


def grouped(records, rollups, field: str | None = None, rollup_field: str | None = None, *,
            percentiles: bool = True) -> list[dict]:
    """RECORD_SUMS (and latency p50/p95) per value of `field` over `records` and `rollups` together,
    as if all were records; `rollup_field` names the group on the rollups when it differs. `rollups`
    None: the records hold it all."""
    merged: dict = {}
    parts = (_record_groups(records, field, percentiles),
             _rollup_groups(rollups, rollup_field or field, percentiles))
    for part, name in zip(parts, (field, rollup_field or field), strict=True):
        for row in part:
            key = row.pop(name) if field else None
            if not row.get("requests"):
                continue
            into = merged.setdefault(key, {"requests": 0})
            _add(into, row, percentiles)
    if not field:
        return [merged.get(None, {})]
    return [{field: key, **row} for key, row in merged.items()]


def _add(into: dict, row: dict, percentiles: bool) -> None:
    before, now = into["requests"], row["requests"]
    for name in RECORD_SUMS:
        value = row.get(name) or 0
        into[name] = (into.get(name) or (Decimal(0) if isinstance(value, Decimal) else 0)) + value
    if percentiles:
        for name in ("p50", "p95"):
            if row.get(name) is None:
                continue
            if into.get(name) is None:
                into[name] = row[name]
            else:  # weighted by requests
                into[name] = (into[name] * before + row[name] * now) / (before + now)
    into["requests"] = before + now


def distinct(records, rollups, field: str, limit: int = 500) -> list[str]:
    """The values of `field` seen in `records` and `rollups`."""
    values = set(records.order_by().values_list(field, flat=True).distinct()[:limit])
    values |= set(rollups.order_by().values_list(field, flat=True).distinct()[:limit])
    return sorted(v for v in values if v)[:limit]


def first_use(records, rollups) -> datetime | None:
    """When the earliest of `records` and `rollups` starts."""
    moments = [records.aggregate(m=Min("created_at"))["m"], rollups.aggregate(m=Min("bucket"))["m"]]
    return min((m for m in moments if m is not None), default=None)

