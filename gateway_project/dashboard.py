"""The admin index's dashboard: what the gateway served, what it cost, and what needs a look.

`data(user, params)` answers the dashboard's one JSON request: totals, a time
series and breakdowns by tenant, provider and model of the usage records the
user may see (tenants.scoping: staff all, a tenant's owners and admins the
tenant's, members their own keys'), the batch lines' share per tenant, the health of the deployments they may see,
and the budgets and quotas closest to their limits. Usage is read from the
hourly and daily rollups where they cover the range and from the records for
the rest (usage.summaries), so a 30-day chart costs about what a 30-row one
does however large the ledger; counts and money are exact either way (money as
decimal strings); latency percentiles are PostgreSQL's percentile_cont over
records (computed in Python on SQLite), request-weighted over rollups.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
from django.db.models import Q
from django.db.models.functions import Trunc
from django.http import HttpResponse
from rest_framework.exceptions import ValidationError

from gateway_project.lib import db_replica, errors
from gateway_project.lib.rest import query_moment
from providers import health
from providers.models import Deployment
from routing import breakers
from tenants.models import Tenant
from tenants.scoping import scope_for
from usage import anomalies, forecast, limits, summaries
from usage.api import by_batch
from usage.models import Limit, UsageRecord, UsageRollup

RANGES = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}
STEPS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
# The coarsest rollups a chart of each step may read (a minute chart reads records only).
COARSEST = {"minute": None, "hour": "hour", "day": "day"}
BREAKDOWNS = {"tenant": "tenant__name", "provider": "provider_name", "model": "public_model", "route": "route"}
# Budgets and quotas shown: the fullest first, those at least this used.
BUDGET_SHOWN_FROM = 0.5
BUDGET_WARN_AT = 0.8
MAX_BUDGETS = 20
MAX_GROUPS = 20


class BadRange(ValueError):
    pass


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    step: str

    def buckets(self) -> list[datetime]:
        first = _truncate(self.start, self.step)
        out, moment = [], first
        while moment < self.end:
            out.append(moment)
            moment += STEPS[self.step]
        return out


def _truncate(moment: datetime, step: str) -> datetime:
    moment = moment.astimezone(UTC).replace(second=0, microsecond=0)
    if step in ("hour", "day"):
        moment = moment.replace(minute=0)
    return moment.replace(hour=0) if step == "day" else moment


def _moment(params, name: str) -> datetime:
    try:
        return query_moment(params, name, "Expected an ISO 8601 time, such as 2026-11-01T12:00Z.")
    except ValidationError as exc:
        raise BadRange(f"'{name}': {exc.detail[name][0]}") from exc


def window(params, now: datetime | None = None) -> Window:
    """The time range asked for: a named range ending now, or start and end."""
    now = now or datetime.now(UTC)
    if params.get("start"):
        start = _moment(params, "start")
        end = _moment(params, "end") or now
        if end <= start:
            raise BadRange("'end' must be after 'start'.")
        if end - start > timedelta(days=400):
            raise BadRange("A range may span at most 400 days.")
    else:
        name = params.get("range") or "24h"
        if name not in RANGES:
            raise BadRange(f"'range' must be one of {', '.join(RANGES)}.")
        start, end = now - RANGES[name], now
    span = end - start
    step = "minute" if span <= timedelta(hours=3) else "hour" if span <= timedelta(days=8) else "day"
    return Window(start, end, step)


def _filtered(rows, scope, params):
    """Usage records or rollups (the same fields) the user may see, filtered as asked."""
    rows = rows.filter(scope.key_filter())
    if value := params.get("tenant"):
        rows = rows.filter(tenant_id=int(value) if value.isdigit() else -1)
    if value := params.get("provider"):
        rows = rows.filter(provider_name=value)
    if value := params.get("model"):
        rows = rows.filter(public_model=value)
    return rows.order_by()


def _records(scope, params, win: Window | None):
    """The records the user may see, filtered as asked; within the window unless None."""
    records = UsageRecord.objects.all()
    if win is not None:
        records = records.filter(created_at__gte=win.start, created_at__lt=win.end)
    return by_batch(_filtered(records, scope, params), params.get("batch"))


@dataclass(frozen=True)
class Usage:
    """The window's usage: the records and the rollups that together hold it (usage.summaries)."""

    records: object
    rollups: object

    def grouped(self, field: str | None, rollup_field: str | None = None) -> list[dict]:
        return summaries.grouped(self.records, self.rollups, field, rollup_field)


