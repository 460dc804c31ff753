"""The operator's endpoints, answered before Django (like the API, see asgi.py).

- GET /healthz: liveness. The process serves; nothing else is checked.
- GET /readyz: readiness. The database and Redis answer and the usage buffer
  is not backed up (READY_MAX_USAGE_BACKLOG events, READY_MAX_USAGE_LAG
  seconds). 200 or 503, with each check's result. The answer is cached for a
  second, so a load balancer may poll it as often as it likes.
- GET /metrics: Prometheus text format for the whole fleet (gateway_project.lib.metrics),
  for a bearer METRICS_TOKEN or a client address in METRICS_ALLOW.
"""

import asyncio
import hmac
import ipaddress
import time
from functools import cache

import orjson
from django.conf import settings
from django.db import connection

from gateway_project.lib import metrics, redis_health
from gateway_project.lib.orm_thread import run_orm
from gateway_project.lib.redis_pool import async_redis, redis_failures
from routing import breakers, table
from usage import recorder

PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
READY_CACHE_SECONDS = 1.0
CHECK_TIMEOUT = 2.0
# While this process finds Redis down (redis_health), readiness says so at once instead of waiting on it.
REDIS_DOWN = "unreachable: this process serves without it until it answers a PING"


async def handle(scope, receive, send) -> None:
    if scope["method"] not in ("GET", "HEAD"):
        await _answer(scope, send, 405, b'{"error": "use GET"}', headers=[(b"allow", b"GET, HEAD")])
    elif scope["path"] == "/healthz":
        await _answer(scope, send, 200, b'{"status": "ok"}')
    elif scope["path"] == "/readyz":
        status, body = await readiness()
        await _answer(scope, send, status, body)
    elif not _may_scrape(scope):
        await _answer(scope, send, 401, b"metrics need a bearer token or an allowed address\n", "text/plain",
                      [(b"www-authenticate", b'Bearer realm="metrics"')])
    elif settings.REDIS_URL and redis_health.down:  # answer now, not after Redis's timeout
        await _answer(scope, send, 503, b"metrics store (Redis) unreachable\n", "text/plain")
    else:
        try:
            text = await scrape()
        except redis_failures:
            await _answer(scope, send, 503, b"metrics store (Redis) unreachable\n", "text/plain")
            return
        await _answer(scope, send, 200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")


async def _answer(scope, send, status: int, body: bytes, content_type: str = "application/json",
                  headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), *(headers or ())]})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


# --- /metrics ---------------------------------------------------------------------


@cache
def _networks() -> tuple:
    return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in settings.METRICS_ALLOW if n.strip())


def _may_scrape(scope) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token.encode()):
                    return True
    client = scope.get("client")
    if not client or not _networks():
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    return any(address in network for network in _networks())


async def scrape() -> str:
    fields, processes, last_runs = await metrics.collect()
    deployments = {t.deployment_id: t for targets in (await table.current()).by_model.values() for t in targets}
    ids = sorted(deployments)
    states = await breakers.fleet_states(ids)
    backlog, lag = await recorder.buffer_state()
    extra = [
        ("gateway_circuit_breaker_state", "gauge",
         "Each deployment's circuit breaker as the fleet sees it: 0 closed, 1 open, 2 half-open (next call probes).",
         ("deployment", "provider", "model"),
         [((str(d), deployments[d].provider_name, deployments[d].public_model), states[d]) for d in ids]),
        ("gateway_usage_buffer_events", "gauge", "Usage events buffered and not yet written to the database.",
         (), [((), backlog)]),
        ("gateway_usage_drain_lag_seconds", "gauge", "How long the oldest buffered usage event has waited.",
         (), [((), round(lag, 3))]),
    ]
    return metrics.render(fields, processes, last_runs, extra)


# --- /readyz ----------------------------------------------------------------------

_ready: tuple[float, int, bytes] | None = None
_ready_lock: asyncio.Lock | None = None
_db_check: asyncio.Future | None = None


async def readiness() -> tuple[int, bytes]:
    global _ready, _ready_lock
    if _ready is not None and time.monotonic() - _ready[0] < READY_CACHE_SECONDS:
        return _ready[1], _ready[2]
    _ready_lock = _ready_lock or asyncio.Lock()
    async with _ready_lock:  # one check at a time, however many pollers
        if _ready is None or time.monotonic() - _ready[0] >= READY_CACHE_SECONDS:
            database, redis_state, buffer = await asyncio.gather(_database(), _redis(), _usage_buffer())
            checks = {"database": database, "redis": redis_state, "usage_buffer": buffer}
            ok = all(c == "ok" or c.startswith("ok ") for c in checks.values())
            body = orjson.dumps({"status": "ready" if ok else "unready", "checks": checks})
            _ready = (time.monotonic(), 200 if ok else 503, body)
    return _ready[1], _ready[2]


def _select_one() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _database() -> str:
    global _db_check
    # A database that hangs must not pile up checks on the ORM threads: wait for the one running.
    if _db_check is None or _db_check.done():
        _db_check = asyncio.ensure_future(run_orm(_select_one))
    try:
        await asyncio.wait_for(asyncio.shield(_db_check), CHECK_TIMEOUT)
    except TimeoutError:
        return "unreachable: no answer in time"
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


async def _redis() -> str:
    if not settings.REDIS_URL:
        return "ok (not used: embedded mode)"
    if redis_health.down:
        return REDIS_DOWN
    try:
        await asyncio.wait_for(async_redis().ping(), CHECK_TIMEOUT)
    except redis_failures as exc:
        redis_health.failed(exc)
        return f"unreachable: {type(exc).__name__}"
    return "ok"


async def _usage_buffer() -> str:
    if settings.REDIS_URL and redis_health.down:
        return REDIS_DOWN
    try:
        backlog, lag = await asyncio.wait_for(recorder.buffer_state(), CHECK_TIMEOUT)
    except redis_failures as exc:
        return f"unreachable: {type(exc).__name__}"
    held = recorder.held()
    if backlog > settings.READY_MAX_USAGE_BACKLOG or held > settings.READY_MAX_USAGE_BACKLOG:
        return f"backed up: {backlog} events buffered, {held} held in this process"
    if lag > settings.READY_MAX_USAGE_LAG:
        return f"backed up: the oldest event has waited {lag:.0f} s"
    return f"ok ({backlog} events, oldest {lag:.1f} s)"
