"""Prometheus metrics, counted per process and added up across the fleet.

The hot path only touches plain dicts in this process (no lock: the event loop
runs one callback at a time). Once a second each gateway process adds what it
counted since the last push to one Redis hash (HINCRBYFLOAT), so counters and
histograms are fleet-wide and survive a process that dies or restarts; gauges
(requests in flight, open streams) are per process, pushed with a timestamp
and summed over the processes that pushed recently. Jobs (Celery, the usage
drain) add to the same hash directly. `GET /metrics` (gateway_project.operator)
reads it all back in one round trip. Without Redis (embedded mode) the one
process keeps its own totals.

prometheus_client's multiprocess mode was the alternative: it writes every
increment to a memory-mapped file under a lock, and needs a directory shared
by the workers and cleaned of dead processes; these dict increments are
cheaper and Redis is there anyway.

Labels carry only bounded values: endpoint, route and model names from the
routing table, provider names, HTTP status, error class, limit codes, task
names. Never a key, a prompt, a tenant or a request id.
"""

import asyncio
import logging
import os
import socket
import threading
import time
from bisect import bisect_left

import orjson
import redis
from django.conf import settings

from gateway_project.lib.redis_pool import async_redis, redis_failures, sync_redis

log = logging.getLogger(__name__)

COUNTERS_KEY = "gw:metrics:c"  # field: JSON [name, *label values] -> value
GAUGES_KEY = "gw:metrics:procs"  # field: process -> JSON {"ts": push time, "g": {series field: value}}
LAST_RUN_KEY = "gw:metrics:last"  # field: task name -> epoch seconds of its last success
PROC = f"{socket.gethostname()}-{os.getpid()}"
LIVE_SECONDS = 5.0  # a process that has not pushed for this long no longer counts in gauges

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

# name -> (type, help, label names, buckets)
SPECS: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {
    "gateway_requests_total": (
        "counter", "API requests answered, by endpoint, route, model, provider, HTTP status and error class.",
        ("endpoint", "route", "model", "provider", "status", "error"), ()),
    "gateway_tokens_total": (
        "counter", "Tokens billed, by type (input, output, cached: the part of input served from cache).",
        ("model", "provider", "type"), ()),
    "gateway_cost_usd_total": ("counter", "Cost billed in US dollars.", ("model", "provider"), ()),
    "gateway_request_duration_seconds": (
        "histogram", "Whole request duration inside the gateway (a stream: until its last event).",
        ("endpoint", "streamed"), LATENCY_BUCKETS),
    "gateway_upstream_latency_seconds": (
        "histogram", "From sending the request upstream to its last byte, for the deployment that answered.",
        ("model", "provider"), LATENCY_BUCKETS),
    "gateway_overhead_seconds": (
        "histogram", "Time the gateway itself added: the request's duration less the time waiting on upstreams.",
        ("endpoint",), OVERHEAD_BUCKETS),
    "gateway_time_to_first_token_seconds": (
        "histogram", "Streams: from the request's arrival to the first content event relayed.",
        ("model", "provider"), LATENCY_BUCKETS),
    "gateway_upstream_attempts_total": (
        "counter", "Calls to upstream deployments (retries and fallbacks included), by outcome.",
        ("provider", "outcome"), ()),
    "gateway_retries_total": ("counter", "Attempts that retried the same deployment.", ("provider",), ()),
    "gateway_fallbacks_total": (
        "counter", "Attempts that moved on to another deployment, by the provider fallen back to.", ("provider",), ()),
    "gateway_hedges_total": ("counter", "Hedged second calls started.", ("provider",), ()),
    "gateway_guardrail_decisions_total": (
        "counter", "Guardrail checks run, by kind and what they did (passed, blocked, redacted, flagged, refused "
                   "or failed_open when the check itself failed).", ("check", "action"), ()),
    "gateway_circuit_breaker_transitions_total": (
        "counter", "Circuit breaker changes decided by a gateway process.", ("deployment", "state"), ()),
    "gateway_limit_refusals_total": (
        "counter", "Requests refused by a rate limit, quota or budget, by the code answered.", ("code",), ()),
    "gateway_usage_events_written_total": (
        "counter", "Usage events written to the database by the drainers.", (), ()),
    "gateway_usage_drain_failures_total": ("counter", "Usage drain runs that failed and will retry.", (), ()),
    "gateway_usage_dead_letters_total": (
        "counter", "Usage events the database refused even on their own, kept as dead letters.", (), ()),
    "gateway_spend_anomalies_total": (
        "counter", "Spend anomalies found (usage.anomalies), by what rose first: spend or requests.", ("metric",), ()),
    "gateway_job_runs_total": ("counter", "Celery job runs, by task and outcome.", ("task", "outcome"), ()),
    "gateway_usage_unreplicated_total": (
        "counter", "Usage events no replica confirmed in REDIS_WAIT_MS, kept and written by their process too.",
        (), ()),
    "gateway_redis_unreachable_total": (
        "counter", "Times a gateway process found Redis unreachable and served without it until a PING answered.",
        (), ()),
    "gateway_db_replica_fallbacks_total": (
        "counter", "Reads meant for the database replica that the primary served, by reason (unreachable: the "
                   "replica did not answer; failed: it answered but failed the query; lag: it was more than "
                   "DATABASE_REPLICA_MAX_LAG_SECONDS behind).", ("reason",), ()),
    "gateway_cache_lookups_total": (
        "counter", "Response cache lookups, by endpoint, kind (exact, semantic) and result (hit, miss, bypass).",
        ("endpoint", "kind", "result"), ()),
    "gateway_cache_stores_total": ("counter", "Answers written to the response cache, by endpoint.",
                                   ("endpoint",), ()),
    "gateway_cache_evictions_total": (
        "counter", "Response cache entries removed before their time, by reason (purge, capacity).",
        ("reason",), ()),
    "gateway_cache_lookup_seconds": (
        "histogram", "Time of one response cache lookup, by kind (exact, semantic).", ("kind",),
        (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)),
    "gateway_requests_in_flight": ("gauge", "Requests being served right now.", (), ()),
    "gateway_open_streams": ("gauge", "Streams being relayed right now.", (), ()),
    "gateway_usage_events_held": (
        "gauge", "Usage events held in gateway processes while Redis was unreachable.", (), ()),
}

