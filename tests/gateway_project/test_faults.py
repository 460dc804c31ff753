"""Faults, with real processes: what a client and an operator see, and that no usage is lost.

- a provider failing, then hanging, while clients keep calling: the fallback serves every call;
- Redis paused and resumed: the documented behaviour of limits holds, calls after the first that found
  it hanging skip it at once, it is used again within a second of its return, every call is recorded;
- PostgreSQL stopped and started: calls keep being served from the caches, usage lands afterwards;
- a gateway worker killed with streams and JSON calls in flight: those are billed as far as they went.

docs/security.md ("Faults") says what each proves. FAULT_SECONDS (default 8) sets how long the
provider fails and then hangs; `FAULT_SECONDS=60` runs the full minute of each.
"""

import collections
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from decimal import Decimal

import httpx
import pytest
import redis
from django.db.models import Count, Sum

from gateway_project.lib import redis_keys
from tests.conftest import ROOT, Server, start_gateway, wait_until
from tests.pg_servers import OwnPostgres
from usage.models import UsageRecord

FAULT_SECONDS = float(os.environ.get("FAULT_SECONDS", "8"))


def chat_body(text: str, stream: bool = False, model: str = "gpt-test") -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


class Call(threading.Thread):
    """One chat call in a thread (a JSON one; see Stream): its status, or the error that broke it."""

    stream = False

    def __init__(self, url: str, key: str, request_id: str, text: str, model: str = "gpt-test") -> None:
        super().__init__(daemon=True)
        self.args = (url, key, request_id, chat_body(text, stream=self.stream, model=model))
        self.status: int | None = None
        self.broken: Exception | None = None
        self.received = 0
        self.done = False  # a stream's [DONE] arrived
        self.start()

    def run(self) -> None:
        url, key, request_id, body = self.args
        headers = {"authorization": f"Bearer {key}", "x-request-id": request_id}
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers,
                              timeout=60) as response:
                self.status = response.status_code
                self.read(response)
        except httpx.HTTPError as exc:
            self.broken = exc

    def read(self, response: httpx.Response) -> None:
        response.read()


class Stream(Call):
    """One streamed chat read chunk by chunk in a thread; counts the content chunks received."""

    stream = True

    def read(self, response: httpx.Response) -> None:
        for line in response.iter_lines():
            if line == "data: [DONE]":
                self.done = True
            elif line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                self.received += 1


def records(**filters):
    return UsageRecord.objects.filter(**filters)


def exact_cost(prompt: int, completion: int, input_price: str, output_price: str) -> Decimal:
    return (prompt * Decimal(input_price) + completion * Decimal(output_price)) / 1_000_000


# --- a gateway worker killed with streams in flight --------------------------------------------


