"""Cost reports by email: daily, weekly and monthly, one per tenant to its owners
and admins, and one overall to staff.

Each covers the last closed calendar period in the tenant's time zone (UTC for
the overall report): totals, top models, keys and providers, the change against
the period before, and budget status; HTML and plain text, with the rows as a
CSV attachment. A delivery is claimed (a unique row) before it is sent, so a
report goes out once however many times, or on however many workers, the job
runs; a failed send gives the claim back for the next run.
"""

import csv
import io
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, Sum
from django.template.loader import render_to_string
from django.utils import timezone

from gateway_project.lib.periods import calendar_bounds
from tenants.models import Tenant

from .alerts import tenant_admin_emails
from .models import Limit, ReportDelivery, UsageRecord
from .rollups import NOT_ERRORS

log = logging.getLogger(__name__)
PERIODS = ("day", "week", "month")
TOP = 5


def last_closed(period: str, today: date) -> tuple[date, date]:
    """[start, end) of the last whole day, week (Monday first) or month before `today`."""
    if period == "day":
        return today - timedelta(days=1), today
    if period == "week":
        this_week = today - timedelta(days=today.weekday())
        return this_week - timedelta(days=7), this_week
    this_month = today.replace(day=1)
    return (this_month - timedelta(days=1)).replace(day=1), this_month


def _before(period: str, start: date) -> tuple[date, date]:
    return last_closed(period, start)


def _bounds(start: date, end: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    return datetime.combine(start, time(), tz), datetime.combine(end, time(), tz)


@dataclass
class Report:
    title: str
    period: str
    start: date
    end: date  # exclusive
    tenant: Tenant | None
    totals: dict
    previous: dict
    top_models: list[dict] = field(default_factory=list)
    top_keys: list[dict] = field(default_factory=list)
    top_providers: list[dict] = field(default_factory=list)
    top_tenants: list[dict] = field(default_factory=list)
    budgets: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    def change(self, name: str) -> str:
        now, before = self.totals[name] or 0, self.previous[name] or 0
        if not before:
            return "new" if now else "no change"
        return f"{(Decimal(now) - Decimal(before)) * 100 / Decimal(before):+.1f}%"

    @property
    def changes(self) -> dict:
        return {name: self.change(name) for name in ("requests", "tokens", "cost")}


def _totals(records) -> dict:
    data = records.aggregate(requests=Count("id"), errors=Count("id", filter=~Q(status__in=NOT_ERRORS)),
                             prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cost=Sum("cost_usd"))
    data["prompt"], data["completion"] = data["prompt"] or 0, data["completion"] or 0
    data["tokens"] = data["prompt"] + data["completion"]
    data["cost"] = (data["cost"] or Decimal(0)).quantize(Decimal("0.000001"))
    return data


def _top(records, *fields: str) -> list[dict]:
    rows = (records.values(*fields).annotate(requests=Count("id"), tokens=Sum("total_tokens"), cost=Sum("cost_usd"))
            .order_by("-cost", "-requests")[:TOP])
    return [{**row, "cost": row["cost"].quantize(Decimal("0.000001"))} for row in rows]


def _budgets(tenant: Tenant, until: datetime) -> list[dict]:
    """Each budget's use in its period, as of the end of the report's period."""
    now = until - timedelta(microseconds=1)
    found = []
    for limit in Limit.objects.filter(tenant=tenant, budget_usd__isnull=False).select_related("api_key"):
        records = UsageRecord.objects.filter(tenant=tenant, created_at__lt=until)
        if limit.period != Limit.Period.TOTAL:
            start_ms, _ = calendar_bounds(limit.period, tenant.time_zone or "UTC", now.timestamp())
            records = records.filter(created_at__gte=datetime.fromtimestamp(start_ms / 1000, UTC))
        if limit.api_key_id:
            records = records.filter(api_key_id=limit.api_key_id)
        if limit.model:
            records = records.filter(public_model=limit.model)
        spent = (records.aggregate(s=Sum("cost_usd"))["s"] or Decimal(0)).quantize(Decimal("0.000001"))
        scope = " · ".join(filter(None, [f"key {limit.api_key.name}" if limit.api_key_id else "",
                                         f"model {limit.model}" if limit.model else ""])) or "whole tenant"
        found.append({"scope": scope, "period": limit.get_period_display(), "budget": limit.budget_usd,
                      "spent": spent, "percent": round(spent * 100 / limit.budget_usd) if limit.budget_usd else 0})
    return found


def build(period: str, tenant: Tenant | None, today: date | None = None) -> Report:
    tz = ZoneInfo(tenant.time_zone if tenant and tenant.time_zone else "UTC")
    today = today or timezone.now().astimezone(tz).date()
    start, end = last_closed(period, today)
    since, until = _bounds(start, end, tz)
    records = UsageRecord.objects.filter(created_at__gte=since, created_at__lt=until)
    previous = UsageRecord.objects.filter(created_at__gte=_bounds(*_before(period, start), tz)[0],
                                          created_at__lt=since)
    if tenant is not None:
        records, previous = records.filter(tenant=tenant), previous.filter(tenant=tenant)
    name = tenant.name if tenant else "All tenants"
    report = Report(title=f"{name}: {period}ly cost report" if period != "day" else f"{name}: daily cost report",
                    period=period, start=start, end=end, tenant=tenant, totals=_totals(records),
                    previous=_totals(previous))
    report.top_models = _top(records, "public_model")
    report.top_keys = _top(records, "key_prefix")
    report.top_providers = _top(records, "provider_name")
    if tenant is None:
        tenants = dict(Tenant.objects.values_list("id", "name"))
        report.top_tenants = [{**row, "name": tenants.get(row["tenant_id"], "?")} for row in _top(records, "tenant_id")]
    else:
        report.budgets = _budgets(tenant, until)
    report.rows = list(records.values("tenant_id", "key_prefix", "public_model", "provider_name")
                       .annotate(requests=Count("id"), prompt_tokens=Sum("prompt_tokens"),
                                 completion_tokens=Sum("completion_tokens"), cost_usd=Sum("cost_usd"))
                       .order_by("tenant_id", "key_prefix", "public_model", "provider_name"))
    return report


def _csv(report: Report) -> str:
    names = dict(Tenant.objects.values_list("id", "slug"))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["period_start", "period_end", "tenant", "key_prefix", "model", "provider", "requests",
                     "prompt_tokens", "completion_tokens", "cost_usd"])
    for row in report.rows:
        writer.writerow([report.start.isoformat(), report.last_day.isoformat(), names.get(row["tenant_id"], ""),
                         row["key_prefix"], row["public_model"], row["provider_name"], row["requests"],
                         row["prompt_tokens"], row["completion_tokens"], f"{row['cost_usd']:.6f}"])
    return out.getvalue()