_BUCKETS = {name: spec[3] for name, spec in SPECS.items()}

# What the hot path adds to; emptied into Redis (or _totals) by push().
# Finished calls, by (endpoint, route, model, provider, status, error): [calls, input tokens,
# output tokens, cached tokens, cost]; spread over their metrics at push time, not per call.
_calls: dict[tuple, list] = {}
_counts: dict[tuple, float] = {}
_histograms: dict[tuple, list[float]] = {}  # per bucket counts, then +Inf, then the sum
_gauges: dict[str, float] = {"gateway_requests_in_flight": 0, "gateway_open_streams": 0}
# Embedded mode: everything pushed so far. Jobs running in other threads add here under the lock.
_totals: dict[tuple, float] = {}
_totals_lock = threading.Lock()


def inc(name: str, *labels: str, by: float = 1) -> None:
    key = (name, *labels)
    _counts[key] = _counts.get(key, 0) + by


def count_call(labels: tuple, input_tokens: int, output_tokens: int, cached_tokens: int, cost: float) -> None:
    """One finished API call; `labels` as gateway_requests_total's."""
    entry = _calls.get(labels)
    if entry is None:
        entry = _calls[labels] = [0, 0, 0, 0, 0.0]
    entry[0] += 1
    entry[1] += input_tokens
    entry[2] += output_tokens
    entry[3] += cached_tokens
    entry[4] += cost


def observe(name: str, value: float, *labels: str) -> None:
    key = (name, *labels)
    counts = _histograms.get(key)
    buckets = _BUCKETS[name]
    if counts is None:
        counts = _histograms[key] = [0] * (len(buckets) + 2)
    counts[bisect_left(buckets, value)] += 1
    counts[-1] += value


def gauge_add(name: str, by: float) -> None:
    _gauges[name] += by


def gauge_set(name: str, value: float) -> None:
    _gauges[name] = value


def _field(key: tuple) -> bytes:
    return orjson.dumps(key)


