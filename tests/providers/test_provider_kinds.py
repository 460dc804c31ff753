"""Every provider kind behind the OpenAI-compatible API, driven by the official openai SDK.

The mock answers each kind in that provider's own format; what the client sees
must be the same OpenAI answer whichever kind served it.
"""

import base64
import json
from decimal import Decimal

import httpx
import openai
import orjson
import pytest

from tests.conftest import EMBEDDING_KINDS, KINDS, PROVIDER_SECRET, usage_record

ALL_KINDS = list(KINDS)
TWENTY_WORDS = " ".join(["mock", "reply", "from", "the", "gateway", "test", "upstream", "with", "some", "words"] * 2)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},  # 2 words + 3
    {"role": "user", "content": "Hi there"},  # 2 + 3
    {"role": "assistant", "content": "Hello"},  # 1 + 3
    {"role": "user", "content": "How are you"},  # 3 + 3
]
CONVERSATION_TOKENS = 20  # the mock counts words plus 3 per message, whatever the format
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
kinds = pytest.mark.parametrize("kind_client", ALL_KINDS, indirect=True)


def _cost(prompt: int, completion: int) -> Decimal:
    return (Decimal(prompt) * Decimal("1.5") + Decimal(completion) * Decimal("6")) / 1_000_000


@kinds
def test_multi_turn_chat_is_answered_and_billed(kind_client):
    client, kind = kind_client
    raw = client.chat.completions.with_raw_response.create(model=f"chat-{kind}", messages=CONVERSATION,
                                                           temperature=0.2, top_p=0.9, max_tokens=50)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == TWENTY_WORDS
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == CONVERSATION_TOKENS and completion.usage.completion_tokens == 20
    assert raw.headers["x-gateway-provider"] == kind
    record = usage_record(raw.headers["x-request-id"])
    assert (record.prompt_tokens, record.completion_tokens) == (CONVERSATION_TOKENS, 20)
    assert record.cost_usd == _cost(CONVERSATION_TOKENS, 20) and not record.tokens_estimated
    assert record.provider_name == kind and record.status == "ok" and not record.streamed


@kinds
def test_max_tokens_cuts_the_answer_with_finish_reason_length(kind_client):
    client, kind = kind_client
    completion = client.chat.completions.create(model=f"chat-{kind}", max_tokens=3,
                                                messages=[{"role": "user", "content": "Talk"}])
    assert completion.choices[0].message.content == "mock reply from"
    assert completion.choices[0].finish_reason == "length"


@kinds
def test_stream_is_translated_chunk_by_chunk_and_billed(kind_client):
    client, kind = kind_client
    raw = client.chat.completions.with_raw_response.create(
        model=f"chat-{kind}", messages=CONVERSATION, stream=True, stream_options={"include_usage": True})
    chunks = list(raw.parse())
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == TWENTY_WORDS and len(pieces) == 20  # one chunk per upstream event
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == CONVERSATION_TOKENS
    assert chunks[-1].usage.completion_tokens == 20
    assert len({c.id for c in chunks}) == 1
    record = usage_record(raw.headers["x-request-id"])
    assert record.streamed and record.status == "ok" and not record.tokens_estimated
    assert (record.prompt_tokens, record.completion_tokens) == (CONVERSATION_TOKENS, 20)
    assert record.cost_usd == _cost(CONVERSATION_TOKENS, 20) and record.ttft_ms is not None


@kinds
def test_stream_without_include_usage_has_no_usage_chunk_but_is_billed(kind_client):
    client, kind = kind_client
    raw = client.chat.completions.with_raw_response.create(
        model=f"chat-{kind}", messages=[{"role": "user", "content": "Hi [[mock chunks=4]]"}], stream=True)
    chunks = list(raw.parse())
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    record = usage_record(raw.headers["x-request-id"])
    assert record.completion_tokens == 4 and not record.tokens_estimated


@kinds
def test_tool_call_and_its_result_round_trip(kind_client):
    client, kind = kind_client
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=f"chat-{kind}", messages=messages, tools=[WEATHER],
                                           tool_choice="auto").choices[0]
    assert first.finish_reason == "tool_calls"
    call = first.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "mock"}
    messages += [first.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}]
    second = client.chat.completions.create(model=f"chat-{kind}", messages=messages, tools=[WEATHER]).choices[0]
    assert second.finish_reason == "stop" and second.message.content == TWENTY_WORDS
    assert not second.message.tool_calls


