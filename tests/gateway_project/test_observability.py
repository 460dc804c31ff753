"""What an operator runs the gateway on: /metrics across worker processes, request
log lines, traces, and the health and readiness probes, against real servers."""

import json
import re
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from celery import shared_task
from django.db.models import Sum

from keys import services as key_services
from providers.models import Deployment, Provider
from routing.models import CircuitEvent, Route, RouteTarget
from tests.conftest import ROOT, free_port, start_gateway, wait_until
from usage.models import Limit, PromptLog, UsageRecord

METRICS_TOKEN = "metrics-token-5f1c9a"
PROVIDER_SECRET = "sk-provider-obs-7d2e1f0a9b8c"


# --- helpers ---------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?[0-9.e+\-]+|NaN|\+Inf|-Inf)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> list[tuple[str, dict, float]]:
    """Prometheus text format, strictly: every line a comment or a well-formed sample."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        labels = dict(LABEL.findall(match.group(2) or ""))
        samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def total(samples, name: str, **labels) -> float:
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items()))


def scrape(server, token: str | None = METRICS_TOKEN) -> list[tuple[str, dict, float]]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(server.url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def complete_lines(server) -> list[str]:
    """The server's output lines, less a last one still being written."""
    return server.output().rpartition("\n")[0].splitlines()


def request_lines(server) -> list[dict]:
    lines = []
    for line in complete_lines(server):
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "gateway.request":
                lines.append(entry)
    return lines


def provider(mock, name: str, **knobs) -> Provider:
    headers = {f"x-mock-{k.replace('_', '-')}": str(v) for k, v in knobs.items()}
    p = Provider(name=name, kind="openai_compatible", base_url=mock.url + "/v1", extra_headers=headers,
                 allow_private_network=True)
    p.set_api_key(PROVIDER_SECRET)
    p.save()
    return p


def chat(server, key: str, model: str, text: str = "hello", stream: bool = False, request_id: str = ""):
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    headers = {"authorization": f"Bearer {key}", **({"x-request-id": request_id} if request_id else {})}
    if not stream:
        # A new connection per request, so that both worker processes get traffic.
        return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers,
                      timeout=30) as response:
        response.read()
    return response


# --- metrics across two worker processes ----------------------------------------


@pytest.fixture()
def traffic_setup(tenant, mock):
    """A plain model, a route whose first target fails, and a key limited to 2 requests a minute."""
    good = provider(mock, "good")
    broken = provider(mock, "broken", error=503)
    plain = Deployment.objects.create(provider=good, public_model="obs-chat", upstream_model="mock-gpt",
                                      input_price_per_mtok="1.5", output_price_per_mtok="6")
    first = Deployment.objects.create(provider=broken, public_model="obs-first", upstream_model="mock-gpt")
    route = Route.objects.create(name="obs-resilient")
    RouteTarget.objects.create(route=route, deployment=first, priority=0)
    RouteTarget.objects.create(route=route, deployment=plain, priority=1)
    key, secret = key_services.issue(tenant, "obs key")
    limited, limited_secret = key_services.issue(tenant, "limited key")
    Limit.objects.create(tenant=tenant, api_key=limited, requests_per_minute=2)
    return {"key": secret, "key_prefix": key.prefix, "limited": limited_secret, "broken": first, "plain": plain}


