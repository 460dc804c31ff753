"""Per-variant figures of an experiment, computed from its usage records and the feedback on them.

Each figure comes with a 95% confidence interval: proportions (the error rate) by Wilson's score
interval; means (tokens, cost per request, feedback score) by the normal approximation, mean
± 1.96 standard errors (the central limit theorem, good from a few dozen calls); percentiles
(latency p50/p95, time to first token p50) by the distribution-free interval between the order
statistics whose ranks bound the percentile's binomial count. Money stays exact: the total and the
mean cost per request are decimals; only the interval's half-width is a float's rounding.
"""

import math
from decimal import Decimal

from gateway_project.lib.percentiles import percentile

from .models import Feedback, UsageRecord
from .rollups import NOT_ERRORS

Z = 1.959963984540054  # the standard normal's 97.5th percentile
NOT_CALLS = ("hedge_cancelled",)


def wilson(successes: int, n: int) -> list[float] | None:
    if n == 0:
        return None
    p = successes / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def mean_interval(values: list[float]) -> tuple[float | None, list[float] | None]:
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = Z * sd / math.sqrt(n)
    return mean, [mean - half, mean + half]


def percentile_interval(values: list[int], q: float) -> tuple[float | None, list[int] | None]:
    n = len(values)
    if n == 0:
        return None, None
    ordered = sorted(values)
    half = Z * math.sqrt(n * q * (1 - q))
    low, high = max(0, math.floor(n * q - half) - 1), min(n - 1, math.ceil(n * q + half))
    return percentile(ordered, q), [ordered[low], ordered[high]]


def _figure(value, interval) -> dict:
    return {"value": value, "ci95": interval}


def variant_figures(records: list[dict], feedback: list[tuple[float | None, str]]) -> dict:
    """The figures of one variant from its records (dicts of FIELDS) and the (score, label) of its feedback."""
    n = len(records)
    scores = [score for score, _ in feedback if score is not None]
    labels: dict[str, int] = {}
    for _, label in feedback:
        if label:
            labels[label] = labels.get(label, 0) + 1
    errors = sum(1 for r in records if r["status"] not in NOT_ERRORS)
    latencies = [r["latency_ms"] for r in records if r["status"] == "ok"]
    ttfts = [r["ttft_ms"] for r in records if r["status"] == "ok" and r["ttft_ms"] is not None]
    cost = sum((r["cost_usd"] for r in records), Decimal(0))
    mean_cost, cost_interval = mean_interval([float(r["cost_usd"]) for r in records])
    p50, p50_interval = percentile_interval(latencies, 0.5)
    p95, p95_interval = percentile_interval(latencies, 0.95)
    ttft, ttft_interval = percentile_interval(ttfts, 0.5)
    score, score_interval = mean_interval(scores)
    figures = {
        "requests": n,
        "errors": errors,
        "error_rate": _figure(errors / n if n else None, wilson(errors, n)),
        "latency_p50_ms": _figure(p50, p50_interval),
        "latency_p95_ms": _figure(p95, p95_interval),
        "ttft_p50_ms": _figure(ttft, ttft_interval),
        "cost_usd": str(cost),
        "cost_per_request_usd": _figure(str(cost / n) if n else None,
                                        [str(round(v, 12)) for v in cost_interval] if cost_interval else None),
        "feedback": {"count": len(feedback), "scored": len(scores), "labels": labels,
                     "score": _figure(score, score_interval)},
    }
    for name in ("prompt_tokens", "completion_tokens"):
        mean, interval = mean_interval([r[name] for r in records])
        figures[f"{name}_total"] = sum(r[name] for r in records)
        figures[f"{name}_mean"] = _figure(mean, interval)
    return figures


FIELDS = ("request_id", "tenant_id", "variant", "status", "latency_ms", "ttft_ms", "cost_usd", "prompt_tokens",
          "completion_tokens")


def experiment_figures(records, experiment_id: int) -> dict[str, dict]:
    """Figures by variant, of `records` (a UsageRecord queryset, already scoped to what the caller may see)."""
    calls = records.filter(experiment_id=experiment_id).exclude(status__in=NOT_CALLS)
    rows = list(calls.values(*FIELDS))
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    feedback: dict[str, list[tuple[float | None, str]]] = {}
    # Feedback counts for the record of its own tenant only (a request id is unique, but be exact).
    owner = {(row["tenant_id"], row["request_id"]): row["variant"] for row in rows}
    given = Feedback.objects.filter(tenant_id__in={row["tenant_id"] for row in rows},
                                    request_id__in=calls.values("request_id"))
    for tenant_id, request_id, score, label in given.values_list("tenant_id", "request_id", "score", "label"):
        if (variant := owner.get((tenant_id, request_id))) is not None:
            feedback.setdefault(variant, []).append((score, label))
    return {variant: variant_figures(variant_rows, feedback.get(variant, []))
            for variant, variant_rows in sorted(by_variant.items())}


def feedback_record(tenant_id: int, request_id: str) -> UsageRecord | None:
    """The tenant's usage record of `request_id` (the gateway's id or the client's x-request-id)."""
    records = UsageRecord.objects.filter(tenant_id=tenant_id)
    return records.filter(request_id=request_id).first() or records.filter(client_request_id=request_id).first()