def _usage(scope, params, win: Window, *, filtered: bool = True) -> Usage:
    if filtered and params.get("batch"):  # rollups do not keep the batch: its lines are read from the records
        return Usage(_records(scope, params, win), None)
    split = summaries.split(win.start, win.end, COARSEST[win.step])
    records, rollups = UsageRecord.objects.filter(split.records), UsageRollup.objects.filter(split.rollups)
    if filtered:
        return Usage(_filtered(records, scope, params), _filtered(rollups, scope, params))
    return Usage(records.filter(scope.key_filter()).order_by(), rollups.filter(scope.key_filter()).order_by())


def _row(values: dict) -> dict:
    requests = values.get("requests") or 0
    prompt, completion = values.get("prompt_tokens") or 0, values.get("completion_tokens") or 0
    return {
        "requests": requests,
        "errors": values.get("errors") or 0,
        "error_rate": round((values.get("errors") or 0) / requests, 4) if requests else 0,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": values.get("cached_tokens") or 0,
        "cache_write_tokens": values.get("cache_write_tokens") or 0,
        "reasoning_tokens": values.get("reasoning_tokens") or 0,
        "tokens": prompt + completion,
        "cost_usd": format(values.get("cost_usd") or Decimal(0), "f"),  # never "2E-8"
        "cache_hits": values.get("cache_hits") or 0,
        "cache_hit_rate": round((values.get("cache_hits") or 0) / requests, 4) if requests else 0,
        "cost_saved_usd": format(values.get("cost_saved_usd") or Decimal(0), "f"),
        "p50_ms": round(values["p50"]) if values.get("p50") is not None else None,
        "p95_ms": round(values["p95"]) if values.get("p95") is not None else None,
    }


def _series(usage: Usage, win: Window) -> dict:
    sliced = Usage(usage.records.annotate(slot=Trunc("created_at", win.step, tzinfo=UTC)),
                   usage.rollups.annotate(slot=Trunc("bucket", win.step, tzinfo=UTC)) if usage.rollups is not None else None)
    by_bucket = {row["slot"]: row for row in sliced.grouped("slot")}
    series = defaultdict(list)
    for bucket in win.buckets():
        row = _row(by_bucket.get(bucket, {}))
        series["labels"].append(bucket.isoformat())
        for name in ("requests", "errors", "tokens", "cost_usd", "p50_ms", "p95_ms"):
            series[name].append(row[name])
    return dict(series)


def _breakdown(usage: Usage, name: str) -> list[dict]:
    field = BREAKDOWNS[name]
    rows = [{"name": row[field] or "—", **_row(row)} for row in usage.grouped(field)]
    rows.sort(key=lambda r: (-Decimal(r["cost_usd"]), -r["requests"], r["name"]))
    return rows[:MAX_GROUPS]


def _health(scope, everything: bool) -> list[dict]:
    deployments = list(scope.visible(Deployment.objects.select_related("provider")).filter(is_active=True)
                       .order_by("provider__name", "public_model")[:200])
    checks = health.latest({d.provider_id for d in deployments})
    out = []
    for d in deployments:
        check = checks.get((d.provider_id, d.id)) or checks.get((d.provider_id, None))
        out.append({
            "provider": d.provider.name,
            "model": d.public_model,
            "deployment_id": d.id,
            "breaker": breakers.shared_state(d.id),
            "ok": check.ok if check else None,
            "latency_ms": check.latency_ms if check else None,
            "checked_at": check.checked_at.isoformat() if check else None,
            # Error texts name the provider's addresses: the platform's business.
            "error": (check.error if everything else "") if check and not check.ok else "",
        })
    return out


GUARDRAIL_ACTIONS = ("blocked", "redacted", "flagged", "refused", "failed_open")
MAX_GUARDRAIL_RECORDS = 20_000