def test_metrics_add_up_to_the_traffic_sent_through_two_workers(gateway_env, traffic_setup, own_redis):
    setup = traffic_setup
    server = start_gateway({**gateway_env, "REDIS_URL": own_redis.url, "LOG_FORMAT": "json",
                            "METRICS_TOKEN": METRICS_TOKEN, "METRICS_ALLOW": "", "BREAKER_FAILURES": "1",
                            "GATEWAY_PROCESSES": "2"}, workers=2)
    try:
        plain = [chat(server, setup["key"], "obs-chat") for _ in range(12)]
        fallbacks = [chat(server, setup["key"], "obs-resilient") for _ in range(4)]
        limited = [chat(server, setup["limited"], "obs-chat") for _ in range(6)]
        streams = [chat(server, setup["key"], "obs-chat", stream=True) for _ in range(3)]
        unknown = chat(server, setup["key"], "no-such-model")
        assert [r.status_code for r in plain + fallbacks + streams] == [200] * 19
        assert sorted(r.status_code for r in limited) == [200, 200, 429, 429, 429, 429]
        assert unknown.status_code == 404
        # Both processes served: the request log lines come from two pids.
        assert wait_until(lambda: len(request_lines(server)) >= 26, timeout=10)
        assert len({line["pid"] for line in request_lines(server)}) == 2

        expected_200 = 12 + 4 + 2 + 3
        # Each process pushes its counts every METRICS_PUSH_INTERVAL: wait for all 26 calls, not the 200s alone.
        samples = wait_until(lambda: (s := scrape(server)) and total(
            s, "gateway_requests_total", status="200") == expected_200
            and total(s, "gateway_requests_total") == 26 and s, timeout=10)
        assert samples, "the counters never added up to the traffic"
        assert total(samples, "gateway_processes") == 2
        assert total(samples, "gateway_requests_total") == 26
        assert total(samples, "gateway_requests_total", route="obs-chat", model="obs-chat", provider="good",
                     status="200", error="ok") == 12 + 2 + 3
        assert total(samples, "gateway_requests_total", route="obs-resilient", provider="good", status="200") == 4
        assert total(samples, "gateway_requests_total", status="429", error="client_error") == 4
        # An unknown model name gets no label of its own.
        assert total(samples, "gateway_requests_total", status="404", model="") == 1
        assert not [ls for n, ls, _ in samples if "no-such-model" in ls.values()]
        assert total(samples, "gateway_limit_refusals_total", code="rate_limit_exceeded") == 4

        # Fallbacks: the route's first target failed (503), then its breaker opened (after
        # one failure here) and later calls went straight to the second.
        fell_back = sum(r.headers["x-gateway-attempts"] == "2" for r in fallbacks)
        assert fell_back >= 1
        assert total(samples, "gateway_fallbacks_total", provider="good") == fell_back
        assert total(samples, "gateway_upstream_attempts_total", provider="broken", outcome="server_error") == fell_back
        assert total(samples, "gateway_upstream_attempts_total", provider="good", outcome="ok") == expected_200
        opened = CircuitEvent.objects.filter(deployment=setup["broken"], state="open").count()
        assert opened >= 1
        assert total(samples, "gateway_circuit_breaker_transitions_total", deployment=str(setup["broken"].id),
                     state="open") == opened
        assert total(samples, "gateway_circuit_breaker_state", deployment=str(setup["broken"].id)) == 1
        assert total(samples, "gateway_circuit_breaker_state", deployment=str(setup["plain"].id)) == 0

        # Streams: their duration, time to first token; nothing left open.
        assert total(samples, "gateway_request_duration_seconds_count", streamed="true") == 3
        assert total(samples, "gateway_time_to_first_token_seconds_count", provider="good") == 3
        assert total(samples, "gateway_request_duration_seconds_count", streamed="false") == 23
        assert total(samples, "gateway_upstream_latency_seconds_count", provider="good") == expected_200
        assert total(samples, "gateway_overhead_seconds_count") == expected_200  # every call that went upstream
        assert total(samples, "gateway_requests_in_flight") == 0
        assert total(samples, "gateway_open_streams") == 0

        # Tokens and cost: what the usage records (the bill) say.
        assert wait_until(lambda: UsageRecord.objects.filter(status="ok").count() == expected_200)
        sums = UsageRecord.objects.filter(status="ok").aggregate(i=Sum("prompt_tokens"), o=Sum("completion_tokens"),
                                                                 c=Sum("cost_usd"))
        assert total(samples, "gateway_tokens_total", type="input") == sums["i"] > 0
        assert total(samples, "gateway_tokens_total", type="output") == sums["o"] > 0
        assert total(samples, "gateway_cost_usd_total") == pytest.approx(float(sums["c"]), rel=1e-9)

        # The usage buffer and its drain.
        samples = wait_until(lambda: (s := scrape(server)) and total(
            s, "gateway_usage_events_written_total") >= expected_200 + 4 and s, timeout=10)
        assert samples
        assert total(samples, "gateway_usage_buffer_events") == 0
        assert total(samples, "gateway_usage_drain_lag_seconds") == 0

        # Refused without the token (and with a wrong one): the allow-list is empty here.
        assert httpx.get(server.url + "/metrics").status_code == 401
        assert httpx.get(server.url + "/metrics", headers={"authorization": "Bearer nope"}).status_code == 401
        text = httpx.get(server.url + "/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}).text
        for secret in (setup["key"], setup["limited"], setup["key_prefix"], PROVIDER_SECRET, "req_"):
            assert secret not in text
    finally:
        server.stop()


def test_metrics_answer_allowed_addresses_without_a_token(gateway):
    # The default allow-list is loopback: the tests' own address.
    response = httpx.get(gateway.url + "/metrics")
    assert response.status_code == 200 and "gateway_processes" in response.text


def test_celery_job_runs_and_failures_are_counted(gateway):
    from usage.tasks import drain_usage

    def runs(outcome: str, task: str) -> float:
        return total(scrape(gateway, None), "gateway_job_runs_total", task=task, outcome=outcome)

    ok_before = runs("success", "usage.tasks.drain_usage")
    failed_before = runs("failure", failing_job.name)
    drain_usage.apply()
    failing_job.apply()
    assert runs("success", "usage.tasks.drain_usage") == ok_before + 1
    assert runs("failure", failing_job.name) == failed_before + 1
    last = total(scrape(gateway, None), "gateway_job_last_success_timestamp_seconds", task="usage.tasks.drain_usage")
    assert time.time() - 60 < last <= time.time()


@shared_task
def failing_job():
    raise RuntimeError("this job fails on purpose")


# --- request log lines ---------------------------------------------------------------


@pytest.fixture()
def logging_setup(tenant, other_tenant, mock):
    good = provider(mock, "logged")
    Deployment.objects.create(provider=good, public_model="log-chat", upstream_model="mock-gpt",
                              input_price_per_mtok="1.5", output_price_per_mtok="6")
    other_tenant.log_prompts, other_tenant.prompt_retention_days = True, 3
    other_tenant.save()
    _, plain_secret = key_services.issue(tenant, "quiet key")
    _, logged_secret = key_services.issue(other_tenant, "logged key")
    return plain_secret, logged_secret


PROMPT = "Write to alice.smith@example.com, card 4111 1111 1111 1111, use key sk-live-abcdefghijklmnopqrstu please"
FIELDS = {"request_id", "client_request_id", "tenant", "tenant_id", "key_prefix", "endpoint", "route",
          "public_model", "provider_name", "deployment_id", "upstream_model", "http_status", "status", "error_type",
          "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "latency_ms", "ttft_ms", "attempts",
          "streamed", "ts", "level", "logger", "pid"}


def test_request_log_has_every_field_and_no_secret_and_prompts_only_when_opted_in(
        gateway_env, logging_setup, tenant, other_tenant):
    plain_secret, logged_secret = logging_setup
    server = start_gateway({**gateway_env, "LOG_FORMAT": "json"})
    try:
        assert chat(server, plain_secret, "log-chat", PROMPT, request_id="log-plain").status_code == 200
        assert chat(server, plain_secret, "log-chat", PROMPT, stream=True, request_id="log-stream").status_code == 200
        assert chat(server, logged_secret, "log-chat", PROMPT, request_id="log-opted-in").status_code == 200
        assert chat(server, "sk-gw-not-a-real-key", "log-chat", PROMPT, request_id="log-denied").status_code == 401
        lines = wait_until(lambda: (found := {line["client_request_id"]: line for line in request_lines(server)})
                           and len(found) >= 4 and found, timeout=10)
        assert lines and set(lines) >= {"log-plain", "log-stream", "log-opted-in", "log-denied"}
        for rid in ("log-plain", "log-stream"):
            line = lines[rid]
            assert FIELDS <= set(line), FIELDS - set(line)
            assert (line["tenant"], line["tenant_id"], line["route"], line["provider_name"]) == (
                "acme", tenant.id, "log-chat", "logged")
            assert line["http_status"] == 200 and line["prompt_tokens"] > 0 and line["completion_tokens"] == 20
            assert Decimal(line["cost_usd"]) > 0 and line["latency_ms"] >= 0 and line["ttft_ms"] is not None
            assert line["attempts"] == 1 and line["request_id"].startswith("req_")
            assert "prompt" not in line
        assert lines["log-stream"]["streamed"] is True
        assert lines["log-denied"]["http_status"] == 401 and lines["log-denied"]["error_type"] == "invalid_api_key"

        output = server.output()
        for secret in (plain_secret, logged_secret, PROVIDER_SECRET, "sk-gw-not-a-real-key",
                       "alice.smith@example.com", "4111 1111", "sk-live-abcdefghijklmnopqrstu", "Write to"):
            assert secret not in output.replace(lines["log-opted-in"]["prompt"], ""), secret
        # The tenant that opted in: its prompt, redacted, in the line and in the prompt log.
        prompt = lines["log-opted-in"]["prompt"]
        assert prompt == "user: Write to [email], card [number], use key [key] please"
        assert lines["log-opted-in"]["tenant"] == "globex"
        stored = wait_until(lambda: PromptLog.objects.filter(tenant=other_tenant).first())
        assert stored and stored.prompt == prompt and not PromptLog.objects.filter(tenant=tenant).exists()
        assert 2.9 * 86400 < (stored.expires_at - stored.created_at).total_seconds() <= 3 * 86400
    finally:
        server.stop()

    # Kept only for the retention: the periodic purge deletes it once expired.
    from usage.tasks import purge_prompts

    assert purge_prompts.apply().result == 0
    PromptLog.objects.filter(pk=stored.pk).update(expires_at=stored.created_at)
    assert purge_prompts.apply().result == 1
    assert not PromptLog.objects.exists()


def test_text_log_format_writes_key_value_request_lines(gateway_env, logging_setup):
    plain_secret, _ = logging_setup
    server = start_gateway({**gateway_env, "LOG_FORMAT": "text"})
    try:
        assert chat(server, plain_secret, "log-chat", request_id="text-1").status_code == 200
        line = wait_until(lambda: next((x for x in complete_lines(server) if "client_request_id=text-1" in x),
                                       None), timeout=10)
        assert line and " INFO gateway.request request " in line
        assert "http_status=200" in line and "route=log-chat" in line and "tenant=acme" in line
        assert plain_secret not in server.output()
    finally:
        server.stop()


# --- traces ----------------------------------------------------------------------------


class Collector:
    """An OTLP/HTTP trace collector: receives protobuf ExportTraceServiceRequest posts."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        spans = self.spans = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                assert self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf"
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                    for scope in resource.scope_spans:
                        spans.extend((service, span) for span in scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attributes(span) -> dict:
    out = {}
    for a in span.attributes:
        value = a.value
        out[a.key] = getattr(value, value.WhichOneof("value"))
    return out


def test_traces_reach_an_otlp_collector_with_genai_attributes(gateway_env, traffic_setup):
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    collector = Collector()
    server = start_gateway({**gateway_env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                            "OTEL_SERVICE_NAME": "gateway-under-test", "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        response = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
            "model": "obs-resilient", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {traffic_setup['key']}",
                     "traceparent": f"00-{trace_id}-{parent_id}-01"})
        assert response.status_code == 200 and response.headers["x-gateway-attempts"] == "2"
        spans = wait_until(lambda: len(collector.spans) >= 5 and collector.spans, timeout=10)
        assert spans, collector.spans
        assert {service for service, _ in spans} == {"gateway-under-test"}
        spans = [span for _, span in spans]
        root = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
        # The client's traceparent: same trace, the client's span as parent.
        assert root.trace_id.hex() == trace_id and root.parent_span_id.hex() == parent_id
        assert root.name == "chat obs-resilient"
        attrs = attributes(root)
        assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "obs-resilient"
        assert attrs["gen_ai.system"] == "openai" and attrs["gen_ai.response.model"] == "mock-gpt"
        assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] == 20
        assert attrs["gen_ai.request.max_tokens"] == 64 and attrs["http.response.status_code"] == 200
        assert attrs["gateway.request_id"] == response.headers["x-request-id"]
        children = {s.name: s for s in spans if s.parent_span_id == root.span_id}
        assert set(children) == {"admission", "chat mock-gpt", "accounting"}
        attempts = sorted((s for s in spans if s.kind == Span.SPAN_KIND_CLIENT), key=lambda s: s.start_time_unix_nano)
        assert len(attempts) == 2 and all(s.parent_span_id == root.span_id for s in attempts)
        assert attempts[0].status.code == Status.STATUS_CODE_ERROR
        assert attributes(attempts[0])["gateway.provider"] == "broken"
        assert attributes(attempts[1])["gateway.provider"] == "good"
        assert attempts[1].status.code != Status.STATUS_CODE_ERROR
        for child in spans:
            if child is not root:
                assert root.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
                assert child.end_time_unix_nano <= root.end_time_unix_nano
    finally:
        server.stop()
        collector.stop()


def test_tracing_off_imports_no_tracing_sdk():
    # (redis-py imports opentelemetry.sdk.metrics on its own when it is installed, to see whether it is.)
    code = ("import sys, gateway_project.asgi as a; from routing.front import tracing; "
            "print(tracing.enabled, any(m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter'"
            ")) for m in sys.modules))")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- health and readiness -----------------------------------------------------------


class TcpProxy:
    """A TCP relay to PostgreSQL that the test can cut (every connection dropped) and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.sockets = []


def readyz(server) -> tuple[int, dict]:
    response = httpx.get(server.url + "/readyz", timeout=10)
    return response.status_code, response.json()


def test_readyz_follows_redis_and_the_database_going_away_and_coming_back(gateway_env, own_redis, transactional_db):
    from django.conf import settings

    db = settings.DATABASES["default"]
    proxy = TcpProxy((db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)))
    url = re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", gateway_env["DATABASE_URL"])
    server = start_gateway({**gateway_env, "DATABASE_URL": url, "REDIS_URL": own_redis.url})
    try:
        assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
        assert wait_until(lambda: readyz(server)[0] == 200)
        status, body = readyz(server)
        assert body["status"] == "ready" and body["checks"]["database"] == "ok" and body["checks"]["redis"] == "ok"

        own_redis.stop()
        status, body = wait_until(lambda: (r := readyz(server))[0] == 503 and r, timeout=10)
        assert body["checks"]["redis"].startswith("unreachable") and body["checks"]["database"] == "ok"
        assert httpx.get(server.url + "/healthz").status_code == 200  # alive, just not ready
        own_redis.start()
        assert wait_until(lambda: readyz(server)[0] == 200, timeout=15)

        proxy.stop()
        status, body = wait_until(lambda: (r := readyz(server))[0] == 503 and r, timeout=10)
        assert body["checks"]["database"].startswith("unreachable") and body["checks"]["redis"] == "ok"
        proxy.start()
        assert wait_until(lambda: readyz(server)[0] == 200, timeout=15)
    finally:
        server.stop()
        proxy.stop()


