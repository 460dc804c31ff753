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
import time
import uuid
import weakref

import orjson
import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from gateway_project.lib import config_cache, errors, redis_batch, redis_health, redis_keys
from gateway_project.lib.orm_thread import run_orm
from gateway_project.lib.redis_pool import async_redis, sync_redis
from gateway_project.lib.settings_cache import conf

from . import alerts, limit_rules, limit_scripts, recorder
from .limit_rules import (  # noqa: F401
    REFUSALS,
    Admission,
    LimitRule,
    period_bounds,
    period_usage,
    ratelimit_headers,
    refusal,
    share_of,
    to_micros,
)
from .limits_local import local
from .models import Limit

log = logging.getLogger(__name__)

# --- the rules cache -------------------------------------------------------------

def _load_rules() -> dict[int, list[LimitRule]]:
    table: dict[int, list[LimitRule]] = {}
    for row in Limit.objects.select_related("tenant"):
        table.setdefault(row.tenant_id, []).append(LimitRule(
            id=row.id, tenant_id=row.tenant_id, key_id=row.api_key_id, model=row.model,
            rpm=row.requests_per_minute or 0, tpm=row.tokens_per_minute or 0,
            concurrency=row.max_concurrent or 0, period=row.period, token_quota=row.token_quota or 0,
            budget_micros=to_micros(row.budget_usd), credit_micros=to_micros(row.offline_credit_usd),
            thresholds=tuple(sorted(float(t) for t in row.alert_thresholds or ())), tz=row.tenant.time_zone,
        ))
    return table


_rules = config_cache.Reloaded("limits", _load_rules, "limits")


async def rules_for(tenant_id: int, key_id: int, model: str) -> list[LimitRule]:
    return [r for r in (await _rules.get()).get(tenant_id, ()) if r.applies(key_id, model)]


def _rule_args(rule: LimitRule, now: float, admission: Admission) -> list:
    start, end = period_bounds(rule, now) if rule.metered else (0, 0)
    rpm, tpm, concurrency = (share_of(x, admission.share) for x in (rule.rpm, rule.tpm, rule.concurrency))
    return [rule.id, rpm, tpm, concurrency, rule.token_quota, rule.budget_micros,
            start, end, admission.tokens, admission.micros, admission.largest_tokens, admission.largest_micros]


async def admit(tenant_id: int, key_id: int, model: str, estimate, inflight=None,
                read: tuple[str, int, str] | None = None, share: float = 1.0) -> Admission | None:
    """Check and reserve, or raise a 429 GatewayError. None when no limit applies.

    `estimate()` gives (tokens, micro-dollars) to reserve; it is only called
    when some limit applies, since counting tokens costs CPU. `inflight()`, if
    given, gives the call's in-flight entry (hash, request id, event;
    usage/inflight.py), which the Redis script writes when it admits: in the
    same round trip, not one more. `read`, (key, TTL to renew it at or 0, a sorted set to
    record its renewed expiry in or ""), is a
    key the Redis script reads once it admits, in that round trip too: its value
    is the admission's `read_value` (and `read_key` the key; "" when the script
    did not run, so the caller reads it itself). `share` (under 1: a batch line) is the part of each
    rate limit the call may fill; the counters are the same, so what it uses is gone for live calls too.
    """
    rules = await rules_for(tenant_id, key_id, model)
    if not rules:
        return None
    tokens, micros, *largest = estimate()
    largest_tokens, largest_micros = largest or (tokens, micros)
    admission = Admission(uuid.uuid4().hex, rules, tokens, micros, "redis",
                          largest_tokens=max(tokens, largest_tokens), largest_micros=max(micros, largest_micros),
                          share=share)
    if conf.REDIS_URL and not redis_health.down_for(where := redis_keys.reservations(tenant_id)):
        try:
            return await _admit_redis(admission, inflight() if inflight else (), read)
        except errors.GatewayError:
            raise  # the limits' own refusal (a 429), not a failure of Redis
        except Exception as exc:  # noqa: BLE001 - not only redis-py's errors (recorder.record says why)
            redis_health.failed(exc, where)
            log.warning("limits: Redis unreachable (%s), enforcing the offline policy", exc)
    admission.engine = "local"
    return await local.admit(admission)


async def _admit_redis(admission: Admission, entry: tuple = (), read: tuple[str, int, str] | None = None) -> Admission:
    for _ in range(3):
        now = time.time()
        args = [int(now * 1000), admission.reservation, limit_rules.RESERVATION_TTL_MS, len(admission.rules),
                int(conf.LIMITS_OVERRUN_MEMORY * 1000), int(conf.LIMITS_TRUST_MAX_TOKENS)]
        for rule in admission.rules:
            args += _rule_args(rule, now, admission)
        args += entry or ("", "", "")
        if read is not None:
            args += read
        result = await redis_batch.run_script((await _loaded_scripts()).admit,
                                              [redis_keys.reservations(admission.tenant_id)], args)
        status, code, retry = int(result[0]), result[1].decode(), float(result[2])
        if status == 1:
            admission.headers = ratelimit_headers(tuple(int(x) for x in result[4:7]),
                                                   tuple(int(x) for x in result[7:10]))
            if read is not None:
                admission.read_key, admission.read_value = read[0], result[10]
            admission.held = result[11]
            return admission
        if status == 0:
            raise refusal(code, retry, {})
        rule = next(r for r in admission.rules if str(r.id) == result[3].decode())
        await _rebuild(rule, now)
    raise errors.GatewayError(503, "Limits could not be checked; try again.", type="server_error",
                              code="limits_unavailable")