def message(report: Report, recipients: list[str]) -> EmailMultiAlternatives:
    context = {"report": report, "site": settings.GATEWAY_PUBLIC_URL}
    subject = f"[LLM Gateway] {report.title}, {report.start:%Y-%m-%d}" + (
        f" to {report.last_day:%Y-%m-%d}" if report.period != "day" else "")
    email = EmailMultiAlternatives(subject, render_to_string("usage/cost_report.txt", context),
                                   settings.DEFAULT_FROM_EMAIL, recipients)
    email.attach_alternative(render_to_string("usage/cost_report.html", context), "text/html")
    slug = report.tenant.slug if report.tenant else "all-tenants"
    email.attach(f"usage-{slug}-{report.period}-{report.start:%Y-%m-%d}.csv", _csv(report), "text/csv")
    return email


def _deliver(period: str, tenant: Tenant | None, recipients: list[str], today: date | None) -> bool:
    if not recipients:
        return False
    report = build(period, tenant, today)
    try:
        with transaction.atomic():
            delivery = ReportDelivery.objects.create(tenant=tenant, period=period, period_start=report.start,
                                                     recipients=recipients)
    except IntegrityError:
        return False  # sent already, or being sent by another worker
    try:
        message(report, recipients).send()
    except Exception:
        delivery.delete()  # give the claim back: the next run sends it
        raise
    delivery.sent_at = timezone.now()
    delivery.save(update_fields=["sent_at"])
    return True


def send_reports(period: str, today: date | None = None) -> int:
    """Send every due report for `period`; return how many were sent by this call."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}")
    sent = 0
    for tenant in Tenant.objects.filter(is_active=True):
        try:
            sent += _deliver(period, tenant, tenant_admin_emails(tenant.id), today)
        except Exception:
            log.exception("cost report for tenant %s not sent; retried on the next run", tenant.slug)
    staff = sorted(get_user_model().objects.filter(is_staff=True, is_active=True).exclude(email="")
                   .values_list("email", flat=True))
    sent += _deliver(period, None, staff, today)
    return sent