def test_streams_of_a_killed_worker_are_billed_as_far_as_they_went(gateway_env, own_redis, tenant, api_key,
                                                                   mock_provider):
    from gateway_project.lib import tokens
    from usage.models import Limit

    # A budget on the tenant: streams settle through the Redis script, which also deletes the entries.
    Limit.objects.create(tenant=tenant, budget_usd=Decimal(100), period="month")
    env = {**gateway_env, "REDIS_URL": own_redis.url, "USAGE_INFLIGHT_LEASE": "3"}
    doomed, survivor = start_gateway(env), start_gateway(env)
    key = api_key[1]
    try:
        for server in (doomed, survivor):
            assert wait_until(lambda s=server: httpx.post(
                s.url + "/v1/chat/completions", json=chat_body("warm up"),
                headers={"authorization": f"Bearer {key}"}).status_code == 200, timeout=10)
        slow = "tell me a long story [[mock chunks=80 chunk_delay_ms=100]]"
        cut = [Stream(doomed.url, key, f"doomed-{i}", slow) for i in range(6)]
        # The survivor's streams run through the reap: a live worker's streams must not be reaped.
        kept = [Stream(survivor.url, key, f"kept-{i}", slow) for i in range(3)]
        # JSON calls waiting on the upstream when the worker dies: the provider was asked, the client got nothing.
        pondering = "think it over [[mock latency_ms=8000]]"
        lost = [Call(doomed.url, key, f"lost-json-{i}", pondering) for i in range(2)]
        pondering_until = time.monotonic() + 8.5
        answered = Call(survivor.url, key, "answered-json", "think briefly [[mock latency_ms=6000]]")
        assert wait_until(lambda: all(s.received >= 25 for s in cut + kept), timeout=15)
        doomed.proc.send_signal(signal.SIGKILL)  # no cleanup, no lifespan shutdown: the streams just stop
        doomed.proc.wait()
        killed_at = time.monotonic()
        for stream in cut + kept:
            stream.join(30)
        assert all(s.broken is not None and not s.done for s in cut)
        for call in (*lost, answered):
            call.join(30)
        assert all(c.broken is not None for c in lost) and answered.status == 200
        assert all(s.done and s.received == 80 for s in kept), [(s.done, s.received, s.broken) for s in kept]

        # Billed as far as each went, once: the reaper records them when the lease has run out.
        interrupted = records(client_request_id__startswith="doomed-")
        assert wait_until(lambda: interrupted.count() == len(cut), timeout=15), interrupted.count()
        reaped_after = time.monotonic() - killed_at
        prompt = tokens.count_messages(chat_body(slow)["messages"])
        for stream in cut:
            record = interrupted.get(client_request_id=stream.args[2])
            assert record.status == "interrupted" and record.error_type == "worker_lost"
            assert record.streamed and record.tokens_estimated and record.http_status == 200
            assert record.prompt_tokens == prompt
            # Relayed up to the last checkpoint (every second, 10 chunks here) before the kill.
            assert stream.received - 12 <= record.completion_tokens <= stream.received + 1, (
                stream.received, record.completion_tokens)
            assert record.cost_usd == exact_cost(prompt, record.completion_tokens, "0.15", "0.60") > 0
        # The JSON calls the dead worker was waiting on: their prompts, at the deployment's prices.
        lost_records = records(client_request_id__startswith="lost-json-")
        assert wait_until(lambda: lost_records.count() == len(lost), timeout=15), lost_records.count()
        json_prompt = tokens.count_messages(chat_body(pondering)["messages"])
        assert set(lost_records.values_list("status", "http_status", "streamed", "tokens_estimated", "prompt_tokens",
                                            "completion_tokens", "cost_usd", "provider_name")) == {
            ("interrupted", 502, False, True, json_prompt, 0, exact_cost(json_prompt, 0, "0.15", "0.60"), "mock")}
        assert records(client_request_id="answered-json").get().status == "ok"
        kept_records = records(client_request_id__startswith="kept-")
        assert wait_until(lambda: kept_records.count() == len(kept))
        assert set(kept_records.values_list("status", "completion_tokens", "tokens_estimated")) == {
            ("ok", 80, False)}
        assert 3 <= reaped_after < 15

        time.sleep(4)  # another lease: nothing is reaped twice, the survivor's entries are gone
        assert interrupted.count() == len(cut) and lost_records.count() == len(lost)
        assert records(tenant=tenant).count() == 2 + len(cut) + len(kept) + len(lost) + 1
        client = redis.Redis.from_url(own_redis.url)
        assert [k for k in client.scan_iter("gw:*:inflight:*") if client.hlen(k)] == []
        assert {client.hlen(k) for k in client.scan_iter("gw:*:workers")} == {1}  # the survivor; the dead one forgotten
        # The shared mock still answers the lost calls into the void: let it finish before the next test counts.
        time.sleep(max(0.0, pondering_until - time.monotonic()))
    finally:
        survivor.stop()
        doomed.stop()


# --- a provider failing, then hanging, for a sustained period --------------------------------


class Caller(threading.Thread):
    """A client calling the gateway over and over (JSON and streamed in turn) until told to stop;
    notes each call's phase, status, serving provider, attempts and latency."""

    def __init__(self, url: str, key: str, model: str, name: str, phase: list[str], pace: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.model, self.name, self.phase, self.pace = url, key, model, name, phase, pace
        self.calls: list[dict] = []
        self.stopping = threading.Event()
        self.start()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60,
                          headers={"authorization": f"Bearer {self.key}"}) as client:
            while not self.stopping.is_set():
                n, phase = len(self.calls), self.phase[0]
                rid, stream = f"{self.name}-{n}", n % 2 == 1
                started = time.monotonic()
                try:
                    response = client.post("/v1/chat/completions", json=chat_body(f"call {rid}", stream, self.model),
                                           headers={"x-request-id": rid})
                    body = response.text
                except httpx.HTTPError as exc:
                    response, body = None, repr(exc)
                self.calls.append({
                    "id": rid, "phase": phase, "stream": stream, "seconds": time.monotonic() - started,
                    "status": response.status_code if response is not None else None,
                    "provider": response.headers.get("x-gateway-provider") if response is not None else None,
                    "attempts": int(response.headers.get("x-gateway-attempts", 0)) if response is not None else 0,
                    "complete": not stream or body.rstrip().endswith("data: [DONE]"),
                })
                self.stopping.wait(self.pace)