async def _rebuild(rule: LimitRule, now: float) -> None:
    start, end = period_bounds(rule, now)
    tokens, micros = await run_orm(period_usage, rule, start, end)
    key = redis_keys.limit_key(rule.tenant_id, rule.id, f"p:{start}")
    await _scripts().rebuild(keys=[key], args=[tokens, micros, end + 86_400_000 if end else 0])
    log.info("limits: rebuilt %s from the database (%d tokens, %d micro-USD)", key, tokens, micros)


async def settle(admission: Admission | None, tokens: int, micros: int, event: bytes | None = None,
                 inflight: tuple[str, str] | None = None, writes: tuple = ()) -> bool:
    """Replace the reservation with real usage (exactly once) and raise threshold alerts.

    With Redis, `event` (a serialized usage event) is appended to the usage
    buffer in the same script, the `inflight` entry (hash, request id) of
    its stream deleted, and `writes` ((key, value, TTL in seconds, a sorted set to record its
    expiry in or "") each) set;
    returns whether the event was buffered (the writes were then set too).
    """
    if admission is None or admission.settled:
        return False
    admission.settled = True
    if admission.engine == "redis":
        where = redis_keys.reservations(admission.tenant_id)
        if redis_health.down_for(where):
            return False  # the reservation expires and is settled at what it reserved
        try:
            args = [admission.held, tokens, micros]
            if event is not None or writes:
                args += [event or "", *(inflight or ("", ""))]
            for write in writes:
                args += write
            stream = redis_keys.usage_stream(redis_keys.shard_of(admission.tenant_id))
            scripts = await _loaded_scripts()
            if event is not None and conf.REDIS_WAIT_REPLICAS:
                result = await _settle_replicated(scripts, [where, stream], args, event)
            else:
                result = await redis_batch.run_script(scripts.settle, [where, stream], args)
        except Exception as exc:  # noqa: BLE001 - not only redis-py's errors (recorder.record says why)
            # The reservation expires and is settled at what it reserved; the caller buffers the event.
            redis_health.failed(exc, where)
            log.warning("limits: could not settle %s (%s); it will settle at what it reserved", admission.reservation, exc)
            return False
        _alert_crossings(admission, [tuple(int(x) for x in row) for row in result])
        return event is not None
    _alert_crossings(admission, local.settle(admission, tokens, micros))
    return False


async def _settle_replicated(scripts: "_Scripts", keys: list, args: list, event: bytes) -> list:
    """SETTLE and WAIT in one round trip; an event fewer replicas than asked confirmed is also kept
    by this process (usage.recorder.keep_unless_replicated)."""
    async with async_redis().pipeline(transaction=False) as pipe:
        await scripts.settle(keys=keys, args=args, client=pipe)
        pipe.wait(settings.REDIS_WAIT_REPLICAS, settings.REDIS_WAIT_MS)
        result, replicas = await pipe.execute()
    recorder.keep_unless_replicated(orjson.loads(event), replicas)
    return result


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
        self.loaded = not isinstance(client, AsyncRedisCluster)

    async def load(self, client) -> None:
        # On a cluster, loaded on every master before the first call: redis-py's cluster client
        # recovers badly from many calls meeting NOSCRIPT at once (it drops connections in use).
        for script in (self.admit, self.settle, self.rebuild):
            await client.script_load(script.script)
        self.loaded = True


_scripts_by_client: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def _loaded_scripts() -> _Scripts:
    scripts = _scripts()
    if not scripts.loaded:
        await scripts.load(async_redis())
    return scripts


def _scripts() -> _Scripts:
    client = async_redis()
    scripts = _scripts_by_client.get(client)
    if scripts is None:
        scripts = _scripts_by_client[client] = _Scripts(client)
    return scripts




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


def _current_use_redis(rule: LimitRule, now: float, start: int) -> dict[str, int]:
    client = sync_redis()

    def key(suffix: str) -> str:
        return redis_keys.limit_key(rule.tenant_id, rule.id, suffix)

    window = {k.decode(): int(v) for k, v in client.hgetall(key("win")).items()}
    period = {k.decode(): int(v) for k, v in client.hgetall(key(f"p:{start}")).items()}
    seconds = {kind: {int(k[1:]): v for k, v in window.items() if k[0] == kind and k[1:].isdigit()} for kind in "rmt"}
    return {
        # As the admission script counts them (usage/limit_scripts.py): a second's requests until its
        # last one is 60 s old, a second's tokens for 60 seconds.
        "requests_last_minute": sum(n for s, n in seconds["r"].items() if seconds["m"].get(s, 0) > now * 1000 - 60_000),
        "tokens_last_minute": sum(n for s, n in seconds["t"].items() if s > int(now) - 60),
        "in_flight": int(client.get(key("conc")) or 0),
        "period_tokens": period.get("tok", 0) + period.get("tokres", 0),
        "period_micros": period.get("cost", 0) + period.get("costres", 0),
    }