@kinds
def test_streamed_tool_call_arrives_as_deltas(kind_client):
    client, kind = kind_client
    raw = client.chat.completions.with_raw_response.create(
        model=f"chat-{kind}", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], stream=True,
        tool_choice="required" if kind not in ("ollama",) else None)
    chunks = [c for c in raw.parse() if c.choices]
    deltas = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].id and deltas[0].function.name == "get_weather" and deltas[0].index == 0
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "mock"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    record = usage_record(raw.headers["x-request-id"])
    assert record.streamed and record.completion_tokens > 0 and record.cost_usd > 0


@pytest.mark.parametrize("kind_client", [k for k in ALL_KINDS if k != "ollama"], indirect=True)
def test_a_named_tool_can_be_forced(kind_client):
    client, kind = kind_client
    other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}}}
    if kind == "cohere":
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=f"chat-{kind}", messages=[{"role": "user", "content": "Time?"}],
                                           tools=[WEATHER, other],
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
        assert refused.value.body["param"] == "tool_choice"
        return
    choice = client.chat.completions.create(
        model=f"chat-{kind}", messages=[{"role": "user", "content": "Time?"}], tools=[WEATHER, other],
        tool_choice={"type": "function", "function": {"name": "get_time"}}).choices[0]
    assert choice.message.tool_calls[0].function.name == "get_time"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"zone": "UTC"}


@kinds
def test_json_schema_response_format_gives_json(kind_client):
    client, kind = kind_client
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    completion = client.chat.completions.create(
        model=f"chat-{kind}", messages=[{"role": "user", "content": "Describe someone"}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    assert json.loads(completion.choices[0].message.content) == {"name": "mock", "age": 1}
    assert completion.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=f"chat-{kind}", messages=[{"role": "user", "content": "Describe someone"}], stream=True,
        response_format={"type": "json_object"})
    assert isinstance(json.loads("".join(c.choices[0].delta.content or "" for c in streamed if c.choices)), dict)


REPORTS_CACHED = {"openai", "openai_compatible", "azure", "anthropic", "gemini", "cohere"}
REPORTS_REASONING = {"openai", "openai_compatible", "azure", "gemini"}


@kinds
def test_cached_and_reasoning_tokens_are_reported_where_the_provider_does(kind_client):
    client, kind = kind_client
    messages = [{"role": "user", "content": "Think [[mock cached_tokens=4 reasoning_tokens=3]]"}]
    raw = client.chat.completions.with_raw_response.create(model=f"chat-{kind}", messages=messages)
    usage = raw.parse().usage
    # OpenAI's accounting: reasoning tokens are part of the completion tokens.
    assert usage.completion_tokens == 23
    cached = 4 if kind in REPORTS_CACHED else 0
    assert usage.prompt_tokens_details.cached_tokens == cached
    assert usage.completion_tokens_details.reasoning_tokens == (3 if kind in REPORTS_REASONING else 0)
    record = usage_record(raw.headers["x-request-id"])
    assert record.cached_tokens == cached and record.completion_tokens == 23


IMAGE = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


@kinds
def test_image_parts_are_sent_in_the_providers_format(kind_client):
    client, kind = kind_client
    content = [{"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": IMAGE}}]
    completion = client.chat.completions.create(model=f"chat-{kind}", messages=[{"role": "user", "content": content}])
    assert completion.choices[0].message.content == TWENTY_WORDS


UNSUPPORTED = {
    "anthropic": ("seed", 7),
    "gemini": ("logprobs", True),
    "cohere": ("n", 2),
    "ollama": ("logit_bias", {"50256": -100}),
    "huggingface": ("n", 3),
}


@pytest.mark.parametrize("kind_client", list(UNSUPPORTED), indirect=True)
def test_a_parameter_the_provider_cannot_honour_gets_400_naming_it(kind_client, mock):
    client, kind = kind_client
    param, value = UNSUPPORTED[kind]
    served = httpx.get(mock.url + "/_mock/stats").json()["requests"]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=f"chat-{kind}", messages=[{"role": "user", "content": "x"}],
                                       extra_body={param: value})
    assert refused.value.body["param"] == param and refused.value.body["code"] == "unsupported_parameter"
    assert f"'{param}'" in refused.value.body["message"] and kind in refused.value.body["message"]
    assert httpx.get(mock.url + "/_mock/stats").json()["requests"] == served  # never sent upstream