def _guardrails(records) -> list[dict]:
    """Blocks, redactions and flags per tenant and check in the window (from the usage records' decisions,
    the latest MAX_GUARDRAIL_RECORDS of them)."""
    counts: dict[tuple[int, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(GUARDRAIL_ACTIONS, 0))
    decided = records.exclude(guardrails=None).order_by("-created_at").values_list("tenant_id", "guardrails")
    for tenant_id, decision in decided[:MAX_GUARDRAIL_RECORDS]:
        for check in (decision or {}).get("checks") or ():
            if check.get("action") in GUARDRAIL_ACTIONS:
                counts[(tenant_id, str(check.get("check")))][check["action"]] += 1
    names = dict(Tenant.objects.filter(id__in={t for t, _ in counts}).values_list("id", "name"))
    rows = [{"tenant": names.get(t, str(t)), "check": label, **actions} for (t, label), actions in counts.items()]
    rows.sort(key=lambda r: -sum(r[a] for a in GUARDRAIL_ACTIONS))
    return rows[:MAX_GROUPS]


def _budgets(scope) -> list[dict]:
    rows = list(scope.visible(Limit.objects.select_related("tenant", "api_key"))
                .filter(Q(budget_usd__isnull=False) | Q(token_quota__isnull=False))[:500])
    uses = limits.current_uses(rows)
    out = []
    for limit in rows:
        use = uses.get(limit.id)
        if not use:
            continue
        measures = []
        if limit.budget_usd:
            spent = Decimal(use["period_micros"]) / 1_000_000
            measures.append(("budget", str(spent.quantize(Decimal("0.000001"))), str(limit.budget_usd),
                             float(spent / limit.budget_usd)))
        if limit.token_quota:
            measures.append(("tokens", use["period_tokens"], limit.token_quota,
                             use["period_tokens"] / limit.token_quota))
        for kind, used, allowed, share in measures:
            if share >= BUDGET_SHOWN_FROM:
                out.append({"limit_id": limit.id, "tenant": limit.tenant.name,
                            "key": limit.api_key.name if limit.api_key else "", "model": limit.model,
                            "period": limit.period, "kind": kind, "used": used, "allowed": allowed,
                            "percent": round(share * 100, 1), "warn": share >= BUDGET_WARN_AT})
    out.sort(key=lambda b: -b["percent"])
    return out[:MAX_BUDGETS]


def _filters(scope, params, win: Window) -> dict:
    tenants = scope.visible(Tenant.objects.all()) if not scope.everything else Tenant.objects.all()
    seen = _usage(scope, params, win, filtered=False)
    return {
        "tenants": [{"id": t.id, "name": t.name} for t in tenants.order_by("name")[:500]],
        "providers": summaries.distinct(seen.records, seen.rollups, "provider_name"),
        "models": summaries.distinct(seen.records, seen.rollups, "public_model"),
    }


def _forecast(scope, params, win: Window, now: datetime) -> dict:
    """The month's end at the current rate (usage.forecast, UTC like the charts), and the rate per
    chart step, for the cost chart's forecast line (continued to the month's end on a daily chart)."""
    seen = forecast.month_forecast(_records(scope, params, None), now, UTC,
                                   _filtered(UsageRollup.objects.none() if params.get("batch") else
                                             UsageRollup.objects.all(), scope, params))
    per_step = seen.rate.mean * Decimal(STEPS[win.step].total_seconds()) / Decimal(86400)
    future = []
    if win.step == "day" and now - win.end < STEPS["day"]:  # a chart that ends now goes on to the month's end
        day = _truncate(win.end, "day") + STEPS["day"]
        while day.date() <= seen.last_day:
            future.append(day.isoformat())
            day += STEPS["day"]
    return {"month_to_date_usd": format(seen.spent, "f"), "month_end_usd": format(seen.estimate, "f"),
            "low_usd": format(seen.low, "f"), "high_usd": format(seen.high, "f"),
            "rate_per_day_usd": format(seen.rate.per_day, "f"), "rate_days": seen.rate.days,
            "last_day": seen.last_day.isoformat(), "per_step_usd": format(per_step.quantize(Decimal("0.000001")), "f"),
            "future_labels": future}


def data(user, params) -> dict:
    """The dashboard's figures, read from the database replica if there is one (gateway_project.lib.db_replica):
    a minute-old chart is as good, and the primary keeps its cores for the drain. Who the user is
    and what they may see come from the primary, before."""
    scope = scope_for(user)
    win = window(params)
    return db_replica.read(_figures, scope, params, win)


def _figures(scope, params, win: Window) -> dict:
    usage = _usage(scope, params, win)
    return {
        "range": {"start": win.start.isoformat(), "end": win.end.isoformat(), "step": win.step},
        "totals": _row(usage.grouped(None)[0]),
        "series": _series(usage, win),
        "by": {**{name: _breakdown(usage, name) for name in BREAKDOWNS},
               # batch lines' cost per tenant, from the records (rollups do not keep the batch)
               "batch": _breakdown(Usage(_records(scope, params, win).exclude(batch_id=""), None), "tenant")},
        "filters": _filters(scope, params, win),
        "health": _health(scope, scope.everything),
        "budgets": _budgets(scope),
        "forecast": _forecast(scope, params, win, datetime.now(UTC)),
        "anomalies": anomalies.open_for(scope),
        "guardrails": _guardrails(_records(scope, params, win)),
    }


def view(request) -> HttpResponse:
    """GET the dashboard's data (behind the admin's sign-in)."""
    try:
        body = data(request.user, request.GET)
    except BadRange as exc:
        return errors.bad_request(str(exc), param="range").response()
    return HttpResponse(orjson.dumps(body), content_type="application/json")