def _drain_local() -> dict[bytes, float]:
    """Take what this process counted since the last push, as hash fields."""
    global _calls, _counts, _histograms
    calls, counts, histograms = _calls, _counts, _histograms
    _calls, _counts, _histograms = {}, {}, {}
    for labels, (n, input_tokens, output_tokens, cached_tokens, cost) in calls.items():
        key = ("gateway_requests_total", *labels)
        counts[key] = counts.get(key, 0) + n
        model, provider = labels[2], labels[3]
        for kind, value in (("input", input_tokens), ("output", output_tokens), ("cached", cached_tokens)):
            if value:
                key = ("gateway_tokens_total", model, provider, kind)
                counts[key] = counts.get(key, 0) + value
        if provider:
            key = ("gateway_cost_usd_total", model, provider)
            counts[key] = counts.get(key, 0) + cost
    fields: dict[bytes, float] = {_field(k): v for k, v in counts.items()}
    for key, values in histograms.items():
        for i, n in enumerate(values[:-1]):
            if n:
                fields[_field((*key, "le", i))] = n
        fields[_field((*key, "sum"))] = values[-1]
    return fields


def _restore(fields: dict[bytes, float]) -> None:
    """Put back fields a push could not deliver (Redis unreachable): they go next time."""
    with _totals_lock:
        for field, value in fields.items():
            _unpushed[field] = _unpushed.get(field, 0) + value


_unpushed: dict[bytes, float] = {}


async def push() -> None:
    """Add this process's counts to the fleet's (or, embedded, to this process's totals)."""
    fields = _drain_local()
    with _totals_lock:
        for field, value in _unpushed.items():
            fields[field] = fields.get(field, 0) + value
        _unpushed.clear()
    if not settings.REDIS_URL:
        with _totals_lock:
            for field, value in fields.items():
                _totals[field] = _totals.get(field, 0) + value
        return
    gauges = orjson.dumps({"ts": time.time(), "g": _gauges})
    try:
        async with async_redis().pipeline(transaction=False) as pipe:
            for field, value in fields.items():
                pipe.hincrbyfloat(COUNTERS_KEY, field, value)
            pipe.hset(GAUGES_KEY, PROC, gauges)
            await pipe.execute()
    except redis_failures:
        _restore(fields)
        raise


async def push_forever(stop: asyncio.Event, sample=None, on_redis_error=None) -> None:
    """Push every METRICS_PUSH_INTERVAL; `sample()` first sets gauges read rather than counted.
    `on_redis_error(exc)` hears of a push Redis did not take (the health memo, redis_health.failed)."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.METRICS_PUSH_INTERVAL)
        except TimeoutError:
            pass
        if sample is not None:
            sample()
        try:
            await push()
        except redis_failures as exc:
            if on_redis_error is not None:
                on_redis_error(exc)  # noticed here, the hot path need not wait to find out
            log.debug("metrics: Redis unreachable; counts kept for the next push")


async def leave() -> None:
    """At shutdown: push the last counts and take this process's gauges out."""
    _gauges.update({name: 0 for name in _gauges})
    await push()
    if settings.REDIS_URL:
        await async_redis().hdel(GAUGES_KEY, PROC)


def shared_inc(name: str, *labels: str, by: float = 1) -> None:
    """Count from code that runs outside the event loop (jobs, drains, Celery): straight to Redis."""
    field = _field((name, *labels))
    if settings.REDIS_URL:
        try:
            sync_redis().hincrbyfloat(COUNTERS_KEY, field, by)
            return
        except (redis.RedisError, OSError):
            pass
    with _totals_lock:
        _unpushed[field] = _unpushed.get(field, 0) + by


def job_finished(task: str, outcome: str) -> None:
    shared_inc("gateway_job_runs_total", task, outcome)
    if outcome == "success" and settings.REDIS_URL:
        try:
            sync_redis().hset(LAST_RUN_KEY, task, time.time())
        except (redis.RedisError, OSError):
            pass
    elif outcome == "success":
        _last_runs[task] = time.time()


_last_runs: dict[str, float] = {}


# --- reading it back ------------------------------------------------------------


