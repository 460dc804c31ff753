"""Today's Messages API through /v1/messages, driven by the anthropic SDK: an Anthropic deployment gets
the request as sent (the model renamed, the anthropic-* headers passed on) and its answer as it is,
thinking and signatures included; other kinds get what translates, and their reasoning comes back as
signed thinking blocks that a later turn carries back. The mock refuses a thinking block whose
signature it did not issue, as Anthropic does."""

import anthropic
import httpx
import pytest

from tests.conftest import key_usage_records, make_provider, usage_record, wait_until

THOUGHTS = "thinking it over"  # the mock's reasoning for reasoning_tokens=3
FIVE_WORDS = "mock reply from the gateway"
WRITE = {"name": "Write", "description": "Write a file",
         "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"},
                                                           "content": {"type": "string"}},
                          "required": ["file_path", "content"]}}
CACHED = {"type": "ephemeral", "ttl": "1h"}
THINKING_KINDS = ["anthropic", "openai", "gemini"]


def claude_client(gateway, api_key, mock, kind: str) -> anthropic.Anthropic:
    make_provider(kind, mock.url, knobs="reasoning_tokens=3,chunks=5")
    client = anthropic.Anthropic(base_url=gateway.url, api_key=api_key[1], max_retries=0, timeout=20)
    headers = {"authorization": f"Bearer {api_key[1]}"}
    assert wait_until(lambda: f"chat-{kind}" in [m["id"] for m in httpx.get(
        gateway.url + "/v1/models", headers=headers).json()["data"]])
    return client


@pytest.fixture()
def claude(request, gateway, api_key, mock):
    return claude_client(gateway, api_key, mock, request.param), request.param


def sent(mock) -> dict:
    return httpx.get(mock.url + "/_mock/last").json()


kinds = pytest.mark.parametrize("claude", THINKING_KINDS, indirect=True)


@pytest.mark.parametrize("claude", ["anthropic"], indirect=True)
def test_an_anthropic_deployment_gets_todays_request_as_sent(claude, mock):
    client, _ = claude
    system = [{"type": "text", "text": "You are Claude Code."},
              {"type": "text", "text": "Be brief.", "cache_control": CACHED}]
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]},
                {"role": "system", "content": [{"type": "text", "text": "A reminder.", "cache_control": CACHED}]}]
    extra = {"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
             "container": None, "a_field_from_next_year": {"x": 1}}
    message = client.beta.messages.create(
        model="chat-anthropic", max_tokens=32000, system=system, messages=messages,
        thinking={"type": "adaptive", "display": "omitted"}, output_config={"effort": "high"},
        tools=[{**WRITE, "cache_control": {"type": "ephemeral"}}], tool_choice={"type": "none"},
        metadata={"user_id": "u-1"}, service_tier="auto", cache_control={"type": "ephemeral"},
        betas=["interleaved-thinking-2025-05-14", "context-management-2025-06-27"], extra_body=extra,
        extra_query={"beta": "true"})  # as the TypeScript SDK's beta client (Claude Code's) sends it
    last = sent(mock)
    body = last["body"]
    assert body["model"] == "mock-claude" and body["system"] == system and body["messages"] == messages
    assert body["thinking"] == {"type": "adaptive", "display": "omitted"} and body["output_config"] == {"effort": "high"}
    assert body["context_management"] == extra["context_management"] and body["a_field_from_next_year"] == {"x": 1}
    assert body["tools"][0]["cache_control"] == {"type": "ephemeral"} and body["cache_control"] == {"type": "ephemeral"}
    assert (body["metadata"], body["service_tier"], body["max_tokens"]) == ({"user_id": "u-1"}, "auto", 32000)
    assert last["path"].endswith("/v1/messages?beta=true")
    assert last["headers"]["anthropic-beta"] == "interleaved-thinking-2025-05-14,context-management-2025-06-27"
    assert last["headers"]["anthropic-version"] == client.default_headers["anthropic-version"]  # the client's
    # The answer as Anthropic gave it: a signed thinking block without its text (display omitted).
    assert message.model == "chat-anthropic"
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "" and message.content[0].signature


def thinking_turns(client, kind: str, stream: bool, thinking: dict, omit: bool = False):
    """A tool call with thinking, its result, and the answer: the thinking block goes back as it came."""
    model = f"chat-{kind}"
    messages = [{"role": "user", "content": "Write hello.txt"}]
    first = ask(client, stream, model=model, max_tokens=32000, thinking=thinking, tools=[WRITE], messages=messages)
    assert [b.type for b in first.content] == ["thinking", "tool_use"] and first.stop_reason == "tool_use"
    assert first.content[0].thinking == ("" if omit else THOUGHTS)
    assert first.content[0].signature or kind == "openai"  # OpenAI's kinds do not sign their reasoning
    use = first.content[1]
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "done"}]}]
    second = ask(client, stream, model=model, max_tokens=32000, thinking=thinking, tools=[WRITE], messages=messages)
    assert second.stop_reason == "end_turn" and [b.text for b in second.content if b.type == "text"] == [FIVE_WORDS]
    return first, second


def ask(client, stream: bool, **request):
    if not stream:
        return client.messages.create(**request)
    with client.messages.stream(**request) as events:
        return events.get_final_message()


@kinds
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_thinking_enabled_with_tools_over_several_turns(claude, stream, api_key):
    client, kind = claude
    first, second = thinking_turns(client, kind, stream, {"type": "enabled", "budget_tokens": 16000})
    records = key_usage_records(api_key[0], 2)
    assert len(records) == 2 and all(r.provider_name == kind and r.status == "ok" for r in records)
    assert [r.streamed for r in records] == [stream, stream]


