"""Admission: rate limits, concurrency, quotas and budgets, enforced together.

`admit` runs on the hot path after authorization. It gathers the limits that
apply (tenant, tenant x model, key, key x model; cached per process like the
routing table) and, if there are any, checks them all and reserves the
request's estimated tokens and cost in one atomic step: a Lua script in Redis
(usage/limit_scripts.py), or the same logic in this process in embedded mode.
`settle` replaces the reservation with the real usage, once.

What is reserved (docs/limits.md, "What a call reserves"): the estimate
(max_tokens, or LIMITS_COMPLETION_ESTIMATE) must fit for a call to be
admitted, and is what a limit reserves while it trusts max_tokens. Once a
limit has settled a call well over its estimate (the upstream ignored
max_tokens), it stops trusting it for LIMITS_OVERRUN_MEMORY seconds (never
trusted with LIMITS_TRUST_MAX_TOKENS off): its calls reserve their largest
answer (the deployment's maximum output), or all that is left of the limit if
less, and a call that takes what is left is the only one in flight until it
settles. Settlement carries any overrun into the counters, so a limit in debt
admits nothing until the debt is paid off (the period ends, the minute moves on).

Redis unreachable (docs/limits.md): rate limits fall back to this process's
share of each limit (GATEWAY_PROCESSES); quotas and budgets refuse (fail
closed) unless the limit grants an offline credit, which this process may then
spend while Redis is down. Usage is never lost (usage.recorder holds it).
Once a command has failed, Redis is skipped at once until it answers a PING
again (gateway_project/lib/redis_health.py).
Period counters missing from Redis (a restart, a new period) are rebuilt from
the usage records in the database.
"""

import asyncio
import logging
import math
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.db.models import Sum

from gateway_project.lib import config_cache, errors, redis_health
from gateway_project.lib.orm_thread import run_orm
from gateway_project.lib.periods import calendar_bounds
from gateway_project.lib.redis_pool import async_redis

from . import limit_scripts
from .models import Limit, UsageRecord

log = logging.getLogger(__name__)

RESERVATION_TTL_MS = 15 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Rule:
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


def period_bounds(rule: Rule, now: float) -> tuple[int, int]:
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


# --- the rules cache -------------------------------------------------------------

def _load_rules() -> dict[int, list[Rule]]:
    table: dict[int, list[Rule]] = {}
    for row in Limit.objects.select_related("tenant"):
        table.setdefault(row.tenant_id, []).append(Rule(
            id=row.id, tenant_id=row.tenant_id, key_id=row.api_key_id, model=row.model,
            rpm=row.requests_per_minute or 0, tpm=row.tokens_per_minute or 0,
            concurrency=row.max_concurrent or 0, period=row.period, token_quota=row.token_quota or 0,
            budget_micros=to_micros(row.budget_usd), credit_micros=to_micros(row.offline_credit_usd),
            thresholds=tuple(sorted(float(t) for t in row.alert_thresholds or ())), tz=row.tenant.time_zone,
        ))
    return table


_rules = config_cache.Reloaded("limits", _load_rules, "limits")


async def rules_for(tenant_id: int, key_id: int, model: str) -> list[Rule]:
    return [r for r in (await _rules.get()).get(tenant_id, ()) if r.applies(key_id, model)]


# --- admission ------------------------------------------------------------------

@dataclass(slots=True)
class Admission:
    reservation: str
    rules: list[Rule]
    tokens: int
    micros: int
    engine: str  # "redis" or "local"
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    # The largest answer the call can get, in tokens and micro-dollars (at least the estimate).
    largest_tokens: int = 0
    largest_micros: int = 0