@pytest.mark.parametrize("kind_client", ["ollama"], indirect=True)
def test_ollama_refuses_image_urls_it_cannot_fetch(kind_client):
    client, kind = kind_client
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=f"chat-{kind}", messages=[{"role": "user", "content": content}])
    assert refused.value.body["param"] == "messages[0].content[0]"


@pytest.mark.parametrize("kind_client", EMBEDDING_KINDS, indirect=True)
def test_embeddings_for_every_kind_that_offers_them(kind_client):
    client, kind = kind_client
    raw = client.embeddings.with_raw_response.create(model=f"embed-{kind}", input=["first text", "second"],
                                                     dimensions=8)
    result = raw.parse()  # the SDK asks for base64 and decodes it
    assert [d.index for d in result.data] == [0, 1]
    assert [len(d.embedding) for d in result.data] == [8, 8]
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens > 0
    floats = client.embeddings.create(model=f"embed-{kind}", input="x", dimensions=4, encoding_format="float")
    assert len(floats.data[0].embedding) == 4
    record = usage_record(raw.headers["x-request-id"])
    assert record.endpoint == "embeddings" and record.prompt_tokens == result.usage.prompt_tokens > 0
    assert record.cost_usd > 0


@kinds
def test_a_stream_the_provider_cuts_ends_with_an_error_and_is_billed_as_estimated(kind_client, gateway, api_key):
    _, kind = kind_client
    headers = {"authorization": f"Bearer {api_key[1]}", "x-request-id": f"cut-{kind}"}
    body = {"model": f"chat-{kind}", "stream": True, "messages": [{"role": "user", "content": "go [[mock cut_after=5]]"}]}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers=headers, json=body, timeout=20) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert orjson.loads(events[-1])["error"]["code"] == "upstream_stream_cut"
    text = "".join(orjson.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                   if orjson.loads(e).get("choices"))
    assert text == "mock reply from the gateway"
    record = usage_record(f"cut-{kind}")
    assert record.status == "stream_cut" and record.tokens_estimated and record.completion_tokens == 5


@pytest.mark.parametrize("kind_client", ["anthropic"], indirect=True)
def test_embeddings_on_a_kind_without_them_get_400(kind_client, gateway, api_key):
    from django.core.exceptions import ValidationError

    from providers.models import Deployment, Provider

    provider = Provider.objects.get(name="anthropic")
    deployment = Deployment(provider=provider, public_model="claude-embed", upstream_model="x", mode="embedding")
    with pytest.raises(ValidationError):
        deployment.full_clean()  # the admin refuses it
    deployment.save()  # and a row made behind the admin's back is refused per call
    client, _ = kind_client
    from tests.conftest import wait_until

    response = wait_until(lambda: (r := httpx.post(gateway.url + "/v1/embeddings", json={
        "model": "claude-embed", "input": "x"}, headers={"authorization": f"Bearer {api_key[1]}"})).status_code != 404
        and r)
    assert response.status_code == 400 and response.json()["error"]["code"] == "model_not_supported"


def test_openai_compatible_providers_send_their_extra_headers(gateway, api_key, mock):
    from providers.models import Provider
    from tests.conftest import make_provider, wait_until

    provider = make_provider("openai_compatible", mock.url, name="extra")
    provider.extra_headers = {"x-mock-chunks": "3"}  # the mock obeys its knobs from headers
    provider.save()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0)
    assert wait_until(lambda: client.chat.completions.create(
        model="chat-extra", messages=[{"role": "user", "content": "x"}]).choices[0].message.content == "mock reply from")
    assert Provider.objects.get(name="extra").get_api_key() == PROVIDER_SECRET


@kinds
def test_every_kinds_chat_message_carries_refusal_null(kind_client):
    # OpenAI's schema requires the field; TGI (Hugging Face) leaves it out of its own answers.
    client, kind = kind_client
    raw = client.chat.completions.with_raw_response.create(model=f"chat-{kind}",
                                                           messages=[{"role": "user", "content": "Hi"}])
    message = orjson.loads(raw.content)["choices"][0]["message"]
    assert "refusal" in message and message["refusal"] is None