def test_a_provider_failing_then_hanging_is_served_by_the_fallback_and_every_call_recorded(
        gateway_env, own_redis, tenant, api_key, mock):
    from providers.models import Deployment, Provider
    from routing.models import CircuitEvent, Route, RouteTarget

    cooldown = 3 if FAULT_SECONDS < 30 else 30  # the production default for the full minute
    failures = 5  # BREAKER_FAILURES's default
    primary_mock = Server(["-m", "providers.mock_upstream", "--port", "{port}"], ready_path="/v1/models")
    deployments = {}
    for name, url, prices in (("primary", primary_mock.url, ("1", "2")), ("fallback", mock.url, ("3", "6"))):
        provider = Provider.objects.create(name=name, kind="openai_compatible", base_url=url + "/v1",
                                           allow_private_network=True)
        # A first-byte timeout on the deployment: a hanging provider costs a probe 2 s, not 60.
        deployments[name] = Deployment.objects.create(
            provider=provider, public_model=f"chat-{name}", upstream_model="mock-gpt", input_price_per_mtok=prices[0],
            output_price_per_mtok=prices[1], first_byte_timeout=2 if name == "primary" else None)
    route = Route.objects.create(name="resilient", strategy="priority")
    for priority, name in enumerate(deployments):
        RouteTarget.objects.create(route=route, deployment=deployments[name], priority=priority)
    server = start_gateway({**gateway_env, "REDIS_URL": own_redis.url, "BREAKER_COOLDOWN": str(cooldown)})
    phase = ["healthy"]
    callers = []
    try:
        assert wait_until(lambda: httpx.post(server.url + "/v1/chat/completions", json=chat_body("hi", model="resilient"),
                                             headers={"authorization": f"Bearer {api_key[1]}"}).status_code == 200)
        warm_up = records(tenant=tenant).count
        assert wait_until(lambda: warm_up() >= 1)
        callers = [Caller(server.url, api_key[1], "resilient", f"caller{i}", phase) for i in range(4)]
        time.sleep(2)
        before_fault = httpx.get(primary_mock.url + "/_mock/stats").json()["requests"].get("/v1/chat/completions", 0)
        for name, knobs in (("failing", {"error": 503}), ("hanging", {"hang": 1}), ("recovering", {})):
            # Calls that start while the mock changes behaviour belong to neither phase.
            phase[0] = "changing"
            httpx.post(primary_mock.url + "/_mock/knobs", json=knobs)
            phase[0] = name
            if name != "recovering":
                time.sleep(FAULT_SECONDS)
        during_fault = httpx.get(primary_mock.url + "/_mock/stats").json()["requests"]["/v1/chat/completions"]
        assert wait_until(lambda: any(c["phase"] == "recovering" and c["provider"] == "primary"
                                      for caller in callers for c in caller.calls), timeout=cooldown + 10)
        phase[0] = "recovered"
        time.sleep(1)
    finally:
        for caller in callers:
            caller.stopping.set()
        for caller in callers:
            caller.join(30)
        primary_mock.stop()
    try:
        calls = [c for caller in callers for c in caller.calls]
        faulty = [c for c in calls if c["phase"] in ("failing", "hanging")]
        # Every call answered, in full, whatever the primary did; during the fault, by the fallback.
        assert {c["status"] for c in calls} == {200} and all(c["complete"] for c in calls)
        assert len(faulty) > 10 * 4 and {c["provider"] for c in faulty} == {"fallback"}
        assert {c["provider"] for c in calls if c["phase"] == "healthy"} == {"primary"}
        recovered = [(c["provider"], c["attempts"], round(c["seconds"], 2)) for c in calls if c["phase"] == "recovered"]
        assert {provider for provider, _, _ in recovered} == {"primary"}, (recovered, list(
            CircuitEvent.objects.filter(deployment=deployments["primary"]).values_list("state", "reason", "created_at")))
        # The breaker opened: only the calls that opened it and its probes (one per cooldown) tried the
        # primary, so the hanging provider cost a few calls 2 s each, not every call.
        probes_bound = failures + len(callers) + 2 * (2 * FAULT_SECONDS / cooldown + 2)
        tried_primary = [c for c in faulty if c["attempts"] > 1]
        assert len(tried_primary) <= probes_bound, (len(tried_primary), len(faulty))
        assert during_fault - before_fault <= probes_bound + len(callers)
        hanging = [c["seconds"] for c in calls if c["phase"] == "hanging"]
        slow = [s for s in hanging if s >= 2]
        assert len(slow) <= 2 * FAULT_SECONDS / cooldown + len(callers) and statistics.median(hanging) < 0.5
        primary_events = CircuitEvent.objects.filter(deployment=deployments["primary"])
        assert primary_events.filter(state="open").exists() and primary_events.filter(state="closed").exists()

        # Every call recorded, once, at the price of the deployment that served it.
        rows = records(tenant=tenant)
        total = len(calls) + 1  # and the first call
        assert wait_until(lambda: rows.count() >= total, timeout=30), (rows.count(), total)
        time.sleep(1)
        assert rows.count() == total and set(rows.values_list("status", flat=True)) == {"ok"}
        by_id = {r.client_request_id: r for r in rows}
        assert {by_id[c["id"]].deployment_id for c in faulty} == {deployments["fallback"].id}
        served = httpx.get(mock.url + "/_mock/stats").json()["tokens"]
        for name, (input_price, output_price) in (("fallback", ("3", "6")),):
            sums = rows.filter(deployment=deployments[name]).aggregate(
                p=Sum("prompt_tokens"), c=Sum("completion_tokens"), cost=Sum("cost_usd"))
            # Should they differ, say whether the fallback was asked more often than calls were recorded there.
            asked = httpx.get(mock.url + "/_mock/stats").json()["requests"]
            assert (sums["p"], sums["c"]) == (served["prompt"], served["completion"]), (
                asked, rows.filter(deployment=deployments[name]).count(),
                sorted(collections.Counter((c["phase"], c["provider"], c["attempts"], c["stream"])
                                           for c in calls).items(), key=str))
            assert sums["cost"] == exact_cost(sums["p"], sums["c"], input_price, output_price)
        client = redis.Redis.from_url(own_redis.url)
        assert [k for k in client.scan_iter("gw:*:inflight:*") if client.hlen(k)] == []
        print(f"\nprovider fault {FAULT_SECONDS:g}s failing + {FAULT_SECONDS:g}s hanging: {len(calls)} calls, "
              f"{len(faulty)} during the fault, all 200 from the fallback; {len(tried_primary)} tried the primary "
              f"first; hanging phase latency median {statistics.median(hanging) * 1000:.0f} ms, "
              f"max {max(hanging):.1f} s; {rows.count()} usage records")
    finally:
        server.stop()


