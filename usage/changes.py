"""The cost report's "what changed": the keys, models, routes and providers whose spend,
tokens per request, error rate or cache hit rate moved most against their own trailing weeks.

Each is measured on the report's period (spend as a daily mean) and on each day of
the REPORT_BASELINE_DAYS before it; the baseline is the median of those days (a
day without requests spends nothing, but has no rate). A move counts when it is
large enough to matter: spend by at least REPORT_CHANGE_MIN_USD a day and 1.5x
either way; tokens per request 1.5x either way; error and cache hit rates by at
least 5 points; the rates and token sizes only for values with at least
REPORT_CHANGE_MIN_REQUESTS requests. Ratios rank by their logarithm, rates by
their points / 10, so a 2.7x spend and a 10-point error rate rank alike.
The strongest moves come first, at most REPORT_CHANGES of them, in plain sentences.
"""

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from statistics import median
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.db.models.functions import Trunc

from .rollups import NOT_ERRORS

DIMENSIONS = {"key": "key_prefix", "model": "public_model", "route": "route", "provider": "provider_name"}
# Where a value's spend went, named in its sentence: a key's on a model, a model's through a key.
SHARE_BY = {"key": "public_model", "model": "key_prefix", "route": "public_model", "provider": "public_model"}
RATIO = 1.5
POINTS = 0.05


@dataclass(frozen=True)
class Change:
    score: float
    sentence: str


@dataclass
class _Figures:
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    prompt: int = 0
    cached: int = 0
    cost: Decimal = Decimal(0)


def _name(dimension: str, value: str) -> str:
    return f"key {value}…" if dimension == "key" else f"{dimension} {value}"


def _when(period: str) -> str:
    return {"day": "yesterday", "week": "a day this week", "month": "a day this month"}[period]


def _daily(records, field: str, since: datetime, until: datetime, tz: ZoneInfo) -> dict[str, dict[date, _Figures]]:
    rows = (records.filter(created_at__gte=since, created_at__lt=until).exclude(**{field: ""}).order_by()
            .annotate(day=Trunc("created_at", "day", tzinfo=tz)).values(field, "day")
            .annotate(requests=Count("id"), errors=Count("id", filter=~Q(status__in=NOT_ERRORS)),
                      tokens=Sum("total_tokens"), prompt=Sum("prompt_tokens"), cached=Sum("cached_tokens"),
                      cost=Sum("cost_usd")))
    out: dict[str, dict[date, _Figures]] = defaultdict(dict)
    for row in rows:
        out[row[field]][row["day"].astimezone(tz).date()] = _Figures(
            row["requests"], row["errors"], row["tokens"] or 0, row["prompt"] or 0, row["cached"] or 0,
            row["cost"] or Decimal(0))
    return out


def _sum(figures: list[_Figures]) -> _Figures:
    total = _Figures()
    for f in figures:
        total.requests += f.requests
        total.errors += f.errors
        total.tokens += f.tokens
        total.prompt += f.prompt
        total.cached += f.cached
        total.cost += f.cost
    return total


def _spend(name: str, now: _Figures, days: int, base: list[_Figures], when: str, share: str) -> Change | None:
    per_day = now.cost / days
    typical = Decimal(median([f.cost for f in base]))
    if abs(per_day - typical) < settings.REPORT_CHANGE_MIN_USD:
        return None
    baseline_days = settings.REPORT_BASELINE_DAYS
    if typical == 0:
        return Change(math.log(10), f"{name} spent ${per_day:,.2f} {when}; it spent nothing on most of the "
                                    f"{baseline_days} days before{share}.")
    ratio = float(per_day / typical)
    if 1 / RATIO < ratio < RATIO:
        return None
    return Change(abs(math.log(ratio)), f"{name} spent ${per_day:,.2f} {when}, {ratio:.1f}x its {baseline_days}-day "
                                        f"median of ${typical:,.2f}{share}.")


def _rates(name: str, now: _Figures, base: list[_Figures], when: str) -> list[Change]:
    least = settings.REPORT_CHANGE_MIN_REQUESTS
    base = [f for f in base if f.requests >= least]
    if now.requests < least or not base:
        return []
    days, out = settings.REPORT_BASELINE_DAYS, []
    size, typical = now.tokens / now.requests, median(f.tokens / f.requests for f in base)
    if typical and not 1 / RATIO < size / typical < RATIO:
        out.append(Change(abs(math.log(size / typical)), f"{name} used {size:,.0f} tokens per request {when}, "
                                                         f"{size / typical:.1f}x its {days}-day median of {typical:,.0f}."))
    rate, typical = now.errors / now.requests, median(f.errors / f.requests for f in base)
    if abs(rate - typical) >= POINTS:
        out.append(Change(abs(rate - typical) * 10, f"{name} failed {rate:.1%} of its requests {when}, against a "
                                                    f"{days}-day median of {typical:.1%}."))
    with_prompt = [f for f in base if f.prompt]
    if now.prompt and with_prompt:
        rate, typical = now.cached / now.prompt, median(f.cached / f.prompt for f in with_prompt)
        if abs(rate - typical) >= POINTS:
            out.append(Change(abs(rate - typical) * 10, f"{name} read {rate:.1%} of its prompt tokens from the "
                                                        f"cache {when}, against a {days}-day median of {typical:.1%}."))
    return out


def _shares(records, field: str, by: str, since: datetime, until: datetime) -> dict[str, tuple[str, Decimal]]:
    """For each value of `field`: the value of `by` it spent most on, and that share of its spend."""
    rows = (records.filter(created_at__gte=since, created_at__lt=until).order_by().values(field, by)
            .annotate(cost=Sum("cost_usd")))
    spend: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for row in rows:
        spend[row[field]][row[by]] = row["cost"] or Decimal(0)
    out = {}
    for value, parts in spend.items():
        top, total = max(parts.items(), key=lambda item: item[1]), sum(parts.values())
        if total:
            out[value] = (top[0], top[1] / total)
    return out


def _share_text(dimension: str, top: tuple[str, Decimal] | None) -> str:
    if top is None or not top[0]:
        return ""
    by = SHARE_BY[dimension]
    where = f"through key {top[0]}…" if by == "key_prefix" else f"on {top[0]}"
    return f"; {top[1]:.0%} of it {where}"


def what_changed(records, period: str, start: date, end: date, tz: ZoneInfo) -> list[str]:
    """The strongest moves of the period [start, end) against the days before it, as sentences."""
    since, until = datetime.combine(start, time(), tz), datetime.combine(end, time(), tz)
    baseline = [start - timedelta(days=i) for i in range(settings.REPORT_BASELINE_DAYS, 0, -1)]
    base_since = datetime.combine(baseline[0], time(), tz)
    days, when, found = (end - start).days, _when(period), []
    for dimension, field in DIMENSIONS.items():
        daily = _daily(records, field, base_since, until, tz)
        shares = _shares(records, field, SHARE_BY[dimension], since, until)
        for value, by_day in daily.items():
            now = _sum([f for d, f in by_day.items() if d >= start])
            base = [by_day.get(d, _Figures()) for d in baseline]
            name = _name(dimension, value)
            spend = _spend(name, now, days, base, when, _share_text(dimension, shares.get(value)))
            found += ([spend] if spend else []) + _rates(name, now, base, when)
    found.sort(key=lambda change: -change.score)
    return [change.sentence for change in found[:settings.REPORT_CHANGES]]
