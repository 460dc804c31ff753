"""Spend anomalies: an hour in which a tenant's key spent, or called, far more on a model than it
does in that hour of the day.

Each closed hour of the last ANOMALY_LOOKBACK_HOURS is read from the hourly
rollups (rolled up first where records came in since), per tenant, key and
model, and set against the same hour of each of the ANOMALY_BASELINE_DAYS days
before (an hour without calls counts as nothing spent). The baseline is their
median, the spread their median absolute deviation (MAD, times 1.4826 to be
comparable to a standard deviation): both ignore a few odd days, which a mean
and standard deviation would chase, and hour of day is the strongest cycle of
API traffic. An hour is an anomaly when its spend (or request count) is at
least ANOMALY_MIN_RATIO times the median and ANOMALY_MADS spreads above it,
and reaches the minimum volume (ANOMALY_MIN_CALLS calls, and ANOMALY_MIN_SPEND_USD
or ANOMALY_MIN_REQUESTS for the figure that rose), so a quiet key's one call,
however dear, never alarms. The spread is floored at a tenth of
the median (and of the minimum volume), so a key as regular as a clock is not
flagged for a few percent more. A slow drift moves the median along with it
and stays inside the spread; a spike does not.

A run of consecutive anomalous hours is one row (SpendAnomaly), emailed once
to the tenant's owners and admins and to staff, counted in
gateway_spend_anomalies_total. Running the job twice finds the rows it made
and adds nothing; an acknowledged run that goes on stays acknowledged and is
not mailed again. Muted keys (AnomalyMute) are not looked at.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from statistics import median

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from gateway_project.lib import metrics
from tenants.models import Tenant

from . import rollups
from .alerts import staff_emails, tenant_admin_emails
from .models import AnomalyMute, SpendAnomaly, UsageRollup

log = logging.getLogger(__name__)
HOUR = timedelta(hours=1)
MAD_SCALE = 1.4826  # a MAD times this estimates the standard deviation of normal data
FLOOR = 0.1  # the spread is at least this share of the median and of the minimum volume


@dataclass(frozen=True)
class Verdict:
    value: float
    median: float
    score: float  # spreads above the median
    anomalous: bool


def judge(value: float, history: list[float], minimum: float) -> Verdict:
    """Whether `value` is far above `history` (the same hour of the days before)."""
    middle = median(history) if history else 0.0
    mad = median(abs(h - middle) for h in history) if history else 0.0
    spread = max(MAD_SCALE * mad, FLOOR * middle, FLOOR * minimum)
    score = (value - middle) / spread
    anomalous = (value >= minimum and value >= settings.ANOMALY_MIN_RATIO * middle
                 and score >= settings.ANOMALY_MADS)
    return Verdict(value, middle, round(score, 2), anomalous)


Group = tuple[int, int | None, str]  # tenant, key, model


def _hour_sums(buckets: list[datetime], where: Q) -> dict[tuple[Group, datetime], tuple[Decimal, int, str]]:
    rows = (UsageRollup.objects.filter(where, granularity="hour", bucket__in=buckets).order_by()
            .values("tenant_id", "api_key_id", "public_model", "bucket")
            .annotate(cost=Sum("cost_usd"), requests=Sum("requests"))
            .values_list("tenant_id", "api_key_id", "public_model", "bucket", "cost", "requests"))
    prefixes = dict(UsageRollup.objects.filter(where, granularity="hour", bucket__in=buckets[-1:])
                    .values_list("api_key_id", "key_prefix"))
    return {((t, k, m), b): (c or Decimal(0), n or 0, prefixes.get(k, "")) for t, k, m, b, c, n in rows}


def _muted(now: datetime) -> set[int]:
    return set(AnomalyMute.objects.filter(Q(until__isnull=True) | Q(until__gt=now)).values_list("api_key_id",
                                                                                               flat=True))


def check_hour(hour: datetime, now: datetime) -> list[SpendAnomaly]:
    """Judge every tenant, key and model that spent or called enough in `hour`; return new runs."""
    least_spend, least_requests = settings.ANOMALY_MIN_SPEND_USD, settings.ANOMALY_MIN_REQUESTS
    observed = _hour_sums([hour], Q(cost_usd__gt=0) | Q(requests__gt=0))
    muted = _muted(now)
    candidates = {group: sums for (group, _), sums in observed.items()
                  if group[1] not in muted and sums[1] >= settings.ANOMALY_MIN_CALLS
                  and (sums[0] >= least_spend or sums[1] >= least_requests)}
    if not candidates:
        return []
    days = [hour - timedelta(days=i) for i in range(1, settings.ANOMALY_BASELINE_DAYS + 1)]
    past = _hour_sums(days, Q(tenant_id__in={g[0] for g in candidates},
                              public_model__in={g[2] for g in candidates}))
    new = []
    for group, (cost, requests, prefix) in candidates.items():
        history = [past.get((group, day), (Decimal(0), 0, ""))[:2] for day in days]
        spend = judge(float(cost), [float(c) for c, _ in history], float(least_spend))
        calls = judge(requests, [n for _, n in history], least_requests)
        if spend.anomalous or calls.anomalous:
            anomaly = _record(group, prefix, hour, spend, calls)
            if anomaly is not None:
                new.append(anomaly)
    return new


def _record(group: Group, prefix: str, hour: datetime, spend: Verdict, calls: Verdict) -> SpendAnomaly | None:
    """Add `hour` to the group's run that ended the hour before, or start a run (None: nothing new)."""
    tenant_id, key_id, model = group
    mine = SpendAnomaly.objects.filter(tenant_id=tenant_id, api_key_id=key_id, public_model=model)
    if mine.filter(started_at__lte=hour, last_hour__gte=hour).exists():
        return None  # this hour was judged by an earlier run
    figures = {"metrics": ", ".join(name for name, v in (("spend", spend), ("requests", calls)) if v.anomalous),
               "spend_usd": Decimal(str(spend.value)).quantize(Decimal("0.000001")),
               "baseline_spend_usd": Decimal(str(spend.median)).quantize(Decimal("0.000001")),
               "requests": int(calls.value), "baseline_requests": calls.median,
               "score": max(spend.score if spend.anomalous else 0, calls.score if calls.anomalous else 0)}
    with transaction.atomic():
        run = mine.select_for_update().filter(last_hour=hour - HOUR).first()
        if run is not None:
            peak = figures if figures["score"] > run.score else {}
            SpendAnomaly.objects.filter(pk=run.pk).update(last_hour=hour, hours=run.hours + 1, **peak)
            return None
    try:
        with transaction.atomic():
            anomaly = SpendAnomaly.objects.create(tenant_id=tenant_id, api_key_id=key_id, key_prefix=prefix,
                                                  public_model=model, started_at=hour, last_hour=hour, **figures)
    except IntegrityError:
        return None  # another worker recorded it first
    metrics.shared_inc("gateway_spend_anomalies_total", figures["metrics"].split(",")[0])
    return anomaly


