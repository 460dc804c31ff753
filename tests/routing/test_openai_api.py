"""The OpenAI-compatible API, driven by the official openai SDK against a live gateway."""

import asyncio
import time
from decimal import Decimal
from types import SimpleNamespace

import httpx
import openai
import orjson
import pytest

from tests.conftest import wait_until


def usage_record(request_id: str):
    from django.db.models import Q

    from usage.models import UsageRecord

    # The id a response carries is the client's own when it sent one.
    return wait_until(lambda: UsageRecord.objects.filter(
        Q(request_id=request_id) | Q(client_request_id=request_id)).first())


def test_chat_completion_answers_and_is_billed_exactly(key_client, api_key, tenant):
    raw = key_client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert raw.headers["x-gateway-provider"] == "mock"
    assert raw.headers["x-gateway-model"] == "mock-gpt"
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_")

    record = usage_record(request_id)
    assert record is not None, "no usage record was written"
    assert record.tenant_id == tenant.id and record.api_key_id == api_key[0].id
    assert record.prompt_tokens == completion.usage.prompt_tokens > 0
    assert record.completion_tokens == completion.usage.completion_tokens > 0
    expected = (Decimal(completion.usage.prompt_tokens) * Decimal("0.15")
                + Decimal(completion.usage.completion_tokens) * Decimal("0.60")) / 1_000_000
    assert record.cost_usd == expected
    assert record.public_model == "gpt-test" and record.upstream_model == "mock-gpt"
    assert record.provider_name == "mock" and record.status == "ok" and not record.streamed
    assert not record.tokens_estimated
    assert record.latency_ms >= 0 and record.ttft_ms is not None


def test_stream_relays_chunks_and_strips_usage_the_client_did_not_ask_for(key_client):
    raw = key_client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "Stream please"}], stream=True
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 20  # the mock's default chunk count
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"

    record = usage_record(raw.headers["x-request-id"])
    assert record.streamed and record.status == "ok"
    # Billed from the upstream's own usage, which the gateway asked for.
    assert record.completion_tokens == 20 and not record.tokens_estimated
    assert record.ttft_ms is not None


def test_stream_with_include_usage_ends_with_the_usage_chunk(key_client):
    stream = key_client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "Count"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 20


def test_stream_chunks_reach_the_client_as_the_upstream_sends_them(key_client, gateway, api_key):
    """Events are relayed per network read: ones that arrive apart are not held back for the next."""
    body = {"model": "gpt-test", "stream": True,
            "messages": [{"role": "user", "content": "slowly [[mock chunks=6 chunk_delay_ms=150]]"}]}
    arrivals = []
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {api_key[1]}"}) as response:
        started = time.monotonic()
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 6
    # Each content chunk arrives on its own, about 150 ms after the one before.
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert all(gap > 0.08 for gap in gaps), gaps


def test_stream_events_arriving_together_are_relayed_together_and_one_malformed_ends_it_after_them():
    from gateway_project.lib.errors import GatewayError
    from providers.adapters.base import StreamEvent
    from routing import upstream

    def chunk(text):
        return b'data: {"content": "' + text + b'"}\n\n'

    reads = [chunk(b"a") + chunk(b"b"), chunk(b"c"), chunk(b"d") + b"data: {not json\n\n" + chunk(b"e")]

    class Content:
        async def iter_any(self):
            for read in reads:
                yield read

    def translate(data):  # as a translating adapter does: a malformed payload raises
        return StreamEvent(forward=None, chunks=[orjson.loads(data)], has_content=True)

    attempt = SimpleNamespace(target=SimpleNamespace(kind="openai", provider_name="p"), first_chunk=b"",
                              response=SimpleNamespace(content=Content()))
    batches = []

    async def read():
        async for events in upstream.stream_events(attempt, translate):
            batches.append([event.chunks[0]["content"] for event in events])

    with pytest.raises(GatewayError) as raised:
        asyncio.run(read())
    assert batches == [["a", "b"], ["c"], ["d"]]
    assert raised.value.status == 502 and raised.value.code == "upstream_error"


