"""What one call tells the operator once it is over: metrics, its log line, its trace.

`finished` runs once per call, after its usage is settled (for a stream, after
its last event). It only adds to this process's counters and queues the log
line; the trace, when tracing is on, is built from times the call noted on the
way (routing.front.tracing).
"""

import time

from gateway_project.lib import metrics
from usage.limits import REFUSALS

from . import request_log, tracing
from .call import Call

REFUSAL_CODES = frozenset(REFUSALS) | {"limits_unavailable"}
_STREAMED = {True: "true", False: "false"}


def started(call: Call, headers) -> None:
    metrics.gauge_add("gateway_requests_in_flight", 1)
    if tracing.enabled:
        call.traceparent = headers.get("traceparent") or ""
        call.attempt_log = []


def finished(call: Call) -> None:
    now = time.perf_counter()
    target = call.target
    provider = target.provider_name if target else ""
    # Only names the routing table knows: a request for an unknown model gets no label of its own.
    model = call.model if call.route else ""
    usage = call.usage if target is not None else None
    if usage is None:
        metrics.count_call((call.endpoint, call.route, model, provider, str(call.http_status), call.status),
                           0, 0, 0, 0.0)
    else:
        cost = float(call.recorded["cost_usd"]) if call.recorded else float(call.cost())
        metrics.count_call((call.endpoint, call.route, model, provider, str(call.http_status), call.status),
                           usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, cost)
    elapsed = now - call.started
    metrics.observe("gateway_request_duration_seconds", elapsed, call.endpoint, _STREAMED[call.streamed])
    if call.upstream_started:
        ended = call.upstream_ended or now
        metrics.observe("gateway_overhead_seconds", max(0.0, elapsed - (ended - call.upstream_started)),
                        call.endpoint)
        if call.answered_started and target is not None:
            metrics.observe("gateway_upstream_latency_seconds", ended - call.answered_started, model, provider)
    if call.streamed and call.ttft_ms is not None and target is not None:
        metrics.observe("gateway_time_to_first_token_seconds", call.ttft_ms / 1000, model, provider)
    if call.error_type in REFUSAL_CODES:
        metrics.inc("gateway_limit_refusals_total", call.error_type)
    metrics.gauge_add("gateway_requests_in_flight", -1)
    request_log.emit(call)
    if tracing.enabled:
        tracing.export(call, now)
