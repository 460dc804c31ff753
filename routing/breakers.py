"""Circuit breakers per deployment, shared by every gateway process.

A breaker opens after BREAKER_FAILURES consecutive failures, or when more than
BREAKER_FAILURE_RATE of at least BREAKER_MIN_CALLS calls in the last minute
failed, or at once on a 429 (for its Retry-After). While open, the deployment
gets no traffic. After BREAKER_COOLDOWN seconds one call is let through as a
probe (half-open): success closes the breaker, failure opens it again.

Every process decides locally, with no Redis round trip per request; state
changes travel through Redis (a key per open breaker, plus pub/sub so other
processes apply them at once), and each change is kept as a CircuitEvent for
the admin.
"""

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

import redis
from django.conf import settings

from gateway_project.lib import config_cache, metrics, redis_health
from gateway_project.lib.orm_thread import run_orm
from gateway_project.lib.redis_pool import async_redis, channel, sync_redis

from .models import CircuitEvent

log = logging.getLogger(__name__)

CHANNEL = channel("breaker")


def _key(deployment_id: int) -> str:
    # One hash tag for every breaker: one MGET reads them all, on a cluster too.
    return f"gw:{{cb}}:{deployment_id}"


@dataclass(slots=True)
class Breaker:
    open_until: float = 0.0  # epoch seconds; 0 = closed
    consecutive: int = 0
    calls: deque = field(default_factory=deque)  # (time, ok)
    probing: bool = False


_breakers: dict[int, Breaker] = {}


def _get(deployment_id: int) -> Breaker:
    breaker = _breakers.get(deployment_id)
    if breaker is None:
        breaker = _breakers[deployment_id] = Breaker()
    return breaker


class State(StrEnum):
    """A breaker's state, one spelling everywhere (the metric's code is CODES[state])."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # the cooldown is over: the next call probes


CODES = {State.CLOSED: 0, State.OPEN: 1, State.HALF_OPEN: 2}


def _state_at(open_until: float, now: float) -> State:
    if not open_until:
        return State.CLOSED
    return State.OPEN if now < open_until else State.HALF_OPEN


def state(deployment_id: int) -> State:
    b = _breakers.get(deployment_id)
    return _state_at(b.open_until if b is not None else 0.0, time.time())


def describe(state_: State, open_until: float = 0.0) -> str:
    """The state in words, for the admin and the dashboard."""
    if state_ is State.OPEN:
        return "open until " + time.strftime("%H:%M:%S UTC", time.gmtime(open_until))
    return "half-open (next call probes)" if state_ is State.HALF_OPEN else "closed"


def allows(deployment_id: int) -> bool:
    """Whether a call may go to this deployment now (claims the probe when half-open)."""
    b = _breakers.get(deployment_id)
    if b is None or not b.open_until:
        return True
    if time.time() < b.open_until or b.probing:
        return False
    b.probing = True  # this call is the probe
    return True


def record(deployment_id: int, ok: bool, *, retry_after: float | None = None, reason: str = "") -> None:
    b = _get(deployment_id)
    now = time.time()
    b.calls.append((now, ok))
    while b.calls and b.calls[0][0] < now - 60:
        b.calls.popleft()
    if ok:
        was_open = bool(b.open_until)
        b.consecutive, b.probing = 0, False
        if was_open:
            _change(deployment_id, 0.0, State.CLOSED, "probe succeeded")
        return
    b.consecutive += 1
    b.probing = False
    if retry_after:
        _change(deployment_id, now + retry_after, State.OPEN, f"429: cooling down {retry_after:g}s")
    elif b.open_until:
        _change(deployment_id, now + settings.BREAKER_COOLDOWN, State.OPEN, f"probe failed: {reason}")
    elif b.consecutive >= settings.BREAKER_FAILURES:
        _change(deployment_id, now + settings.BREAKER_COOLDOWN, State.OPEN,
                f"{b.consecutive} consecutive failures: {reason}")
    elif len(b.calls) >= settings.BREAKER_MIN_CALLS:
        failed = sum(1 for _, good in b.calls if not good) / len(b.calls)
        if failed > settings.BREAKER_FAILURE_RATE:
            _change(deployment_id, now + settings.BREAKER_COOLDOWN, State.OPEN,
                    f"{failed:.0%} of {len(b.calls)} calls failed in a minute")


def apply(deployment_id: int, open_until: float) -> None:
    """A change announced by another process."""
    b = _get(deployment_id)
    b.open_until = open_until
    b.probing = False
    if not open_until:
        b.consecutive = 0


def force(deployment_id: int, open_until: float, new_state: State, reason: str) -> None:
    """Open or close a breaker from outside the request path (health checks)."""
    _change(deployment_id, open_until, new_state, reason)


def _change(deployment_id: int, open_until: float, new_state: State, reason: str) -> None:
    apply(deployment_id, open_until)
    metrics.inc("gateway_circuit_breaker_transitions_total", str(deployment_id), new_state)
    log.warning("breaker for deployment %s: %s (%s)", deployment_id, new_state, reason)
    if settings.REDIS_URL and redis_health.down:
        # Synchronous, on the event loop: a hanging Redis would stall every call.
        log.warning("breaker change for %s not shared: Redis unreachable", deployment_id)
    elif settings.REDIS_URL:
        try:
            client = sync_redis()
            if open_until:
                client.set(_key(deployment_id), open_until, exat=int(open_until) + 3600)
            else:
                client.delete(_key(deployment_id))
            client.publish(CHANNEL, f"{deployment_id}:{open_until}")
        except (redis.RedisError, OSError) as exc:
            redis_health.failed(exc)
            log.warning("breaker change for %s not shared: Redis unreachable", deployment_id)
    _log_event(deployment_id, new_state, reason)


def _log_event(deployment_id: int, new_state: str, reason: str) -> None:
    def write() -> None:
        CircuitEvent.objects.create(deployment_id=deployment_id, state=new_state, reason=reason[:200])

    try:
        asyncio.get_running_loop().create_task(run_orm(write))
    except RuntimeError:
        write()


def on_message(data: str) -> None:
    deployment_id, _, open_until = data.partition(":")
    apply(int(deployment_id), float(open_until))


def shared(deployment_id: int) -> tuple[State, float]:
    """The fleet's view (Redis): (state, open until), for processes that route nothing (the admin,
    the health checks). Raises RedisError when Redis does not answer."""
    if not settings.REDIS_URL:
        b = _breakers.get(deployment_id)
        until = b.open_until if b is not None else 0.0
    else:
        value = sync_redis().get(_key(deployment_id))
        until = float(value) if value else 0.0
    return _state_at(until, time.time()), until


def shared_state(deployment_id: int) -> str:
    """The fleet's view in words, for the admin."""
    try:
        return describe(*shared(deployment_id))
    except (redis.RedisError, OSError):
        return "unknown (Redis unreachable)"


