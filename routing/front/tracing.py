"""OpenTelemetry traces: off by default, on when the standard OTEL_* environment asks.

On when OTEL_TRACES_EXPORTER names an exporter (`otlp`, `console`) or an OTLP
endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
OTEL_SDK_DISABLED=true turns it off. OTLP goes over HTTP/protobuf; endpoint,
headers, timeout, service name, resource attributes and sampler come from the
usual OTEL_* variables, read by the SDK itself. When off, the SDK is never
imported and the hot path pays one boolean test per request.

One span per request (kind SERVER) with a child span for admission, one per
upstream attempt (kind CLIENT, failed ones marked as errors) and one for
accounting, carrying the OpenTelemetry GenAI semantic convention attributes
(gen_ai.operation.name, gen_ai.system, gen_ai.request.model,
gen_ai.response.model, gen_ai.usage.input_tokens, ...). A `traceparent` sent
by the client makes the request span its child.

The spans are built when the call is over, from the times it noted on the way
(routing.front.call.Call), so no span object lives through the request; the price is
that the upstream calls carry no `traceparent` of their own.
"""

import logging
import os

log = logging.getLogger(__name__)


def _wanted() -> bool:
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


enabled = _wanted()
_provider = None
_tracer = None

OPERATIONS = {"chat.completions": "chat", "messages": "chat", "completions": "text_completion",
              "embeddings": "embeddings"}
# gen_ai.system values of the semantic conventions, by provider kind.
SYSTEMS = {"openai": "openai", "azure": "az.ai.openai", "anthropic": "anthropic", "gemini": "gcp.gemini",
           "cohere": "cohere", "ollama": "ollama", "huggingface": "huggingface",
           "openai_compatible": "openai"}
HTTP_ROUTES = {"chat.completions": "/v1/chat/completions", "messages": "/v1/messages",
               "completions": "/v1/completions", "embeddings": "/v1/embeddings", "models": "/v1/models"}


def setup() -> None:
    """Start the SDK in this process (each gateway worker calls it at startup)."""
    global _provider, _tracer
    if not enabled or _tracer is not None:
        return
    # OpenTelemetry is imported only when tracing is on (OTEL_*): off, it costs nothing.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "llm-gateway"}
    _provider = TracerProvider(resource=Resource.create(attributes))
    for name in (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(","):
        name = name.strip()
        if name == "otlp":
            protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            if protocol != "http/protobuf":
                log.warning("tracing: OTLP protocol %r is not supported; sending http/protobuf", protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            _provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            log.warning("tracing: unknown exporter %r ignored", name)
    _tracer = _provider.get_tracer("gateway")


def shutdown() -> None:
    """Send the spans still queued (at process stop)."""
    if _provider is not None:
        _provider.shutdown()


def _request_attributes(call) -> dict:
    body = call.body or {}
    attributes = {
        "http.request.method": "GET" if call.endpoint == "models" else "POST",
        "http.route": HTTP_ROUTES.get(call.endpoint, ""),
        "http.response.status_code": call.http_status,
        "gateway.request_id": call.request_id,
        "gateway.endpoint": call.endpoint,
        "gateway.status": call.status,
        "gateway.attempts": call.attempts,
        "gateway.streamed": call.streamed,
    }
    if operation := OPERATIONS.get(call.endpoint):
        attributes["gen_ai.operation.name"] = operation
    if call.model:
        attributes["gen_ai.request.model"] = call.model
    for name, attribute in (("max_tokens", "gen_ai.request.max_tokens"), ("temperature", "gen_ai.request.temperature"),
                            ("top_p", "gen_ai.request.top_p")):
        if isinstance(body.get(name), (int, float)) and not isinstance(body.get(name), bool):
            attributes[attribute] = body[name]
    if call.route:
        attributes["gateway.route"] = call.route
    if call.key is not None:
        attributes["gateway.tenant_id"] = call.key.tenant_id
        attributes["gateway.key_prefix"] = call.key.prefix
    if call.target is not None:
        attributes.update(_target_attributes(call.target))
        attributes["gateway.deployment_id"] = call.target.deployment_id
    if call.usage is not None:
        attributes["gen_ai.usage.input_tokens"] = call.usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = call.usage.completion_tokens
        attributes["gateway.cost_usd"] = float(call.recorded["cost_usd"]) if call.recorded else float(call.cost())
    if call.ttft_ms is not None and call.streamed:
        attributes["gateway.time_to_first_token_ms"] = call.ttft_ms
    if call.error_type:
        attributes["error.type"] = call.error_type
    return attributes


def _target_attributes(target) -> dict:
    system = SYSTEMS.get(target.kind, target.kind)
    return {"gen_ai.system": system, "gen_ai.provider.name": system, "gen_ai.response.model": target.upstream_model,
            "gateway.provider": target.provider_name}


def export(call, ended: float) -> None:
    """Build the call's spans from the times it noted (perf_counter), and hand them to the exporter."""
    from opentelemetry import trace  # only when tracing is on (see setup)
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    def ns(perf: float) -> int:
        return int((call.ts + (perf - call.started)) * 1e9)

    parent = TraceContextTextMapPropagator().extract({"traceparent": call.traceparent}) if call.traceparent else None
    operation = OPERATIONS.get(call.endpoint)
    name = f"{operation} {call.model}" if operation and call.model else f"gateway {call.endpoint}"
    root = _tracer.start_span(name, context=parent, kind=SpanKind.SERVER, start_time=ns(call.started),
                              attributes=_request_attributes(call))
    if call.http_status >= 500:
        root.set_status(Status(StatusCode.ERROR, call.error_type))
    inside = trace.set_span_in_context(root)
    if call.admit_span:
        _tracer.start_span("admission", context=inside, start_time=ns(call.admit_span[0]),
                           attributes={"gateway.limited": call.admission is not None}).end(ns(call.admit_span[1]))
    for number, (target, start, end, error) in enumerate(call.attempt_log or (), 1):
        attributes = {**_target_attributes(target), "gen_ai.request.model": target.upstream_model,
                      "gateway.attempt": number, "gateway.deployment_id": target.deployment_id}
        if operation:
            attributes["gen_ai.operation.name"] = operation
        span = _tracer.start_span(f"{operation or 'call'} {target.upstream_model}", context=inside,
                                  kind=SpanKind.CLIENT, start_time=ns(start), attributes=attributes)
        if error is None:
            end = max(end, call.upstream_ended)  # the answer was read (or relayed) until then
        else:
            span.set_attribute("error.type", getattr(error, "code", None) or type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, str(getattr(error, "message", error))[:200]))
        span.end(ns(end))
    if call.account_span:
        _tracer.start_span("accounting", context=inside, start_time=ns(call.account_span[0])).end(
            ns(call.account_span[1]))
    root.end(ns(ended))
