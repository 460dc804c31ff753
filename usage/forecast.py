"""Spend forecasts from the usage records: the month's end, and the day each budget runs out.

The current rate is the mean daily spend over the last FORECAST_RATE_DAYS whole
days before the moment of the forecast (fewer when the records start later: a
tenant two days old is not averaged with five empty days). The forecast is the
spend so far plus that rate times the time left; its range uses the quietest
and the busiest of those days instead of the mean ("if every day left is like
the quietest, or the busiest, of the last week"). A budget runs out where the
spend so far plus the rate times the days from now reaches it; only within its
period (a total budget: within BUDGET_HORIZON_DAYS). Plain arithmetic on the
records, so the figures can be checked by hand, and money stays Decimal.

Given `rollups` too (the same filters on usage.UsageRollup), sums are read
from the rollups where they cover and from the records for the rest
(usage.summaries): the dashboard's forecast then costs the same on a ledger of
any size.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Min, Sum
from django.db.models.functions import Trunc

from gateway_project.lib.periods import calendar_bounds

from . import summaries
from .models import Limit, UsageRecord

DAY = timedelta(days=1)
BUDGET_HORIZON_DAYS = 366
MICRO = Decimal("0.000001")


@dataclass(frozen=True)
class Rate:
    mean: Decimal  # USD a day, unrounded: forecasts multiply it
    low: Decimal
    high: Decimal
    days: int  # whole days it was measured over

    @property
    def per_day(self) -> Decimal:
        return _money(self.mean)


@dataclass(frozen=True)
class Forecast:
    spent: Decimal  # from the period's start to the moment
    rate: Rate
    days_left: Decimal  # from the moment to the period's end
    last_day: date  # the period's last day
    estimate: Decimal
    low: Decimal
    high: Decimal


@dataclass(frozen=True)
class BudgetForecast:
    limit: Limit
    spent: Decimal
    budget: Decimal
    rate: Rate
    runs_out_on: date | None  # None: not within the period at this rate
    exhausted: bool


def _money(value) -> Decimal:
    return (value or Decimal(0)).quantize(MICRO)


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tz)


def _split(records, rollups, start: datetime, end: datetime, tz: ZoneInfo) -> tuple:
    """(records, rollups) holding [start, end): the records alone without rollups."""
    if rollups is None:
        return records.filter(created_at__gte=start, created_at__lt=end), None
    split = summaries.split(start, end, "day" if str(tz) == "UTC" else "hour")
    return records.filter(split.records), rollups.filter(split.rollups)


def daily_costs(records, first: date, last: date, tz: ZoneInfo, rollups=None) -> list[Decimal]:
    """The spend of each day from `first` to `last` (both included), in zone `tz`."""
    records, rollups = _split(records, rollups, _midnight(first, tz), _midnight(last + DAY, tz), tz)
    rows = list(records.order_by().annotate(day=Trunc("created_at", "day", tzinfo=tz)).values("day")
                .annotate(cost=Sum("cost_usd")).values_list("day", "cost"))
    if rollups is not None:
        rows += list(rollups.order_by().annotate(day=Trunc("bucket", "day", tzinfo=tz)).values("day")
                     .annotate(cost=Sum("cost_usd")).values_list("day", "cost"))
    by_day: dict[date, Decimal] = {}
    for moment, cost in rows:
        day = moment.astimezone(tz).date()
        by_day[day] = by_day.get(day, Decimal(0)) + (cost or Decimal(0))
    return [_money(by_day.get(first + timedelta(days=i))) for i in range((last - first).days + 1)]


def current_rate(records, moment: datetime, tz: ZoneInfo, rollups=None) -> Rate:
    """Mean, least and most daily spend over the whole days before `moment`'s day."""
    today = moment.astimezone(tz).date()
    first = today - timedelta(days=settings.FORECAST_RATE_DAYS)
    started = records.filter(created_at__gte=_midnight(first, tz)).aggregate(m=Min("created_at"))["m"]
    if rollups is not None:
        rolled = rollups.filter(bucket__gte=_midnight(first, tz)).aggregate(m=Min("bucket"))["m"]
        started = min((m for m in (started, rolled) if m is not None), default=None)
    if started is None or started >= _midnight(today, tz):
        return Rate(Decimal(0), Decimal(0), Decimal(0), 0)
    first = max(first, started.astimezone(tz).date())
    costs = daily_costs(records, first, today - DAY, tz, rollups)
    return Rate(sum(costs) / len(costs), min(costs), max(costs), len(costs))