@kinds
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_adaptive_thinking_with_tools_over_several_turns(claude, stream, mock):
    client, kind = claude
    thinking_turns(client, kind, stream, {"type": "adaptive"})
    if kind != "anthropic":  # the effort the client asked for (high by default) reached the provider
        body = sent(mock)["body"]
        asked = body.get("reasoning_effort") or body["generationConfig"]["thinkingConfig"]
        assert asked in ("high", {"thinkingBudget": 16384, "includeThoughts": True})


@pytest.mark.parametrize("claude", ["anthropic", "gemini"], indirect=True)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_omitted_thinking_keeps_its_signature_for_the_next_turn(claude, stream):
    client, kind = claude
    thinking_turns(client, kind, stream, {"type": "enabled", "budget_tokens": 2048, "display": "omitted"}, omit=True)


@pytest.mark.parametrize("claude", ["anthropic", "gemini"], indirect=True)
def test_a_thinking_block_with_a_forged_signature_is_refused_by_the_provider(claude):
    client, kind = claude
    messages = [{"role": "user", "content": "Write hello.txt"}]
    first = client.messages.create(model=f"chat-{kind}", max_tokens=32000, tools=[WRITE], messages=messages,
                                   thinking={"type": "enabled", "budget_tokens": 2048})
    blocks = [b.model_dump(exclude_none=True) for b in first.content]
    blocks[0]["signature"] = "Zm9yZ2Vk"
    messages += [{"role": "assistant", "content": blocks},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": blocks[1]["id"],
                                               "content": "done"}]}]
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=f"chat-{kind}", max_tokens=32000, tools=[WRITE], messages=messages,
                               thinking={"type": "enabled", "budget_tokens": 2048})
    assert refused.value.body["type"] == "error" and "signature" in refused.value.body["error"]["message"].lower()


@pytest.mark.parametrize("claude", ["anthropic"], indirect=True)
def test_streamed_thinking_is_relayed_with_its_signature_delta(claude):
    client, _ = claude
    with client.messages.stream(model="chat-anthropic", max_tokens=32000, messages=[{"role": "user", "content": "Hi"}],
                                thinking={"type": "enabled", "budget_tokens": 2048}) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert deltas.count("thinking_delta") == 3 and deltas.count("signature_delta") == 1
    assert final.model == "chat-anthropic" and final.content[0].thinking == THOUGHTS
    record = usage_record(request_id)
    assert record.streamed and not record.tokens_estimated and record.completion_tokens == 8  # 5 words + 3 thought


@pytest.mark.parametrize("claude", ["openai", "gemini"], indirect=True)
def test_other_kinds_get_system_turns_in_place_and_text_documents(claude, mock):
    client, kind = claude
    system = [{"type": "text", "text": "First."}, {"type": "text", "text": "Second.", "cache_control": CACHED}]
    client.messages.create(model=f"chat-{kind}", max_tokens=100, system=system, messages=[
        {"role": "user", "content": [{"type": "document", "title": "Notes",
                                      "source": {"type": "text", "media_type": "text/plain", "data": "Some notes"}},
                                     {"type": "text", "text": "Sum up", "cache_control": {"type": "ephemeral"}}]},
        {"role": "system", "content": "Mind the notes."}],
        extra_body={"context_management": {"edits": []}, "top_k": 5, "service_tier": "auto"})
    body = sent(mock)["body"]
    if kind == "openai":
        assert [m["role"] for m in body["messages"]] == ["system", "user", "system"]
        assert body["messages"][0]["content"] == "First.\n\nSecond."
        assert body["messages"][1]["content"][0] == {"type": "text", "text": "Notes\n\nSome notes"}
        assert "context_management" not in body and "top_k" not in body
    else:
        assert [p["text"] for p in body["systemInstruction"]["parts"]] == ["First.\n\nSecond.", "Mind the notes."]


@pytest.mark.parametrize("claude", ["openai"], indirect=True)
def test_a_pdf_for_another_kind_is_refused_in_anthropics_shape(claude):
    client, kind = claude
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=f"chat-{kind}", max_tokens=100, messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}])
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[0]" in refused.value.body["error"]["message"]


@pytest.mark.parametrize("claude", ["anthropic", "openai", "gemini"], indirect=True)
def test_count_tokens_is_anthropics_count_or_the_gateways_estimate_and_free(claude, api_key):
    client, kind = claude
    request = {"model": f"chat-{kind}", "system": "Be brief.", "messages": [{"role": "user", "content": "Hello there"}],
               "tools": [WRITE], "thinking": {"type": "enabled", "budget_tokens": 2048}}
    raw = client.messages.with_raw_response.count_tokens(**request)
    counted = raw.parse().input_tokens
    if kind == "anthropic":
        assert counted == 10 and raw.headers["x-gateway-token-count"] == "provider"  # the mock: (2+3) + (2+3)
    else:
        assert counted > 0 and raw.headers["x-gateway-token-count"] == "estimate"
    client.messages.create(model=f"chat-{kind}", max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    assert len(key_usage_records(api_key[0], 1)) == 1  # the message only: counting is not billed


@pytest.mark.parametrize("claude", ["anthropic"], indirect=True)
def test_count_tokens_errors_are_in_anthropics_shape(claude):
    client, _ = claude
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.body["type"] == "error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="chat-anthropic", messages=[])