@pytest.mark.parametrize("want_usage", [False, True])
@pytest.mark.parametrize("usage_choices", [[], [{"index": 0, "delta": {}, "finish_reason": "stop"}]])
@pytest.mark.parametrize("cut", [None, "events", 1, 7, 40, 123])
def test_openai_stream_relayed_verbatim_writes_what_the_event_by_event_relay_writes(want_usage, usage_choices, cut):
    """An OpenAI stream to an OpenAI client goes out read by read as it came, unparsed: the client gets the
    same bytes, the same usage and the same count of content chunks as event by event, however the reads cut it."""
    from providers.adapters import openai as adapter
    from routing.front import relay
    from routing.front.call import Call

    def event(payload) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def delta(content) -> dict:
        return {"id": "c1", "object": "chat.completion.chunk", "usage": None,
                "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}

    stream = (event(delta("")) + b"".join(event(delta(f"word {i} ")) for i in range(12))
              + event({"id": "c1", "choices": usage_choices, "usage": {"prompt_tokens": 9, "completion_tokens": 12}})
              + b"data: [DONE]\n\n")
    if cut == "events":  # a read per event
        reads = [event + b"\n\n" for event in stream.split(b"\n\n")[:-1]]
    else:
        reads = [stream] if cut is None else [stream[i:i + cut] for i in range(0, len(stream), cut)]
    target = SimpleNamespace(kind="openai", provider_name="p", api_key="", settings={})

    async def relayed(verbatim: bool):
        attempt = SimpleNamespace(target=target, first_chunk=reads[0],
                                  response=SimpleNamespace(content=_Content(reads[1:])))
        call, translate = Call("chat.completions"), adapter.chat_stream(target, {}, want_usage)
        parts = (relay._verbatim(call, attempt, translate, adapter.verbatim_read) if verbatim
                 else relay._translated(call, attempt, translate, relay.OpenAIStream()))
        out = b"".join([part async for part in parts])
        return out, call.usage, call.delivered_chunks

    verbatim, by_event = asyncio.run(relayed(True)), asyncio.run(relayed(False))
    assert verbatim == by_event
    out, usage, delivered = verbatim
    assert delivered == 12 + bool(usage_choices) and usage.completion_tokens == 12  # a chunk with a choice counts
    # Some servers send the usage on the last chunk with a choice: relayed whether asked for or not.
    assert (b'"usage":{' in out) is (want_usage or bool(usage_choices)) and out.endswith(b"data: [DONE]\n\n")


def test_openai_stream_relayed_verbatim_never_passes_an_upstream_error_event_through():
    from gateway_project.lib.errors import GatewayError
    from providers.adapters import openai as adapter
    from routing.front import relay
    from routing.front.call import Call

    target = SimpleNamespace(kind="openai", provider_name="p", api_key="sk-upstream-secret", settings={})
    reads = [b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
             b'data: {"error":{"message":"bad key sk-upstream-secret"}}\n\n']
    attempt = SimpleNamespace(target=target, first_chunk=reads[0],
                              response=SimpleNamespace(content=_Content(reads[1:])))
    relayed = []

    async def read():
        call = Call("chat.completions")
        async for part in relay._verbatim(call, attempt, adapter.chat_stream(target, {}, False), adapter.verbatim_read):
            relayed.append(part)

    with pytest.raises(GatewayError):
        asyncio.run(read())
    assert relayed == [reads[0]]


class _Content:
    """An aiohttp response body that brings `reads` one network read at a time."""

    def __init__(self, reads):
        self.reads = list(reads)

    async def readany(self):
        return self.reads.pop(0) if self.reads else b""

    async def iter_any(self):
        while read := await self.readany():
            yield read


def test_embeddings_float_and_base64(key_client):
    result = key_client.embeddings.create(model="embed-test", input=["first", "second"])  # SDK asks for base64
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 1536
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens > 0
    small = key_client.embeddings.create(model="embed-test", input="x", dimensions=8, encoding_format="float")
    assert len(small.data[0].embedding) == 8


def test_models_lists_only_what_the_key_may_use(gateway, mock_provider, tenant, other_tenant):
    from keys import services as key_services
    from providers.models import Deployment, Provider

    private = Provider.objects.create(name="globex-private", kind="openai_compatible",
                                      base_url=mock_provider.base_url, tenant=other_tenant)
    Deployment.objects.create(provider=private, public_model="globex-only", upstream_model="mock-gpt")
    _, limited = key_services.issue(tenant, "limited", models_allowed=["gpt-test"])
    _, everything = key_services.issue(tenant, "all")
    _, globex = key_services.issue(other_tenant, "globex")

    def ids(secret):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
        return sorted(m.id for m in client.models.list())

    assert wait_until(lambda: ids(globex) == ["embed-test", "globex-only", "gpt-test"])
    assert ids(everything) == ["embed-test", "gpt-test"]
    assert ids(limited) == ["gpt-test"]


def test_request_id_from_the_client_is_kept_and_each_call_billed(key_client, gateway, api_key):
    from usage.models import UsageRecord

    for _ in range(2):
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {api_key[1]}", "x-request-id": "client-chosen-42"},
            json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "client-chosen-42"
    # Repeating an id must not make a call free: each has its own record.
    assert wait_until(lambda: UsageRecord.objects.filter(client_request_id="client-chosen-42").count() == 2)


@pytest.mark.parametrize("header", ["api-key", "x-api-key"])
def test_key_accepted_in_azure_and_anthropic_style_headers(key_client, gateway, api_key, header):
    response = httpx.get(gateway.url + "/v1/models", headers={header: api_key[1]})
    assert response.status_code == 200
    assert "gpt-test" in [m["id"] for m in response.json()["data"]]


def test_a_streams_checkpoint_entry_is_the_interrupted_event_at_every_point():
    """The in-flight entry a verbatim stream rewrites every second (its counts, cost and latency renewed
    in the kept bytes) is what a killed worker's reaper bills: the interrupted event, as made whole."""
    from keys.auth import KeyInfo
    from providers.adapters.base import Usage
    from providers.targets import Target
    from routing.front.call import Call

    target = Target(deployment_id=7, provider_id=3, provider_name="p", tenant_id=None, kind="openai",
                    base_url="http://x", api_key="", extra_headers={}, settings={}, public_model="m",
                    upstream_model="mock-gpt", mode="chat", context_window=1000, max_output_tokens=100, created=0,
                    input_price_per_mtok=Decimal("0.15"), output_price_per_mtok=Decimal("0.60"))
    call = Call("chat.completions", key=KeyInfo(id=5, tenant_id=2, prefix="gw-abc", allowed_models=frozenset(),
                                                tenant_allowed_models=frozenset(), expires_at=None),
                model="m", body={"model": "m", "messages": [{"role": "user", "content": "tell me a story"}]},
                target=target, streamed=True)

    def both():
        entry, whole = orjson.loads(call.checkpoint_entry()), call.interrupted_event()
        assert abs(entry.pop("latency_ms") - whole.pop("latency_ms")) <= 1
        return entry, whole

    call.delivered_chunks = 1
    call.first_token()
    for delivered in (1, 2, 57, 1000):  # the first entry made whole, the others from the kept bytes
        call.delivered_chunks = delivered
        entry, whole = both()
        assert entry == whole and entry["completion_tokens"] == delivered and entry["status"] == "interrupted"
    assert call.checkpoint_template is not None
    call.usage = Usage(prompt_tokens=40, completion_tokens=1200, cached_tokens=8)  # the upstream's report
    entry, whole = both()
    assert entry == whole and entry["cached_tokens"] == 8 and call.checkpoint_template is None
