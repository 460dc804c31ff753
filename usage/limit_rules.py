"""What both limit engines share: a limit as the hot path sees it (`LimitRule`), an admission, the period
of a rule, the refusals and the rate-limit headers. The Redis engine is usage/limits.py, the
in-process one usage/limits_local.py; each imports this module, not the other."""

import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db.models import Sum

from gateway_project.lib import errors
from gateway_project.lib.periods import calendar_bounds

from .models import Limit, UsageRecord

RESERVATION_TTL_MS = 15 * 60 * 1000


@dataclass(frozen=True, slots=True)
class LimitRule:
    """A limit (usage.models.Limit) as the hot path sees it."""

    id: int
    tenant_id: int
    key_id: int | None
    model: str
    rpm: int
    tpm: int
    concurrency: int
    period: str
    token_quota: int
    budget_micros: int
    credit_micros: int
    thresholds: tuple[float, ...]
    tz: str

    def applies(self, key_id: int, model: str) -> bool:
        return (self.key_id is None or self.key_id == key_id) and (not self.model or self.model == model)

    @property
    def metered(self) -> bool:
        return bool(self.token_quota or self.budget_micros)


def to_micros(usd: Decimal | None) -> int:
    """Money in integer micro-dollars, rounded up: a budget is never under-charged."""
    return 0 if usd is None else math.ceil(usd * 1_000_000)


_bounds: dict[tuple[str, str], tuple[int, int]] = {}


def period_bounds(rule: LimitRule, now: float) -> tuple[int, int]:
    """(start, end) of the rule's current period in epoch ms, calendar-aligned in its time zone.

    Computed once per period and zone: every admission asks, and the answer
    only changes when the period rolls over.
    """
    if rule.period == Limit.Period.TOTAL:
        return 0, 0
    cached = _bounds.get((rule.period, rule.tz))
    now_ms = now * 1000
    if cached and cached[0] <= now_ms < cached[1]:
        return cached
    bounds = calendar_bounds(rule.period, rule.tz, now)
    _bounds[(rule.period, rule.tz)] = bounds
    return bounds


@dataclass(slots=True)
class Admission:
    reservation: str
    rules: list[LimitRule]
    tokens: int
    micros: int
    engine: str  # "redis" or "local"
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    # The largest answer the call can get, in tokens and micro-dollars (at least the estimate).
    largest_tokens: int = 0
    largest_micros: int = 0
    # A key the admission script read for the caller once the call was admitted (`admit`'s `read`), and
    # what it held (None: nothing): "" when nothing was read (no read asked, or not the Redis engine).
    read_key: str = ""
    read_value: bytes | None = None
    # The share of each rate limit (requests and tokens per minute, concurrency) the call may fill:
    # under 1 for batch lines (BATCH_LIMIT_SHARE), so the rest stays for live calls.
    share: float = 1.0
    # The reservation as the Redis admission script holds it (usage/limit_scripts.py): given back to settle.
    held: bytes = b""

    @property
    def tenant_id(self) -> int:
        """The tenant whose limits these are (rules_for gives one tenant's only)."""
        return self.rules[0].tenant_id


def share_of(limit: int, share: float) -> int:
    """The part of a rate limit (0: none) a call under `share` may fill: at least 1, never more than it."""
    if not limit or share >= 1:
        return limit
    return max(1, math.floor(limit * share))

    @property
    def tenant_id(self) -> int:
        """The tenant whose limits these are (rules_for gives one tenant's only)."""
        return self.rules[0].tenant_id


def duration(ms: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 1h2m3s."""
    seconds = max(0, math.ceil(ms / 1000))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}s"


def ratelimit_headers(req: tuple, tok: tuple) -> dict[str, str]:
    headers = {}
    for name, (limit, remaining, reset) in (("requests", req), ("tokens", tok)):
        if limit:
            headers[f"x-ratelimit-limit-{name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, remaining))
            headers[f"x-ratelimit-reset-{name}"] = duration(reset)
    return headers


REFUSALS = {
    "rate_limit_exceeded": "Rate limit reached: too many requests per minute.",
    "tokens_per_minute_exceeded": "Rate limit reached: too many tokens per minute.",
    "concurrency_limit_exceeded": "Too many requests in flight at once.",
    "quota_exceeded": "Token quota for this period is used up.",
    "budget_exceeded": "Budget for this period is used up.",
}


def refusal(code: str, retry_ms: float, headers: dict[str, str]) -> errors.GatewayError:
    hdrs = dict(headers)
    if retry_ms > 0:
        hdrs["retry-after"] = str(max(1, math.ceil(retry_ms / 1000)))
    return errors.GatewayError(429, REFUSALS[code], type="rate_limit_error", code=code, headers=hdrs)


def period_usage(rule: LimitRule, start_ms: int, end_ms: int) -> tuple[int, int]:
    """Tokens and micro-dollars the database holds for a rule's period."""
    records = UsageRecord.objects.filter(tenant_id=rule.tenant_id)
    if rule.key_id:
        records = records.filter(api_key_id=rule.key_id)
    if rule.model:
        records = records.filter(public_model=rule.model)
    if end_ms:
        records = records.filter(created_at__gte=datetime.fromtimestamp(start_ms / 1000, ZoneInfo("UTC")),
                                 created_at__lt=datetime.fromtimestamp(end_ms / 1000, ZoneInfo("UTC")))
    sums = records.aggregate(tokens=Sum("total_tokens"), cost=Sum("cost_usd"))
    return sums["tokens"] or 0, to_micros(sums["cost"] or Decimal(0))
