"""Soft budget and quota thresholds: one email per threshold per period, and an audit entry."""

import logging
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants import audit
from tenants.models import Membership

from . import forecast
from .models import BudgetAlert, Limit

log = logging.getLogger(__name__)


def tenant_admin_emails(tenant_id: int) -> list[str]:
    return sorted(
        Membership.objects.filter(tenant_id=tenant_id, role__in=[Membership.Role.OWNER, Membership.Role.ADMIN])
        .exclude(user__email="").values_list("user__email", flat=True)
    )


def staff_emails() -> list[str]:
    """The platform's staff: superusers (tenant users hold is_staff too, to enter the admin)."""
    return sorted(get_user_model().objects.filter(is_staff=True, is_active=True, is_superuser=True).exclude(email="")
                  .values_list("email", flat=True))


def threshold_crossed(limit_id: int, kind: str, thresholds: list[float], period_start_ms: int, used: int) -> int:
    """Record and announce crossed thresholds; return how many were new (safe to call twice)."""
    limit = Limit.objects.select_related("tenant", "api_key").filter(pk=limit_id).first()
    if limit is None:
        return 0
    start = datetime.fromtimestamp(period_start_ms / 1000, UTC)
    used_value = Decimal(used) / 1_000_000 if kind == "budget" else Decimal(used)
    total = limit.budget_usd if kind == "budget" else limit.token_quota
    new = 0
    for threshold in thresholds:
        try:
            with transaction.atomic():
                BudgetAlert.objects.create(limit=limit, period_start=start, threshold=int(threshold), kind=kind,
                                           used=used_value)
        except IntegrityError:
            continue  # announced already, by this or another process
        new += 1
        audit.record("limit.threshold", limit, tenant_id=limit.tenant_id,
                     changes={"kind": kind, "threshold": threshold, "used": str(used_value), "of": str(total)})
        _email(limit, kind, threshold, used_value, total)
    return new


def _email(limit: Limit, kind: str, threshold: float, used: Decimal, total) -> None:
    recipients = tenant_admin_emails(limit.tenant_id)
    if not recipients:
        return
    unit = "USD" if kind == "budget" else "tokens"
    subject = f"[{limit.tenant.name}] {kind} at {threshold:g}% ({used:.6f} of {total} {unit})"
    body = (f"{limit} has reached {threshold:g}% of its {limit.get_period_display().lower()} {kind}.\n\n"
            f"Used: {used} {unit}\nLimit: {total} {unit}\n\n{_outlook(limit) if kind == 'budget' else ''}"
            "Requests are refused once the limit is reached. Raise it in the admin under Usage > Limits.")
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
    except Exception:
        log.exception("could not email the %s alert for %s", kind, limit)


def _outlook(limit: Limit) -> str:
    """The budget's forecast in a sentence (and a blank line), or nothing if the rate says nothing."""
    seen = forecast.budget_forecast(limit, timezone.now())
    if seen.exhausted or not seen.rate.mean:
        return ""
    if seen.runs_out_on is None:
        return f"At this rate (${seen.rate.mean:,.2f} a day) the budget lasts the {limit.period}.\n\n"
    return (f"At this rate (${seen.rate.mean:,.2f} a day) the budget runs out on {forecast.ordinal(seen.runs_out_on)}"
            f" ({seen.runs_out_on:%A %Y-%m-%d}).\n\n")