def _spent(records, since: datetime | None, moment: datetime, rollups=None, tz: ZoneInfo = UTC) -> Decimal:
    if since is None or rollups is None:
        records = records.filter(created_at__lt=moment)
        if since is not None:
            records = records.filter(created_at__gte=since)
        return _money(records.aggregate(s=Sum("cost_usd"))["s"])
    records, rollups = _split(records, rollups, since, moment, tz)
    return _money((records.aggregate(s=Sum("cost_usd"))["s"] or Decimal(0))
                  + (rollups.aggregate(s=Sum("cost_usd"))["s"] or Decimal(0)))


def month_forecast(records, moment: datetime, tz: ZoneInfo, rollups=None) -> Forecast:
    """The spend of `records` (and `rollups`) at the end of `moment`'s calendar month (zone `tz`)."""
    start_ms, end_ms = calendar_bounds("month", str(tz), moment.timestamp())
    start, end = datetime.fromtimestamp(start_ms / 1000, UTC), datetime.fromtimestamp(end_ms / 1000, UTC)
    spent, rate = _spent(records, start, moment, rollups, tz), current_rate(records, moment, tz, rollups)
    days_left = Decimal((end - moment).total_seconds()) / Decimal(86400)
    return Forecast(spent=spent, rate=rate, days_left=days_left.quantize(Decimal("0.0001")),
                    last_day=(end - DAY).astimezone(tz).date(), estimate=_money(spent + rate.mean * days_left),
                    low=_money(spent + rate.low * days_left), high=_money(spent + rate.high * days_left))


def limit_records(limit: Limit):
    """The usage records a limit counts, of any time."""
    records = UsageRecord.objects.filter(tenant_id=limit.tenant_id)
    if limit.api_key_id:
        records = records.filter(api_key_id=limit.api_key_id)
    if limit.model:
        records = records.filter(public_model=limit.model)
    return records


def budget_forecast(limit: Limit, moment: datetime) -> BudgetForecast:
    """Where a budget stands at `moment`, and the day (the tenant's zone) it runs out at the current rate."""
    tz = ZoneInfo(limit.tenant.time_zone or "UTC")
    records = limit_records(limit)
    if limit.period == Limit.Period.TOTAL:
        start, end = None, moment + timedelta(days=BUDGET_HORIZON_DAYS)
    else:
        start_ms, end_ms = calendar_bounds(limit.period, str(tz), moment.timestamp() - 1e-6)
        start, end = datetime.fromtimestamp(start_ms / 1000, UTC), datetime.fromtimestamp(end_ms / 1000, UTC)
    spent, rate, budget = _spent(records, start, moment), current_rate(records, moment, tz), limit.budget_usd
    runs_out = None
    if spent >= budget:
        runs_out = moment.astimezone(tz).date()
    elif rate.mean > 0:
        when = moment + timedelta(days=float((budget - spent) / rate.mean))
        runs_out = when.astimezone(tz).date() if when < end else None
    return BudgetForecast(limit=limit, spent=spent, budget=budget, rate=rate, runs_out_on=runs_out,
                          exhausted=spent >= budget)


def ordinal(day: date) -> str:
    """'the 19th', as a person says a day of the month."""
    n = day.day
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"the {n}{suffix}"
