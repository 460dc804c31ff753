"""Forecasts from the records: the month's end at the current rate and its range, the day a budget
runs out, and the budget alert that says so. Figures worked out by hand from known series."""

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.core import mail

from tenants.models import Membership
from usage import alerts, forecast
from usage.models import Limit, UsageRecord

UTC_ZONE = ZoneInfo("UTC")


def spend(tenant, key, when: datetime, cost: str, model: str = "gpt-test") -> None:
    UsageRecord.objects.create(request_id=f"req_{uuid.uuid4().hex}", created_at=when, tenant=tenant, api_key=key,
                               key_prefix=key.prefix if key else "", endpoint="chat.completions",
                               public_model=model, cost_usd=Decimal(cost))


def november(tenant, key) -> None:
    """$1 on the 1st, $2 on the 2nd, ... $10 on the 10th, in two calls a day (one at 23:30)."""
    for day in range(1, 11):
        spend(tenant, key, datetime(2026, 11, day, 9, tzinfo=UTC), f"{day / 2:.2f}")
        spend(tenant, key, datetime(2026, 11, day, 23, 30, tzinfo=UTC), f"{day / 2:.2f}")


def test_the_month_end_is_the_spend_so_far_plus_the_weeks_rate(tenant, api_key, settings):
    settings.FORECAST_RATE_DAYS = 7
    november(tenant, api_key[0])
    spend(tenant, api_key[0], datetime(2026, 10, 31, 12, tzinfo=UTC), "1000")  # last month: not this month's spend
    seen = forecast.month_forecast(UsageRecord.objects.filter(tenant=tenant), datetime(2026, 11, 11, tzinfo=UTC),
                                   UTC_ZONE)
    # Spent 1+...+10 = 55; the rate is the mean of the 4th to the 10th: 49 / 7 = 7 a day (4 to 10);
    # 20 days are left of November.
    assert seen.spent == Decimal("55") and seen.rate.mean == Decimal("7") and seen.rate.days == 7
    assert (seen.rate.low, seen.rate.high, seen.days_left) == (Decimal("4"), Decimal("10"), Decimal("20"))
    assert (seen.estimate, seen.low, seen.high) == (Decimal("195"), Decimal("135"), Decimal("255"))
    assert seen.last_day == date(2026, 11, 30)

    # Half-way through the 11th, with $3 spent that morning: 58 + 7 x 19.5.
    spend(tenant, api_key[0], datetime(2026, 11, 11, 6, tzinfo=UTC), "3")
    seen = forecast.month_forecast(UsageRecord.objects.filter(tenant=tenant),
                                   datetime(2026, 11, 11, 12, tzinfo=UTC), UTC_ZONE)
    assert (seen.spent, seen.days_left, seen.estimate) == (Decimal("58"), Decimal("19.5"), Decimal("194.5"))


def test_a_young_tenant_is_averaged_over_the_days_it_has(tenant, api_key):
    spend(tenant, api_key[0], datetime(2026, 11, 9, 10, tzinfo=UTC), "5")
    spend(tenant, api_key[0], datetime(2026, 11, 10, 10, tzinfo=UTC), "7")
    rate = forecast.current_rate(UsageRecord.objects.filter(tenant=tenant), datetime(2026, 11, 11, tzinfo=UTC),
                                 UTC_ZONE)
    assert (rate.mean, rate.low, rate.high, rate.days) == (Decimal("6"), Decimal("5"), Decimal("7"), 2)


def test_days_follow_the_tenants_time_zone(tenant, api_key):
    tenant.time_zone = "Asia/Tokyo"  # UTC+9: 23:30 UTC on the 1st is the 2nd in Tokyo
    tenant.save()
    november(tenant, api_key[0])
    tokyo = ZoneInfo("Asia/Tokyo")
    costs = forecast.daily_costs(UsageRecord.objects.filter(tenant=tenant), date(2026, 11, 1), date(2026, 11, 3),
                                 tokyo)
    assert costs == [Decimal("0.5"), Decimal("1.5"), Decimal("2.5")]  # 1/2; 1/2 + 2/2; 2/2 + 3/2


def test_a_budget_runs_out_on_the_day_the_rate_reaches_it(tenant, api_key):
    key = api_key[0]
    november(tenant, key)
    spend(tenant, None, datetime(2026, 11, 10, 12, tzinfo=UTC), "400")  # another key's: not this budget's
    at = datetime(2026, 11, 11, tzinfo=UTC)

    def seen(budget: str, **extra) -> forecast.BudgetForecast:
        limit = Limit.objects.create(tenant=tenant, api_key=key, budget_usd=Decimal(budget), **extra)
        return forecast.budget_forecast(limit, at)

    # $55 spent, $7 a day: $100 is reached during the 17th (97 by the end of the 16th, 104 by the 17th's).
    assert seen("100", period="month").runs_out_on == date(2026, 11, 17)
    assert seen("103.99", period="month").runs_out_on == date(2026, 11, 17)
    assert seen("104", period="month").runs_out_on == date(2026, 11, 18)  # lasts the 17th to its end
    lasts = seen("300", period="month")  # 55 + 7 x 20 = 195 by the month's end
    assert lasts.runs_out_on is None and not lasts.exhausted and lasts.spent == Decimal("55")
    over = seen("50", period="month")
    assert over.exhausted and over.runs_out_on == date(2026, 11, 11)
    # A fixed total has no month's end: it runs out when it runs out.
    assert seen("300", period="total").runs_out_on == date(2026, 12, 16)  # 245 / 7 = 35 days: to the 15th's end
    # A weekly budget counts from Monday the 9th: 9 + 10 = 19 spent; 19 + 7 x 5 = 54 by Sunday.
    weekly = seen("39.99", period="week")
    assert weekly.spent == Decimal("19") and weekly.runs_out_on == date(2026, 11, 13)  # 19 + 7 x 3 = 40 by its end
    assert seen("60", period="week").runs_out_on is None


def test_the_budget_alert_says_when_the_budget_runs_out(tenant, api_key, django_user_model, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    owner = django_user_model.objects.create_user("owner", "owner@acme.test", "pw")
    Membership.objects.create(tenant=tenant, user=owner, role="owner")
    now = datetime.now(UTC)
    today = now.date()
    for days_ago in range(1, 8):  # $7 on each of the last 7 days
        spend(tenant, api_key[0], datetime.combine(today - timedelta(days=days_ago), datetime.min.time(), UTC)
              + timedelta(hours=12), "7")
    limit = Limit.objects.create(tenant=tenant, budget_usd=Decimal("100"), period="total", alert_thresholds=[40])
    assert alerts.threshold_crossed(limit.id, "budget", [40.0], 0, 49_000_000) == 1
    # 49 spent, 51 left at $7 a day: 7.29 days from now.
    day = (now + timedelta(days=51 / 7)).date()
    body = mail.outbox[0].body
    assert f"At this rate ($7.00 a day) the budget runs out on {forecast.ordinal(day)} ({day:%A %Y-%m-%d})." in body
    assert forecast.ordinal(date(2026, 11, 19)) == "the 19th" and forecast.ordinal(date(2026, 11, 22)) == "the 22nd"
    assert forecast.ordinal(date(2026, 11, 11)) == "the 11th" and forecast.ordinal(date(2026, 12, 1)) == "the 1st"
