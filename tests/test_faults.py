"""Faults, with real processes: what a client and an operator see, and that no usage is lost.

- a provider failing, then hanging, while clients keep calling: the fallback serves every call;
- Redis paused and resumed: the documented behaviour of limits holds, every call is recorded;
- PostgreSQL stopped and started: calls keep being served from the caches, usage lands afterwards;
- a gateway worker killed with streams in flight: those streams are billed as far as they went.

docs/security.md ("Faults") says what each proves. FAULT_SECONDS (default 8) sets how long the
provider fails and then hangs; `FAULT_SECONDS=60` runs the full minute of each.
"""

import os
import signal
import threading
import time
from decimal import Decimal

import httpx
import redis

from tests.conftest import Server, wait_until
from usage.models import UsageRecord

FAULT_SECONDS = float(os.environ.get("FAULT_SECONDS", "8"))


def start_gateway(env: dict, workers: int = 1) -> Server:
    return Server(["manage.py", "serve", "--port", "{port}", "--workers", str(workers), "--log-level", "warning"],
                  env=env, ready_path="/healthz")


def chat_body(text: str, stream: bool = False, model: str = "gpt-test") -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


class Stream(threading.Thread):
    """One streamed chat read chunk by chunk in a thread; counts the content chunks received."""

    def __init__(self, url: str, key: str, request_id: str, text: str, model: str = "gpt-test") -> None:
        super().__init__(daemon=True)
        self.args = (url, key, request_id, chat_body(text, stream=True, model=model))
        self.received = 0
        self.status: int | None = None
        self.done = False  # [DONE] arrived
        self.broken: Exception | None = None
        self.start()

    def run(self) -> None:
        url, key, request_id, body = self.args
        headers = {"authorization": f"Bearer {key}", "x-request-id": request_id}
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers,
                              timeout=60) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if line == "data: [DONE]":
                        self.done = True
                    elif line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                        self.received += 1
        except httpx.HTTPError as exc:
            self.broken = exc


def records(**filters):
    return UsageRecord.objects.filter(**filters)


def exact_cost(prompt: int, completion: int, input_price: str, output_price: str) -> Decimal:
    return (prompt * Decimal(input_price) + completion * Decimal(output_price)) / 1_000_000


# --- a gateway worker killed with streams in flight --------------------------------------------


def test_streams_of_a_killed_worker_are_billed_as_far_as_they_went(gateway_env, own_redis, tenant, api_key,
                                                                   mock_provider):
    from usage import tokens
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
        assert wait_until(lambda: all(s.received >= 25 for s in cut + kept), timeout=15)
        doomed.proc.send_signal(signal.SIGKILL)  # no cleanup, no lifespan shutdown: the streams just stop
        doomed.proc.wait()
        killed_at = time.monotonic()
        for stream in cut + kept:
            stream.join(30)
        assert all(s.broken is not None and not s.done for s in cut)
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
        kept_records = records(client_request_id__startswith="kept-")
        assert wait_until(lambda: kept_records.count() == len(kept))
        assert set(kept_records.values_list("status", "completion_tokens", "tokens_estimated")) == {
            ("ok", 80, False)}
        assert 3 <= reaped_after < 15

        time.sleep(4)  # another lease: nothing is reaped twice, the survivor's entries are gone
        assert interrupted.count() == len(cut) and records(tenant=tenant).count() == 2 + len(cut) + len(kept)
        client = redis.Redis.from_url(own_redis.url)
        assert [k for k in client.scan_iter("gw:inflight:*") if client.hlen(k)] == []
        assert client.hlen("gw:workers") == 1  # the survivor; the dead worker is forgotten
    finally:
        survivor.stop()
        doomed.stop()