# --- Redis paused and resumed --------------------------------------------------------------------


def post_chat(url: str, key: str, rid: str, stream: bool = False) -> dict:
    started = time.monotonic()
    response = httpx.post(url + "/v1/chat/completions", json=chat_body(f"call {rid}", stream), timeout=60,
                          headers={"authorization": f"Bearer {key}", "x-request-id": rid})
    code = response.json()["error"]["code"] if response.status_code != 200 else None
    return {"id": rid, "status": response.status_code, "code": code, "seconds": time.monotonic() - started,
            "retry_after": response.headers.get("retry-after")}


def in_threads(calls: list) -> list[dict]:
    """Run (function, args) pairs at once; their results in order."""
    results: list = [None] * len(calls)

    def run(i, fn, args):
        results[i] = fn(*args)

    threads = [threading.Thread(target=run, args=(i, fn, args)) for i, (fn, args) in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    return results


def test_redis_paused_and_resumed_keeps_the_documented_limits_behaviour_and_loses_no_usage(
        gateway_env, own_redis, tenant, mock_provider, mock):
    from keys import services as key_services
    from usage.models import Limit

    keys = {name: key_services.issue(tenant, name) for name in ("budget", "credit", "rate")}
    Limit.objects.create(tenant=tenant, api_key=keys["budget"][0], budget_usd=Decimal(100), period="month")
    Limit.objects.create(tenant=tenant, api_key=keys["credit"][0], budget_usd=Decimal(100), period="month",
                         offline_credit_usd=Decimal(1))
    Limit.objects.create(tenant=tenant, api_key=keys["rate"][0], requests_per_minute=5)
    server = start_gateway({**gateway_env, "REDIS_URL": own_redis.url, "GATEWAY_PROCESSES": "1"})
    try:
        for name, (_, key) in keys.items():
            assert wait_until(lambda k=key: httpx.post(
                server.url + "/v1/chat/completions", json=chat_body("warm up"),
                headers={"authorization": f"Bearer {k}"}).status_code == 200), name
        os.kill(own_redis.proc.pid, signal.SIGSTOP)  # Redis hangs: connections open, no answers
        paused_at = time.monotonic()
        try:
            during = in_threads(
                [(post_chat, (server.url, keys["budget"][1], f"budget-{i}")) for i in range(2)]
                + [(post_chat, (server.url, keys["credit"][1], f"credit-{i}", i == 1)) for i in range(2)]
                + [(post_chat, (server.url, keys["rate"][1], f"rate-{i}", i % 2 == 1)) for i in range(7)])
            # Those calls found Redis hanging, each waiting out a socket timeout; the process now
            # knows (gateway_project/lib/redis_health.py), and the calls after them skip Redis at once.
            later = [post_chat(server.url, keys[name][1], f"{name}-later-{i}", stream)
                     for i, (name, stream) in enumerate([("budget", False), ("credit", False), ("credit", True),
                                                         ("rate", False), ("budget", False), ("credit", False)])]
            paused_for = time.monotonic() - paused_at
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
            resumed_at = time.monotonic()
        by_key = {name: [c for c in during if c["id"].startswith(name)] for name in keys}
        # Budgets fail closed without credit, 503 limits_unavailable with Retry-After ...
        assert [(c["status"], c["code"], c["retry_after"]) for c in by_key["budget"]] == [
            (503, "limits_unavailable", "5")] * 2
        # ... spend their offline credit with it ...
        assert [c["status"] for c in by_key["credit"]] == [200, 200]
        # ... and rate limits hold in the process (its share: all of it with GATEWAY_PROCESSES=1).
        assert sorted((c["status"], c["code"]) for c in by_key["rate"]) == [(200, None)] * 5 + [
            (429, "rate_limit_exceeded")] * 2
        # The same policy for the later calls, each far quicker than the 5 s socket timeout.
        assert [(c["status"], c["code"]) for c in later] == [
            (503, "limits_unavailable"), (200, None), (200, None), (429, "rate_limit_exceeded"),
            (503, "limits_unavailable"), (200, None)]
        assert max(c["seconds"] for c in later) < 1.5, later

        # Redis is back: within a second or so the process uses it again, and budgets admit again.
        after = [post_chat(server.url, keys["budget"][1], "budget-after-0")]
        while after[-1]["status"] != 200 and time.monotonic() - resumed_at < 15:
            time.sleep(0.05)
            after.append(post_chat(server.url, keys["budget"][1], f"budget-after-{len(after)}"))
        back_after = time.monotonic() - resumed_at
        assert after[-1]["status"] == 200 and back_after < 3, (back_after, after)
        assert {(c["status"], c["code"]) for c in after[:-1]} <= {(503, "limits_unavailable")}

        rows = records(tenant=tenant)
        total = 3 + len(during) + len(later) + len(after)  # warm-ups, during the pause, after it
        assert wait_until(lambda: rows.count() >= total, timeout=30), (rows.count(), total)
        time.sleep(1)
        assert rows.count() == total
        refused = rows.exclude(http_status=200)
        assert sorted(refused.values_list("http_status", "error_type")) == [(429, "rate_limit_exceeded")] * 3 + [
            (503, "limits_unavailable")] * (2 + 2 + len(after) - 1)
        assert set(refused.values_list("cost_usd", flat=True)) == {Decimal(0)}
        served = rows.filter(http_status=200).aggregate(n=Count("id"), p=Sum("prompt_tokens"),
                                                        c=Sum("completion_tokens"))
        tokens_served = httpx.get(mock.url + "/_mock/stats").json()["tokens"]
        assert (served["n"], served["p"], served["c"]) == (3 + 2 + 5 + 3 + 1, tokens_served["prompt"],
                                                           tokens_served["completion"])
        print(f"\nRedis paused {paused_for:.1f} s: the first calls took "
              f"{min(c['seconds'] for c in during):.1f}-{max(c['seconds'] for c in during):.1f} s, "
              f"the later ones {min(c['seconds'] for c in later):.2f}-{max(c['seconds'] for c in later):.2f} s; "
              f"a budget admitted again {back_after:.1f} s after resuming ({len(after)} tries); "
              f"{rows.count()} usage records for {total} calls")
    finally:
        server.stop()


# --- PostgreSQL stopped and started ----------------------------------------------------------------


def manage(env: dict, *args: str) -> str:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**os.environ, **env},
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def own_postgres(mock):
    """A private cluster with the schema, a tenant, a provider on the mock, and two keys (warm, cold)."""
    server = OwnPostgres()
    env = {"DATABASE_URL": server.url, "REDIS_URL": ""}
    try:
        manage(env, "migrate", "-v0")
        manage(env, "create_tenant", "acme")
        manage(env, "add_provider", "mock", "--kind", "openai_compatible", "--base-url", mock.url + "/v1",
               "--model", "gpt-test=mock-gpt", "--input-price", "0.15", "--output-price", "0.60",
               "--allow-private-network")
        server.keys = [manage(env, "create_api_key", "--tenant", "acme", "--name", name).strip().splitlines()[-1]
                       for name in ("warm", "cold")]
        yield server
    finally:
        server.remove()


