"""Cost reports by email: daily, weekly and monthly, one per tenant to its owners
and admins, and one overall to staff.

Each covers the last closed calendar period in the tenant's time zone (UTC for
the overall report): totals, top models, keys and providers, the change against
the period before, budget status, a chart of cost per day (and one per top
model) against the span before, the month's forecast and each budget's run-out
day (usage.forecast), and what changed most (usage.changes); HTML and plain
text, the charts as PNG images inside the HTML's multipart/related part (shown
by content id, `cid:`, in every mail client), the rows as a CSV attachment.
A delivery is claimed (a unique row) before it is sent, so a report goes out once however many times, or on however many workers, the job
runs; a failed send gives the claim back for the next run. The figures are read from the
database replica when there is one (gateway_project.lib.db_replica): a closed period's
usage does not change while the replica catches up; the claim is written to the primary.
"""

import csv
import io
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, Sum
from django.template.loader import render_to_string
from django.utils import timezone

from gateway_project.lib import db_replica
from tenants.models import Tenant

from . import changes, charts, forecast
from .alerts import staff_emails, tenant_admin_emails
from .forecast import Forecast
from .models import Limit, ReportDelivery, UsageRecord
from .rollups import NOT_ERRORS

log = logging.getLogger(__name__)
PERIODS = ("day", "week", "month")
TOP = 5
CHART_MODELS = 3  # top models with a chart of their own


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
class Chart:
    """Cost per day over the chart's span and the span before it, and the PNG drawn from it."""

    cid: str
    title: str
    days: list[date]
    current: list[Decimal]
    previous: list[Decimal]
    labels: tuple[str, str]
    height: int = charts.HEIGHT

    @property
    def rows(self) -> list[tuple[date, Decimal, Decimal | None]]:
        """Each day's cost beside the matching day's of the span before (the figures the chart shows)."""
        return [(day, cost, self.previous[i] if i < len(self.previous) else None)
                for i, (day, cost) in enumerate(zip(self.days, self.current, strict=True))]

    def png(self) -> bytes:
        return charts.cost_per_day(self.title, self.days, self.current, self.previous, self.labels, self.height)


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
    charts: list[Chart] = field(default_factory=list)
    forecast: Forecast | None = None
    what_changed: list[str] = field(default_factory=list)

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
    """Each budget's use in its period as of the end of the report's period, and its run-out day."""
    found = []
    for limit in Limit.objects.filter(tenant=tenant, budget_usd__isnull=False).select_related("api_key", "tenant"):
        seen = forecast.budget_forecast(limit, until)
        scope = " · ".join(filter(None, [f"key {limit.api_key.name}" if limit.api_key_id else "",
                                         f"model {limit.model}" if limit.model else ""])) or "whole tenant"
        found.append({"scope": scope, "period": limit.get_period_display(), "budget": limit.budget_usd,
                      "spent": seen.spent, "rate": seen.rate.per_day, "runs_out_on": seen.runs_out_on,
                      "exhausted": seen.exhausted,
                      "percent": round(seen.spent * 100 / limit.budget_usd) if limit.budget_usd else 0})
    return found


def chart_span(period: str, start: date, end: date) -> tuple[list[date], list[date], tuple[str, str]]:
    """The days a report's charts show, the days before them they are set against, and the two names.

    A day alone is no chart: a daily report shows the week ending on its day."""
    if period == "month":
        before_start, _ = last_closed("month", start)
        days, before = _days(start, end), _days(before_start, start)
        return days, before, (f"{start:%B %Y}", f"{before_start:%B %Y}")
    first = end - timedelta(days=7)
    names = ("this week", "the week before") if period == "week" else ("the last 7 days", "the 7 days before")
    return _days(first, end), _days(first - timedelta(days=7), first), names


def _days(first: date, end: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((end - first).days)]


def _charts(report: Report, records, tz: ZoneInfo) -> list[Chart]:
    days, before, labels = chart_span(report.period, report.start, report.end)

    def chart(cid: str, title: str, scoped, height: int) -> Chart:
        return Chart(cid, title, days, forecast.daily_costs(scoped, days[0], days[-1], tz),
                     forecast.daily_costs(scoped, before[0], before[-1], tz), labels, height)

    found = [chart("cost-per-day", "Cost per day (USD)", records, charts.HEIGHT)]
    for i, row in enumerate(report.top_models[:CHART_MODELS]):
        found.append(chart(f"cost-model-{i + 1}", f"{row['public_model']}: cost per day (USD)",
                           records.filter(public_model=row["public_model"]), charts.MODEL_HEIGHT))
    return found


def build(period: str, tenant: Tenant | None, today: date | None = None) -> Report:
    tz = ZoneInfo(tenant.time_zone if tenant and tenant.time_zone else "UTC")
    today = today or timezone.now().astimezone(tz).date()
    start, end = last_closed(period, today)
    since, until = _bounds(start, end, tz)
    scoped = UsageRecord.objects.filter(tenant=tenant) if tenant is not None else UsageRecord.objects.all()
    records = scoped.filter(created_at__gte=since, created_at__lt=until)
    previous = scoped.filter(created_at__gte=_bounds(*_before(period, start), tz)[0], created_at__lt=since)
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
    report.charts = _charts(report, scoped, tz)
    report.forecast = forecast.month_forecast(scoped, until, tz)
    report.what_changed = changes.what_changed(scoped, period, start, end, tz)
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


class ReportEmail(EmailMultiAlternatives):
    """An email whose HTML alternative travels with its images: multipart/related [html, png...].

    Django puts every attachment beside the alternatives in multipart/mixed, where
    several mail clients show an image as an attachment instead of resolving its
    `cid:`; so the HTML part is wrapped, with its images, after Django has built
    the message (the CSV stays an attachment)."""

    def __init__(self, *args, images: list[tuple[str, bytes]] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.images = list(images)

    def message(self):
        msg = super().message()
        for part in msg.walk():
            if part.get_content_type() != "multipart/alternative":
                continue
            payload = part.get_payload()
            for i, alternative in enumerate(payload):
                if alternative.get_content_type() == "text/html":
                    payload[i] = self._related(alternative)
        return msg

    def _related(self, html) -> MIMEMultipart:
        related = MIMEMultipart("related")
        related.attach(html)
        for cid, png in self.images:
            image = MIMEImage(png, "png")
            image["Content-ID"] = f"<{cid}>"
            image.add_header("Content-Disposition", "inline", filename=f"{cid}.png")
            related.attach(image)
        return related


def message(report: Report, recipients: list[str]) -> EmailMultiAlternatives:
    context = {"report": report, "site": settings.GATEWAY_PUBLIC_URL}
    subject = f"[LLM Gateway] {report.title}, {report.start:%Y-%m-%d}" + (
        f" to {report.last_day:%Y-%m-%d}" if report.period != "day" else "")
    email = ReportEmail(subject, render_to_string("usage/cost_report.txt", context), settings.DEFAULT_FROM_EMAIL,
                        recipients, images=[(chart.cid, chart.png()) for chart in report.charts])
    email.attach_alternative(render_to_string("usage/cost_report.html", context), "text/html")
    slug = report.tenant.slug if report.tenant else "all-tenants"
    email.attach(f"usage-{slug}-{report.period}-{report.start:%Y-%m-%d}.csv", _csv(report), "text/csv")
    return email


def _deliver(period: str, tenant: Tenant | None, recipients: list[str], today: date | None) -> bool:
    if not recipients:
        return False
    report = db_replica.read(build, period, tenant, today)
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
    sent += _deliver(period, None, staff_emails(), today)
    return sent