def notify_pending() -> int:
    """Email each open run not yet announced; return how many were. Acknowledged runs are never mailed."""
    sent = 0
    for anomaly in SpendAnomaly.objects.filter(status=SpendAnomaly.Status.OPEN, notified_at__isnull=True):
        claimed = SpendAnomaly.objects.filter(pk=anomaly.pk, status=SpendAnomaly.Status.OPEN,
                                              notified_at__isnull=True).update(notified_at=timezone.now())
        if not claimed:
            continue  # acknowledged meanwhile, or taken by another worker
        try:
            _email(anomaly)
        except Exception:
            SpendAnomaly.objects.filter(pk=anomaly.pk).update(notified_at=None)  # the next run tries again
            log.exception("spend anomaly %s not emailed; retried on the next run", anomaly.pk)
            continue
        sent += 1
    return sent


def describe(anomaly: SpendAnomaly) -> str:
    """The anomaly in a sentence, as the email and the dashboard say it."""
    who = f"Key {anomaly.key_prefix}…" if anomaly.key_prefix else "Calls without a key"
    spend = (f"spent ${anomaly.spend_usd:,.2f} on {anomaly.public_model} in the hour from "
             f"{anomaly.last_hour:%Y-%m-%d %H:00} UTC")
    against = (f"{anomaly.spend_usd / anomaly.baseline_spend_usd:.1f}x the median of ${anomaly.baseline_spend_usd:,.2f} for that hour"
               if anomaly.baseline_spend_usd else "against nothing in that hour")
    return (f"{who} {spend}, {against} over the {settings.ANOMALY_BASELINE_DAYS} days before; "
            f"{anomaly.requests} requests (median {anomaly.baseline_requests:g}).")