async def collect() -> tuple[dict[bytes, float], list[dict], dict[str, float]]:
    """(counter and histogram fields, live processes' gauges, last job successes) for the fleet."""
    if not settings.REDIS_URL:
        await push()
        with _totals_lock:
            return dict(_totals), [{"ts": time.time(), "g": dict(_gauges)}], dict(_last_runs)
    async with async_redis().pipeline(transaction=False) as pipe:
        pipe.hgetall(COUNTERS_KEY)
        pipe.hgetall(GAUGES_KEY)
        pipe.hgetall(LAST_RUN_KEY)
        counters, gauges, last = await pipe.execute()
    fields = {k: float(v) for k, v in counters.items()}
    # What this process counted since its last push, so a scrape is never a second behind it.
    with _totals_lock:
        for field, value in _drain_local().items():
            _unpushed[field] = _unpushed.get(field, 0) + value
        for field, value in _unpushed.items():
            fields[field] = fields.get(field, 0) + value
    now, live, stale = time.time(), [], []
    for proc, value in gauges.items():
        entry = orjson.loads(value)
        if proc.decode() == PROC:
            entry = {"ts": now, "g": _gauges}
        if now - entry["ts"] <= LIVE_SECONDS:
            live.append(entry)
        elif now - entry["ts"] > 60:
            stale.append(proc)
    if stale:
        await async_redis().hdel(GAUGES_KEY, *stale)
    return fields, live, {k.decode(): float(v) for k, v in last.items()}


def _labels(names: tuple[str, ...], values, extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=False)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(fields: dict[bytes, float], processes: list[dict], last_runs: dict[str, float],
           extra: list[tuple[str, str, str, tuple[str, ...], list[tuple[tuple, float]]]]) -> str:
    """The Prometheus text format. `extra`: (name, type, help, label names, [(label values, value)])
    for series read at scrape time (breaker states, the usage buffer)."""
    series: dict[str, list[tuple[tuple, float]]] = {}
    hist: dict[str, dict[tuple, list[float]]] = {}
    for field, value in fields.items():
        key = orjson.loads(field)
        name = key[0]
        spec = SPECS.get(name)
        if spec is None:
            continue  # written by another version of the gateway
        if spec[0] != "histogram":
            series.setdefault(name, []).append((tuple(key[1:]), value))
            continue
        n_labels = len(spec[2])
        labels, tail = tuple(key[1:1 + n_labels]), key[1 + n_labels:]
        counts = hist.setdefault(name, {}).setdefault(labels, [0.0] * (len(spec[3]) + 2))
        if tail[0] == "le":
            counts[tail[1]] += value
        else:
            counts[-1] += value
    for name in ("gateway_requests_in_flight", "gateway_open_streams", "gateway_usage_events_held"):
        series[name] = [((), sum(p["g"].get(name, 0) for p in processes))]
    out: list[str] = []
    for name, (kind, help_text, label_names, buckets) in SPECS.items():
        if kind == "histogram":
            if name not in hist:
                continue
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            for labels, counts in sorted(hist[name].items()):
                running = 0.0
                for i, bound in enumerate((*buckets, "+Inf")):
                    running += counts[i]
                    le = 'le="' + (bound if bound == "+Inf" else _number(bound)) + '"'
                    out.append(f"{name}_bucket{_labels(label_names, labels, le)} {_number(running)}")
                out.append(f"{name}_sum{_labels(label_names, labels)} {_number(counts[-1])}")
                out.append(f"{name}_count{_labels(label_names, labels)} {_number(running)}")
            continue
        rows = series.get(name) or ([((), 0.0)] if not label_names else [])
        if not rows:
            continue
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        out += [f"{name}{_labels(label_names, labels)} {_number(value)}" for labels, value in sorted(rows)]
    out += ["# HELP gateway_processes Gateway processes that pushed their metrics in the last few seconds.",
            "# TYPE gateway_processes gauge", f"gateway_processes {len(processes)}"]
    if last_runs:
        out += ["# HELP gateway_job_last_success_timestamp_seconds When each Celery job last succeeded.",
                "# TYPE gateway_job_last_success_timestamp_seconds gauge"]
        out += [f'gateway_job_last_success_timestamp_seconds{{task="{_escape(t)}"}} {ts:.3f}'
                for t, ts in sorted(last_runs.items())]
    for name, kind, help_text, label_names, rows in extra:
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        out += [f"{name}{_labels(label_names, labels)} {_number(value)}" for labels, value in rows]
    return "\n".join(out) + "\n"