def _duration(ms: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 1h2m3s."""
    seconds = max(0, math.ceil(ms / 1000))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}s"


def _ratelimit_headers(req: tuple, tok: tuple) -> dict[str, str]:
    headers = {}
    for name, (limit, remaining, reset) in (("requests", req), ("tokens", tok)):
        if limit:
            headers[f"x-ratelimit-limit-{name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, remaining))
            headers[f"x-ratelimit-reset-{name}"] = _duration(reset)
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


def _rule_args(rule: Rule, now: float, admission: Admission) -> list:
    start, end = period_bounds(rule, now) if rule.metered else (0, 0)
    return [rule.id, rule.rpm, rule.tpm, rule.concurrency, rule.token_quota, rule.budget_micros,
            start, end, admission.tokens, admission.micros, admission.largest_tokens, admission.largest_micros]


async def admit(tenant_id: int, key_id: int, model: str, estimate, inflight=None) -> Admission | None:
    """Check and reserve, or raise a 429 GatewayError. None when no limit applies.

    `estimate()` gives (tokens, micro-dollars) to reserve; it is only called
    when some limit applies, since counting tokens costs CPU. `inflight()`, if
    given, gives the call's in-flight entry (hash, request id, event;
    usage/inflight.py), which the Redis script writes when it admits: in the
    same round trip, not one more.
    """
    rules = await rules_for(tenant_id, key_id, model)
    if not rules:
        return None
    tokens, micros, *largest = estimate()
    largest_tokens, largest_micros = largest or (tokens, micros)
    admission = Admission(uuid.uuid4().hex, rules, tokens, micros, "redis",
                          largest_tokens=max(tokens, largest_tokens), largest_micros=max(micros, largest_micros))
    if settings.REDIS_URL and not redis_health.down:
        try:
            return await _admit_redis(admission, inflight() if inflight else ())
        except (redis.RedisError, OSError) as exc:
            redis_health.failed(exc)
            log.warning("limits: Redis unreachable (%s), enforcing the offline policy", exc)
    admission.engine = "local"
    return await local.admit(admission)


async def _admit_redis(admission: Admission, entry: tuple = ()) -> Admission:
    for _ in range(3):
        now = time.time()
        args = [int(now * 1000), admission.reservation, RESERVATION_TTL_MS, len(admission.rules),
                int(settings.LIMITS_OVERRUN_MEMORY * 1000), int(settings.LIMITS_TRUST_MAX_TOKENS)]
        for rule in admission.rules:
            args += _rule_args(rule, now, admission)
        args += entry
        result = await _scripts().admit(args=args)
        status, code, retry = int(result[0]), result[1].decode(), float(result[2])
        if status == 1:
            admission.headers = _ratelimit_headers(tuple(int(x) for x in result[4:7]),
                                                   tuple(int(x) for x in result[7:10]))
            return admission
        if status == 0:
            raise refusal(code, retry, {})
        rule = next(r for r in admission.rules if str(r.id) == result[3].decode())
        await _rebuild(rule, now)
    raise errors.GatewayError(503, "Limits could not be checked; try again.", type="server_error",
                              code="limits_unavailable")


def period_usage(rule: Rule, start_ms: int, end_ms: int) -> tuple[int, int]:
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


async def _rebuild(rule: Rule, now: float) -> None:
    start, end = period_bounds(rule, now)
    tokens, micros = await run_orm(period_usage, rule, start, end)
    key = f"gw:lim:{rule.id}:p:{start}"
    await _scripts().rebuild(keys=[key], args=[tokens, micros, end + 86_400_000 if end else 0])
    log.info("limits: rebuilt %s from the database (%d tokens, %d micro-USD)", key, tokens, micros)


async def settle(admission: Admission | None, tokens: int, micros: int, event: bytes | None = None,
                 inflight: tuple[str, str] | None = None) -> bool:
    """Replace the reservation with real usage (exactly once) and raise threshold alerts.

    With Redis, `event` (a serialized usage event) is appended to the usage
    buffer in the same script, and the `inflight` entry (hash, request id) of
    its stream deleted; returns whether it was.
    """
    if admission is None or admission.settled:
        return False
    admission.settled = True
    if admission.engine == "redis":
        if redis_health.down:
            return False  # the reservation expires and is settled at what it reserved
        try:
            args = [admission.reservation, tokens, micros]
            if event is not None:
                args += [event, *(inflight or ())]
            result = await _scripts().settle(args=args)
        except (redis.RedisError, OSError) as exc:
            # The reservation expires and is settled at what it reserved.
            redis_health.failed(exc)
            log.warning("limits: could not settle %s (%s); it will settle at what it reserved", admission.reservation, exc)
            return False
        _alert_crossings(admission, [tuple(int(x) for x in row) for row in result])
        return event is not None
    _alert_crossings(admission, local.settle(admission, tokens, micros))
    return False


def _alert_crossings(admission: Admission, crossings: list) -> None:
    by_id = {r.id: r for r in admission.rules}
    for rule_id, tok_before, tok_after, cost_before, cost_after in crossings:
        rule = by_id.get(rule_id)
        if rule is None or not rule.thresholds:
            continue
        for kind, limit, before, after in (("budget", rule.budget_micros, cost_before, cost_after),
                                           ("quota", rule.token_quota, tok_before, tok_after)):
            crossed = [t for t in rule.thresholds if limit and before < limit * t / 100 <= after]
            if crossed:
                from . import alerts

                task = asyncio.ensure_future(run_orm(alerts.threshold_crossed, rule.id, kind, crossed,
                                                     period_bounds(rule, time.time())[0], after))
                _background.add(task)
                task.add_done_callback(_background.discard)


_background: set = set()


class _Scripts:
    def __init__(self, client: aioredis.Redis) -> None:
        self.admit = client.register_script(limit_scripts.ADMIT)
        self.settle = client.register_script(limit_scripts.SETTLE)
        self.rebuild = client.register_script(limit_scripts.REBUILD)


_scripts_by_client: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _scripts() -> _Scripts:
    client = async_redis()
    scripts = _scripts_by_client.get(client)
    if scripts is None:
        scripts = _scripts_by_client[client] = _Scripts(client)
    return scripts


from .limits_local import local  # noqa: E402  (the in-process engine shares the helpers above)


def current_use(limit: Limit) -> dict[str, int]:
    """What a limit has used right now (for the admin): requests and tokens in the last
    minute, requests in flight, and tokens and micro-dollars spent this period."""
    return current_uses([limit]).get(limit.id, {})


def current_uses(limits: list[Limit]) -> dict[int, dict[str, int]]:
    """`current_use` of several limits, reading the rules once."""
    wanted = {limit.id for limit in limits}
    now = time.time()
    uses = {}
    for rules in _load_rules().values():
        for rule in rules:
            if rule.id not in wanted:
                continue
            start, _ = period_bounds(rule, now)
            if not settings.REDIS_URL:
                uses[rule.id] = local.current_use(rule, now, start)
                continue
            try:
                uses[rule.id] = _current_use_redis(rule, now, start)
            except (redis.RedisError, OSError):
                return {}
    return uses


def _current_use_redis(rule: Rule, now: float, start: int) -> dict[str, int]:
    from gateway_project.lib.redis_pool import sync_redis

    client, base = sync_redis(), f"gw:lim:{rule.id}"
    buckets = client.hgetall(f"{base}:tpm")
    period = {k.decode(): int(v) for k, v in client.hgetall(f"{base}:p:{start}").items()}
    return {
        "requests_last_minute": client.zcount(f"{base}:req", now * 1000 - 60_000, "+inf"),
        "tokens_last_minute": sum(int(v) for k, v in buckets.items() if int(k) > int(now) - 60),
        "in_flight": int(client.get(f"{base}:conc") or 0),
        "period_tokens": period.get("tok", 0) + period.get("tokres", 0),
        "period_micros": period.get("cost", 0) + period.get("costres", 0),
    }