def health_checked(deployment_id: int, ok: bool, error: str) -> None:
    """A health check's result (providers/health.py): a failed probe opens a closed or half-open breaker,
    a passing one closes a half-open breaker, never an open one (docs/routing.md, "Health checks")."""
    try:
        current, _ = shared(deployment_id)
    except (redis.RedisError, OSError):
        log.warning("health check of deployment %s not fed to its breaker: Redis unreachable", deployment_id)
        return
    if ok and current is State.HALF_OPEN:
        force(deployment_id, 0.0, State.CLOSED, "health check passed")
    elif not ok and current in (State.CLOSED, State.HALF_OPEN):
        force(deployment_id, time.time() + settings.BREAKER_COOLDOWN, State.OPEN, f"health check failed: {error}")


async def fleet_states(deployment_ids: list[int]) -> dict[int, int]:
    """Each deployment's breaker as the fleet sees it, for /metrics: 0 closed, 1 open, 2 half-open."""
    if not settings.REDIS_URL or not deployment_ids:
        return {d: CODES[state(d)] for d in deployment_ids}
    values = await async_redis().mget([_key(d) for d in deployment_ids])
    now = time.time()
    return {d: CODES[_state_at(float(v) if v else 0.0, now)] for d, v in zip(deployment_ids, values, strict=True)}


def load_shared() -> None:
    """Read every open breaker from Redis (at startup and after reconnecting)."""
    client = sync_redis()
    for key in client.scan_iter("gw:{cb}:*"):
        value = client.get(key)
        if value:
            apply(int(key.decode().split(":")[2]), float(value))


# Every process follows other processes' breaker changes through the config listener.
config_cache.subscribe(CHANNEL, on_message, resync=load_shared)
