"""Fuzzed: request validation and translation, upstream answer and stream translation,
and SSE framing, for every provider kind. Whatever comes in, each either works or
refuses with a gateway error a client can read; nothing crashes and nothing hangs."""

import asyncio
from decimal import Decimal
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_project.lib.errors import GatewayError
from providers.adapters import ADAPTERS
from providers.adapters.base import StreamEvent, UpstreamRequest
from providers.targets import Target
from routing import upstream
from routing.front import validation

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = sorted(set(ADAPTERS) - {"openai_compatible"})

# Keys the providers' payloads use, so random objects reach deep into the translators.
VOCABULARY = ["choices", "delta", "message", "content", "role", "text", "type", "index", "tool_calls", "function",
              "name", "arguments", "id", "usage", "prompt_tokens", "completion_tokens", "finish_reason", "candidates",
              "parts", "functionCall", "args", "usageMetadata", "promptTokenCount", "candidatesTokenCount",
              "finishReason", "done", "done_reason", "prompt_eval_count", "eval_count", "event", "content_block",
              "input_json_delta", "partial_json", "stop_reason", "input_tokens", "output_tokens", "tokens",
              "token", "generated_text", "details", "embeddings", "embedding", "data", "float", "values",
              "tool_call_delta", "tool_plan", "message_start", "message_delta", "content_block_start",
              "content_block_delta", "content-delta", "message-end", "tool-call-delta", "error", "detail",
              "cached_content_token_count", "cachedContentTokenCount", "thoughtsTokenCount", "inlineData",
              "thinking", "thinking_delta", "signature", "signature_delta", "thought", "thoughtSignature",
              "reasoning_content"]
scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=20)
keys = st.sampled_from(VOCABULARY) | st.text(max_size=8)
json_values = st.recursive(scalars | st.sampled_from(VOCABULARY),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
                           max_leaves=25)
image_url = st.sampled_from(["https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo=", "data:,",
                             "data:image/png;base64,@@@", "", "ftp://x"]) | st.text(max_size=30)
part = (st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40) | json_values})
        | st.fixed_dictionaries({"type": st.just("image_url"),
                                 "image_url": st.fixed_dictionaries({"url": image_url}) | json_values})
        | json_values)
content = st.text(max_size=80) | st.lists(part, max_size=4) | json_values
tool_call = st.fixed_dictionaries({"id": st.text(max_size=8), "type": st.just("function"),
                                   "function": st.fixed_dictionaries({"name": st.text(max_size=10),
                                                                      "arguments": st.text(max_size=30)})})
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])},
    optional={"content": content, "tool_calls": st.lists(tool_call | json_values, max_size=2) | json_values,
              "tool_call_id": st.text(max_size=8) | json_values, "name": st.text(max_size=8),
              "reasoning_content": st.text(max_size=20) | json_values,
              "reasoning_signature": st.text(max_size=20) | json_values})
tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=10)},
    optional={"description": st.text(max_size=20), "parameters": json_values})}) | json_values
chat_bodies = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(message, min_size=1, max_size=5)},
    optional={"temperature": st.floats(0, 2) | json_values, "top_p": st.floats(0, 1), "max_tokens": st.integers(1, 10**6),
              "max_completion_tokens": st.integers(1, 10**6), "stop": st.text(max_size=5) | json_values,
              "seed": st.integers(-2**63, 2**63 - 1) | json_values, "tools": st.lists(tool, max_size=3) | json_values,
              "tool_choice": st.sampled_from(["auto", "none", "required"]) | json_values,
              "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text"}]) | json_values,
              "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
              "n": st.integers(1, 3), "logprobs": json_values, "user": json_values, "frequency_penalty": json_values,
              "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh"])
              | json_values})


def target(kind: str) -> Target:
    return Target(deployment_id=1, provider_id=1, provider_name=f"fuzz-{kind}", tenant_id=None, kind=kind,
                  base_url="https://upstream.invalid/v1", api_key="sk-fuzz-secret-0000", extra_headers={},
                  settings={"api_version": "2024-10-21"}, public_model="m", upstream_model="upstream-m", mode="chat",
                  context_window=128_000, max_output_tokens=4096, input_price_per_mtok=Decimal(1),
                  output_price_per_mtok=Decimal(2), created=0)


def refused_cleanly(error: GatewayError) -> None:
    body = orjson.loads(error.response().content)
    assert 400 <= error.status < 600 and body["error"]["message"]
    assert "sk-fuzz-secret-0000" not in body["error"]["message"]


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(body=chat_bodies)
def test_any_chat_request_is_translated_or_refused_with_a_400(kind, body):
    request = SimpleNamespace(body=orjson.dumps(body), gateway_call=SimpleNamespace(prompt=None))
    try:
        checked = validation.chat_body(request)
        built = ADAPTERS[kind].chat_request(target(kind), checked, "req_fuzz")
    except GatewayError as error:
        assert error.status == 400, error.status
        refused_cleanly(error)
        return
    assert isinstance(built, UpstreamRequest) and built.url.startswith("https://upstream.invalid")
    if built.body is not None:
        orjson.loads(built.body)


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.dictionaries(keys, json_values, max_size=6), stream=st.booleans())
def test_any_upstream_answer_is_translated_or_reported_as_a_gateway_error(kind, data, stream):
    # The views read an answer through upstream.decode, after read_json made sure it is an object.
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    adapter, where = ADAPTERS[kind], target(kind)
    try:
        upstream.decode(where, adapter.parse_usage, data)
        result = upstream.decode(where, adapter.chat_response, where, body, data)
    except GatewayError as error:
        refused_cleanly(error)
        return
    assert result is None or isinstance(result, dict)
    if result is not None:
        orjson.dumps(result)


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(events=st.lists(json_values.map(orjson.dumps) | st.binary(max_size=40), max_size=8),
       want_usage=st.booleans())