def _email(anomaly: SpendAnomaly) -> None:
    tenant = Tenant.objects.get(pk=anomaly.tenant_id)
    subject = f"[{tenant.name}] Spend anomaly: key {anomaly.key_prefix}… on {anomaly.public_model}"
    link = f"{settings.GATEWAY_PUBLIC_URL}/admin/usage/spendanomaly/{anomaly.pk}/change/"
    body = (f"{describe(anomaly)}\n\nWhat rose: {anomaly.metrics}.\n\n"
            f"Acknowledge it, or mute anomalies for the key, in the admin: {link}\n")
    for recipients in (tenant_admin_emails(tenant.id), staff_emails()):
        if recipients:  # apart: a tenant's admins do not see staff's addresses, nor staff theirs
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)


def detect(now: datetime | None = None) -> list[SpendAnomaly]:
    """Judge the last closed hours, email what is new; return the runs started."""
    now = now or timezone.now()
    current = rollups.bucket_start(now, "hour")
    hours = [current - HOUR * i for i in range(settings.ANOMALY_LOOKBACK_HOURS, 0, -1)]
    for hour in sorted(rollups.stale_buckets(hours[0], current)["hour"]):
        rollups.rollup("hour", hour)  # the rollup job may not have seen the hour's last records yet
    new = [anomaly for hour in hours for anomaly in check_hour(hour, now)]
    notify_pending()
    return new


def acknowledge(anomalies, user) -> int:
    """Mark runs as seen by `user`: they are not mailed, and drop off the dashboard."""
    return anomalies.filter(status=SpendAnomaly.Status.OPEN).update(
        status=SpendAnomaly.Status.ACKNOWLEDGED, acknowledged_by=user, acknowledged_at=timezone.now())


def mute_keys(anomalies, user) -> int:
    """Stop looking at the keys of these runs (acknowledging them); return how many keys were muted."""
    muted = 0
    for tenant_id, key_id in set(anomalies.exclude(api_key_id=None).values_list("tenant_id", "api_key_id")):
        _, made = AnomalyMute.objects.get_or_create(api_key_id=key_id, defaults={"tenant_id": tenant_id,
                                                                                 "created_by": user})
        muted += made
    acknowledge(anomalies, user)
    return muted


def open_for(scope, limit: int = 20) -> list[dict]:
    """Open runs the scope may see, newest first, for the dashboard."""
    rows = scope.visible(SpendAnomaly.objects.filter(status=SpendAnomaly.Status.OPEN)).select_related("tenant")
    return [{"id": a.id, "tenant": a.tenant.name, "key": a.key_prefix, "model": a.public_model,
             "started_at": a.started_at.isoformat(), "hours": a.hours, "metrics": a.metrics,
             "spend_usd": format(a.spend_usd, "f"), "baseline_spend_usd": format(a.baseline_spend_usd, "f"),
             "requests": a.requests, "sentence": describe(a)} for a in rows[:limit]]

