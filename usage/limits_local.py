"""The in-process admission engine: embedded mode, and the fallback while Redis is down.

It keeps the Lua scripts' semantics (usage/limit_scripts.py). Checks and
reservations run with no await between them, so on one event loop they are
atomic just as the script is in Redis.
"""

import math
import time

from django.conf import settings

from gateway_project.lib import errors
from gateway_project.lib.orm_thread import run_orm

from . import limit_rules
from .limit_rules import Admission, LimitRule


def _fail_closed() -> errors.GatewayError:
    return errors.GatewayError(
        503, "Budgets cannot be checked right now, so this request is refused. Try again shortly.",
        type="server_error", code="limits_unavailable", headers={"retry-after": "5"},
    )


class LocalLimiter:
    def __init__(self) -> None:
        # rule id -> second -> [requests admitted in it, the last one's time in ms] (as the Lua script)
        self.requests: dict[int, dict[int, list]] = {}
        # rule id -> second -> tokens held in it
        self.tokens: dict[int, dict[int, int]] = {}
        self.inflight: dict[int, int] = {}
        # (rule id, period start) -> [tokens, reserved tokens, micros, reserved micros]
        self.periods: dict[tuple[int, int], list[int]] = {}
        self.reservations: dict[str, tuple[float, list[dict]]] = {}
        # rule id -> until when (epoch s) it reserves the largest answer (it settled an overrun)
        self.overruns: dict[int, float] = {}

    def reset(self) -> None:
        self.__init__()

    async def admit(self, admission: Admission) -> Admission:
        fallback = bool(settings.REDIS_URL)  # Redis is configured but unreachable
        now = time.time()
        for rule in admission.rules:
            if not rule.metered:
                continue
            if fallback:
                if not rule.credit_micros:
                    raise _fail_closed()
                self.periods.setdefault((rule.id, -1), [0, 0, 0, 0])
            else:
                start, end = limit_rules.period_bounds(rule, now)
                if (rule.id, start) not in self.periods:
                    tokens, micros = await run_orm(limit_rules.period_usage, rule, start, end)
                    self.periods.setdefault((rule.id, start), [tokens, 0, micros, 0])
        return self._check_and_reserve(admission, time.time(), fallback)

    def _check_and_reserve(self, admission: Admission, now: float, fallback: bool) -> Admission:
        self._reap(now)
        now_ms, sec = now * 1000, int(now)
        share = max(1, settings.GATEWAY_PROCESSES) if fallback else 1
        best_req, best_tok, plan = None, None, []
        for rule in admission.rules:
            minute = None  # tokens held in this minute
            trust = settings.LIMITS_TRUST_MAX_TOKENS and self.overruns.get(rule.id, 0) <= now
            rpm, tpm, conc = (limit_rules.share_of(math.ceil(x / share) if x else 0, admission.share)
                              for x in (rule.rpm, rule.tpm, rule.concurrency))
            if conc and self.inflight.get(rule.id, 0) + 1 > conc:
                raise limit_rules.refusal("concurrency_limit_exceeded", 1000, {})
            if rpm:
                seconds = self.requests.setdefault(rule.id, {})
                for s in [s for s, (_, last) in seconds.items() if s <= sec - 61 or last <= now_ms - 60_000]:
                    del seconds[s]
                used = sum(count for count, _ in seconds.values())
                # Room comes back when the oldest second's last request is 60 s old.
                reset = seconds[min(seconds)][1] + 60_000 - now_ms if seconds else 0
                if used + 1 > rpm:
                    raise limit_rules.refusal("rate_limit_exceeded", reset, {})
                if best_req is None or rpm - used - 1 < best_req[1]:
                    best_req = (rpm, rpm - used - 1, reset)
            if tpm:
                buckets = self.tokens.setdefault(rule.id, {})
                for s in [s for s in buckets if s <= sec - 60]:
                    del buckets[s]
                used = sum(buckets.values())
                reset = (min(buckets) + 60) * 1000 - now_ms if buckets else 0
                if used + admission.tokens > tpm:
                    raise limit_rules.refusal("tokens_per_minute_exceeded", max(reset, 1000), {})
                held = admission.tokens if trust else max(admission.tokens, min(admission.largest_tokens, tpm - used))
                if best_tok is None or tpm - used - held < best_tok[1]:
                    best_tok = (tpm, tpm - used - held, reset)
                minute = held
            period = self._period_check(rule, admission, now, fallback, trust) if rule.metered else None
            plan.append((rule, rpm, minute, conc, period, trust))
        entries = [self._reserve(admission, now_ms, sec, *step) for step in plan]
        self.reservations[admission.reservation] = (now_ms + limit_rules.RESERVATION_TTL_MS, entries)
        admission.headers = limit_rules.ratelimit_headers(best_req or (0, 0, 0), best_tok or (0, 0, 0))
        return admission

    def _period_check(self, rule: LimitRule, admission: Admission, now: float, fallback: bool, trust: bool):
        if fallback:
            key, quota, budget = (rule.id, -1), 0, rule.credit_micros
            end = 0
        else:
            start, end = limit_rules.period_bounds(rule, now)
            key, quota, budget = (rule.id, start), rule.token_quota, rule.budget_micros
        tok, tokres, cost, costres = self.periods[key]
        retry = end - now * 1000 if end else 0
        if quota and tok + tokres + admission.tokens > quota:
            raise limit_rules.refusal("quota_exceeded", retry, {})
        if budget and cost + costres + admission.micros > budget:
            raise limit_rules.refusal("budget_exceeded", retry, {})
        if trust:
            return key, admission.tokens, admission.micros
        # The largest answer, or what is left (as the Lua script).
        held_tok = max(admission.tokens, min(admission.largest_tokens, quota - tok - tokres)) if quota \
            else admission.tokens
        held_cost = max(admission.micros, min(admission.largest_micros, budget - cost - costres)) if budget \
            else admission.micros
        return key, held_tok, held_cost

    def _reserve(self, admission, now_ms, sec, rule, rpm, minute, conc, period, trust) -> dict:
        key, held_tok, held_cost = period or (None, admission.tokens, admission.micros)
        entry = {"id": rule.id, "tok": held_tok, "cost": held_cost}
        if trust:
            entry["est"] = admission.tokens  # an overrun of it is remembered
        if rpm:
            second = self.requests[rule.id].setdefault(sec, [0, 0])
            second[0], second[1] = second[0] + 1, max(second[1], now_ms)
        if minute is not None:
            self.tokens[rule.id][sec] = self.tokens[rule.id].get(sec, 0) + minute
            entry.update(sec=sec, ttok=minute)
        if conc:
            self.inflight[rule.id] = self.inflight.get(rule.id, 0) + 1
            entry["conc"] = True
        if key is not None:
            counters = self.periods[key]
            counters[1] += held_tok
            counters[3] += held_cost
            entry["period"] = key
        return entry

    def settle(self, admission: Admission, tokens: int, micros: int) -> list[tuple]:
        held = self.reservations.pop(admission.reservation, None)
        return self._settle_entries(held[1], tokens, micros) if held else []

    def _settle_entries(self, entries: list[dict], tokens: int | None, micros: int | None) -> list[tuple]:
        """Settle at the real usage; with None (an expired reservation), at what each entry reserved."""
        crossings = []
        for e in entries:
            if e.get("conc"):
                self.inflight[e["id"]] = max(0, self.inflight.get(e["id"], 0) - 1)
            if "sec" in e:
                used = e["ttok"] if tokens is None else tokens
                if e["sec"] in self.tokens.get(e["id"], {}):
                    self.tokens[e["id"]][e["sec"]] += used - e["ttok"]
            if "est" in e and tokens is not None and tokens > e["est"] + max(64, e["est"] // 4):
                self.overruns[e["id"]] = time.time() + settings.LIMITS_OVERRUN_MEMORY
            if "period" in e and e["period"] in self.periods:
                counters = self.periods[e["period"]]
                before = (counters[0], counters[2])
                counters[0] += e["tok"] if tokens is None else tokens
                counters[1] -= e["tok"]
                counters[2] += e["cost"] if micros is None else micros
                counters[3] -= e["cost"]
                crossings.append((e["id"], before[0], counters[0], before[1], counters[2]))
        return crossings

    def current_use(self, rule: LimitRule, now: float, start: int) -> dict[str, int]:
        tok, tokres, cost, costres = self.periods.get((rule.id, start), [0, 0, 0, 0])
        return {
            "requests_last_minute": sum(n for s, (n, last) in self.requests.get(rule.id, {}).items()
                                        if s > int(now) - 61 and last > now * 1000 - 60_000),
            "tokens_last_minute": sum(v for s, v in self.tokens.get(rule.id, {}).items() if s > int(now) - 60),
            "in_flight": self.inflight.get(rule.id, 0),
            "period_tokens": tok + tokres,
            "period_micros": cost + costres,
        }

    def _reap(self, now: float) -> None:
        expired = [r for r, (expiry, _) in self.reservations.items() if expiry <= now * 1000]
        for reservation in expired:
            _, entries = self.reservations.pop(reservation)
            self._settle_entries(entries, None, None)


local = LocalLimiter()