def test_readyz_is_unready_while_the_usage_buffer_is_backed_up(gateway_env, traffic_setup, own_redis):
    env = {**gateway_env, "REDIS_URL": own_redis.url, "USAGE_DRAIN_IN_PROCESS": "false",
           "READY_MAX_USAGE_BACKLOG": "2", "METRICS_TOKEN": METRICS_TOKEN}
    server = start_gateway(env)
    try:
        assert wait_until(lambda: readyz(server)[0] == 200)
        for _ in range(3):
            assert chat(server, traffic_setup["key"], "obs-chat").status_code == 200
        time.sleep(1.1)  # past the cached answer
        status, body = readyz(server)
        assert status == 503 and body["checks"]["usage_buffer"].startswith("backed up: 3 events")
        samples = scrape(server)
        assert total(samples, "gateway_usage_buffer_events") == 3
        assert total(samples, "gateway_usage_drain_lag_seconds") > 0
        subprocess.run([sys.executable, "manage.py", "drain_usage"], cwd=ROOT, check=True, capture_output=True,
                       env={**__import__("os").environ, **env})
        assert wait_until(lambda: readyz(server)[0] == 200, timeout=5)
        assert total(scrape(server), "gateway_usage_buffer_events") == 0
    finally:
        server.stop()


def test_the_grafana_dashboard_queries_only_metrics_the_gateway_exports(gateway):
    from gateway_project.lib.metrics import SPECS
    from usage.tasks import drain_usage

    drain_usage.apply()  # so that the job's last success is exported too
    text = httpx.get(gateway.url + "/metrics").text
    exported = set(SPECS) | set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    assert len(queries) > 25
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for q in queries for n in re.findall(r"gateway_[a-z_]+", q)}
    assert used - exported == set()
    assert len(used) >= 20