def test_postgresql_stopped_and_started_keeps_serving_from_the_caches_and_loses_no_usage(own_postgres, own_redis,
                                                                                         mock):
    warm, cold = own_postgres.keys
    env = {"DATABASE_URL": own_postgres.url, "REDIS_URL": own_redis.url, "GATEWAY_CONFIG_CACHE_SECONDS": "2"}
    server = start_gateway(env)
    phase = ["up"]
    caller = None
    try:
        assert wait_until(lambda: httpx.post(server.url + "/v1/chat/completions", json=chat_body("warm up"),
                                             headers={"authorization": f"Bearer {warm}"}).status_code == 200)
        assert wait_until(lambda: own_postgres.query("SELECT count(*) FROM usage_usagerecord")[0] == 1)
        caller = Caller(server.url, warm, "gpt-test", "pg", phase)
        time.sleep(1)
        own_postgres.stop()
        phase[0] = "down"
        time.sleep(3 * 2)  # three times the cache lifetime: keys, routes and limits have all expired
        cold_answer = httpx.post(server.url + "/v1/chat/completions", json=chat_body("never seen"),
                                 headers={"authorization": f"Bearer {cold}"}, timeout=30)
        ready = httpx.get(server.url + "/readyz", timeout=10).json()
        buffered = sum(redis.Redis.from_url(own_redis.url).xlen(s) for s in redis_keys.usage_streams())
        time.sleep(2)
        own_postgres.start()
        restarted_at = time.monotonic()
        phase[0] = "up again"
        time.sleep(2)
    finally:
        if caller is not None:
            caller.stopping.set()
            caller.join(30)
    try:
        calls = caller.calls
        down = [c for c in calls if c["phase"] == "down"]
        # Served from the cached key, route and limits all along; usage waited in Redis.
        assert len(down) > 20 and {c["status"] for c in calls} == {200} and all(c["complete"] for c in calls)
        assert buffered > 10
        # A key never seen before cannot be checked: a clear 503, and /readyz names the database.
        assert cold_answer.status_code == 503
        assert cold_answer.json()["error"]["code"] == "database_unavailable"
        assert cold_answer.headers["retry-after"] == "5"
        assert ready["status"] == "unready" and ready["checks"]["database"].startswith("unreachable")

        # Every call lands once, within seconds of the restart (not after USAGE_CLAIM_IDLE_MS).
        total = len(calls) + 1
        count = "SELECT count(*), count(DISTINCT request_id), sum(prompt_tokens), sum(completion_tokens) " \
                "FROM usage_usagerecord"
        assert wait_until(lambda: own_postgres.query(count)[0] >= total, timeout=20), own_postgres.query(count)
        landed_after = time.monotonic() - restarted_at
        time.sleep(1)
        n, distinct, prompt, completion = own_postgres.query(count)
        served = httpx.get(mock.url + "/_mock/stats").json()["tokens"]
        assert (n, distinct, prompt, completion) == (total, total, served["prompt"], served["completion"])
        assert own_postgres.query("SELECT count(*) FROM usage_usagerecord WHERE status <> 'ok'")[0] == 0
        print(f"\nPostgreSQL stopped ~8 s: {len(down)} calls served meanwhile, {buffered} events buffered in "
              f"Redis when checked; all {total} recorded within {landed_after:.1f} s of the restart")
    finally:
        server.stop()