def test_any_upstream_stream_is_translated_event_by_event_or_ended_with_an_error(kind, events, want_usage):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    translate = ADAPTERS[kind].chat_stream(target(kind), body, want_usage)
    for data in events:
        try:
            # As upstream.stream_events runs it.
            event = upstream.decode(target(kind), translate, data)
        except GatewayError as error:
            refused_cleanly(error)
            return
        assert isinstance(event, StreamEvent)
        for chunk in event.chunks or ():
            orjson.dumps(chunk)


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=json_values)
def test_any_upstream_error_body_is_mapped_without_crashing(kind, data):
    error = ADAPTERS[kind].map_error(target(kind), 500, orjson.dumps(data), {})
    refused_cleanly(error)
    assert error.status == 502


class FakeContent:
    def __init__(self, chunks):
        self.chunks = chunks

    async def iter_any(self):
        for chunk in self.chunks:
            yield chunk


@FUZZ
@given(stream=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=6), ndjson=st.booleans())
def test_sse_and_ndjson_framing_never_crash_or_hang(stream, cuts, ndjson):
    points = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    chunks = [stream[a:b] for a, b in zip(points, points[1:], strict=False)]
    attempt = SimpleNamespace(first_chunk=b"", response=SimpleNamespace(content=FakeContent(chunks)))

    async def read():
        reader = upstream._ndjson_lines if ndjson else upstream._sse_data
        return [data async for batch in reader(attempt) for data in batch]

    payloads = asyncio.run(asyncio.wait_for(read(), timeout=5))
    assert all(isinstance(p, bytes) for p in payloads)
    if not ndjson:
        # Framing is independent of how the bytes were cut.
        whole = SimpleNamespace(first_chunk=b"", response=SimpleNamespace(content=FakeContent([stream])))
        assert payloads == asyncio.run(asyncio.wait_for(
            (lambda: _collect(upstream._sse_data(whole)))(), timeout=5))


async def _collect(iterator):
    return [item async for batch in iterator for item in batch]


block = (st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20) | json_values})
         | st.fixed_dictionaries({"type": st.just("image"), "source": st.fixed_dictionaries(
             {"type": st.sampled_from(["base64", "url", "file"]), "media_type": st.just("image/png"),
              "data": st.text(max_size=10), "url": st.text(max_size=20)}) | json_values})
         | st.fixed_dictionaries({"type": st.just("tool_use"), "id": st.text(max_size=6) | json_values,
                                  "name": st.text(max_size=6) | json_values, "input": json_values})
         | st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": st.text(max_size=6) | json_values,
                                  "content": st.text(max_size=10) | st.lists(json_values, max_size=2) | json_values,
                                  "is_error": st.booleans()})
         | json_values)
anthropic_bodies = st.fixed_dictionaries(
    {"model": st.just("m"), "max_tokens": st.integers(1, 4096),
     "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                                 "content": st.text(max_size=20) | st.lists(block, max_size=3)}),
                          min_size=1, max_size=4)},
    optional={"system": st.text(max_size=20) | st.lists(block, max_size=2), "tools": st.lists(
        st.fixed_dictionaries({"name": st.text(max_size=8), "input_schema": json_values},
                              optional={"description": json_values}) | json_values, max_size=2) | json_values,
        "tool_choice": st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool", "none"])},
                                             optional={"name": json_values}) | json_values,
        "stop_sequences": st.lists(st.text(max_size=4), max_size=3) | json_values, "stream": st.booleans(),
        "temperature": st.floats(0, 1), "metadata": json_values, "thinking": json_values})


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(body=anthropic_bodies)
def test_any_messages_api_request_is_translated_or_refused_with_a_400(kind, body):
    from routing.front import messages as anthropic_front

    request = SimpleNamespace(body=orjson.dumps(body), gateway_call=SimpleNamespace(prompt=None))
    try:
        checked = validation.messages_body(request)
        try:
            translated = anthropic_front.to_openai(checked)
        except upstream.MALFORMED:
            return  # the view answers these with a 400 (see routing/front/)
        built = ADAPTERS[kind].chat_request(target(kind), validation.chat(translated), "req_fuzz")
    except GatewayError as error:
        assert error.status == 400, error.status
        refused_cleanly(error)
        return
    assert isinstance(built, UpstreamRequest)


@pytest.mark.parametrize(("kind", "answer"), [
    ("ollama", {"message": {"role": "assistant", "content": "hi"}, "done": True, "prompt_eval_count": 1e30,
                "eval_count": 2}),
    ("openai", {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2e25}}),
])
def test_a_token_count_no_provider_could_mean_is_a_bad_answer_not_a_crash(kind, answer):
    # Found by the fuzzer above: 1e30 made an int is more than the ledger's bigint or orjson holds.
    where = target(kind)
    with pytest.raises(GatewayError) as bad:
        upstream.decode(where, ADAPTERS[kind].parse_usage, answer)
    assert bad.value.status == 502 and bad.value.code == "upstream_bad_response"
