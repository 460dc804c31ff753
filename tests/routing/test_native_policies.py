"""Calls that go natively keep their native path under a cache or a guardrail policy.

/v1/messages to an Anthropic deployment and /v1/responses to a native (OpenAI) deployment: fields the
gateway's chat form does not know (Anthropic's `thinking`, `metadata`, `service_tier`, a field from
next year; the Responses API's `reasoning`, `include`, `truncation`) reach the provider as the client
sent them, as the mock upstream's last request shows, while the answers are cached (miss, hit, JSON
and streamed) and while guardrails block, redact and restore, JSON and streamed.
"""

import anthropic
import httpx
import openai
import pytest

from providers.mock_upstream import directive
from tests.conftest import make_provider, usage_record, wait_until

EMAIL = "jane.roe@example.org"
THINKING = {"type": "enabled", "budget_tokens": 2048}
NEXT_YEAR = {"a_field_from_next_year": {"x": 1}}
ANTHROPIC_ONLY = {"thinking": THINKING, "metadata": {"user_id": "u-7"}, "service_tier": "auto"}
RESPONSES_ONLY = {"reasoning": {"effort": "low", "summary": "auto"}, "include": ["reasoning.encrypted_content"],
                  "truncation": "disabled"}


def sent(mock) -> dict:
    return httpx.get(mock.url + "/_mock/last").json()


def upstream_calls(mock) -> int:
    return sum(httpx.get(mock.url + "/_mock/stats").json()["requests"].values())


@pytest.fixture()
def sdks(gateway, mock, api_key):
    """An OpenAI and an Anthropic provider on the mock (answers with reasoning), and both SDKs on the key."""
    for kind in ("openai", "anthropic"):
        make_provider(kind, mock.url, knobs="reasoning_tokens=3")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: {"chat-openai", "chat-anthropic"} <= {m.id for m in client.models.list()})
    return client, claude


def assert_anthropic_fields_reached(mock) -> dict:
    last = sent(mock)
    body = last["body"]
    assert last["path"].endswith("/v1/messages")
    assert body["thinking"] == THINKING and body["metadata"] == {"user_id": "u-7"}
    assert body["service_tier"] == "auto" and body["a_field_from_next_year"] == {"x": 1}
    return body


def assert_responses_fields_reached(mock) -> dict:
    last = sent(mock)
    body = last["body"]
    assert last["path"].endswith("/responses")
    assert body["reasoning"] == RESPONSES_ONLY["reasoning"] and body["include"] == RESPONSES_ONLY["include"]
    assert body["truncation"] == "disabled"
    return body


def ask_claude(claude, stream: bool, text: str, **extra):
    """(headers, final message) of a Messages call with thinking, metadata, service_tier and an unknown field."""
    kwargs = {"model": "chat-anthropic", "max_tokens": 4096, "messages": [{"role": "user", "content": text}],
              "extra_body": NEXT_YEAR, **ANTHROPIC_ONLY, **extra}
    if stream:
        with claude.messages.stream(**kwargs) as events:
            text_seen = "".join(events.text_stream)
            message = events.get_final_message()
            assert text_seen == "".join(b.text for b in message.content if b.type == "text")
            return events.response.headers, message
    raw = claude.messages.with_raw_response.create(**kwargs)
    return raw.headers, raw.parse()


def ask_responses(client, stream: bool, text: str, **extra):
    """(headers, final response, its events or None) of a Responses call with reasoning, include, truncation."""
    kwargs = {"model": "chat-openai", "input": text, **RESPONSES_ONLY, **extra}
    if stream:
        with client.responses.with_streaming_response.create(stream=True, **kwargs) as raw:
            events = list(raw.parse())
        assert events[-1].type == "response.completed"
        return raw.headers, events[-1].response, events
    raw = client.responses.with_raw_response.create(**kwargs)
    return raw.headers, raw.parse(), None


def deltas(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def blocks(message) -> list:
    return [b.model_dump() for b in message.content]


# --- the cache -------------------------------------------------------------------------------


@pytest.fixture()
def cached(tenant, sdks):
    from routing.models import CachePolicy

    CachePolicy.objects.create(tenant=tenant)
    client, claude = sdks
    assert wait_until(lambda: "x-gateway-cache" in ask_claude(claude, False, "Warm up")[0], timeout=10)
    return sdks


def test_a_cached_anthropic_call_goes_natively_and_hits_json_and_streamed(cached, mock):
    _, claude = cached
    question = "What is the capital of France?"
    headers, first = ask_claude(claude, False, question)
    assert headers["x-gateway-cache"] == "miss"
    assert_anthropic_fields_reached(mock)
    assert [b.type for b in first.content] == ["thinking", "text"] and first.content[0].signature
    calls = upstream_calls(mock)
    headers, again = ask_claude(claude, False, question)
    assert headers["x-gateway-cache"] == "hit" and upstream_calls(mock) == calls
    assert blocks(again) == blocks(first) and again.id != first.id and again.id.startswith("msg_")
    assert again.usage.output_tokens == first.usage.output_tokens and again.model == "chat-anthropic"
    # The JSON answer's entry replayed as Anthropic's events, thinking and its signature included.
    headers, replayed = ask_claude(claude, True, question)
    assert headers["x-gateway-cache"] == "hit" and upstream_calls(mock) == calls
    assert blocks(replayed) == blocks(first) and replayed.usage.output_tokens == first.usage.output_tokens
    # A streamed answer is put together from its events, stored, and replayed as JSON and as events.
    other = "What is the capital of Spain?"
    headers, streamed = ask_claude(claude, True, other)
    assert headers["x-gateway-cache"] == "miss"
    assert_anthropic_fields_reached(mock)
    calls = upstream_calls(mock)
    for stream in (False, True):
        headers, hit = ask_claude(claude, stream, other)
        assert headers["x-gateway-cache"] == "hit" and upstream_calls(mock) == calls
        assert blocks(hit) == blocks(streamed) and hit.stop_reason == streamed.stop_reason
    # Thinking is part of the key; metadata and service_tier are not.
    assert ask_claude(claude, False, question, metadata={"user_id": "u-8"})[0]["x-gateway-cache"] == "hit"
    changed = {"type": "enabled", "budget_tokens": 3000}
    assert ask_claude(claude, False, question, thinking=changed)[0]["x-gateway-cache"] == "miss"
    assert sent(mock)["body"]["thinking"] == changed


def test_a_cached_responses_call_goes_natively_and_hits_json_and_streamed(cached, mock):
    client, _ = cached
    headers, first, _ = ask_responses(client, False, "Hello there")
    assert headers["x-gateway-cache"] == "miss"
    assert_responses_fields_reached(mock)
    reasoning = [item for item in first.output if item.type == "reasoning"]
    assert reasoning and reasoning[0].encrypted_content  # asked for by include, given by the native provider
    calls = upstream_calls(mock)
    headers, again, _ = ask_responses(client, False, "Hello there")
    assert headers["x-gateway-cache"] == "hit" and upstream_calls(mock) == calls
    assert again.output_text == first.output_text and again.id != first.id
    assert [i.type for i in again.output] == [i.type for i in first.output]
    assert again.output[0].encrypted_content == reasoning[0].encrypted_content
    assert again.usage.output_tokens == first.usage.output_tokens and again.model == "chat-openai"
    # The hit is a stored response too: a follow-up may continue from it.
    follow = client.responses.create(model="chat-openai", input="And then?", previous_response_id=again.id)
    assert follow.previous_response_id == again.id and follow.output_text
    headers, replayed, events = ask_responses(client, True, "Hello there")
    assert headers["x-gateway-cache"] == "hit" and upstream_calls(mock) == calls + 1  # the follow-up only
    assert deltas(events) == first.output_text == replayed.output_text
    assert replayed.usage.output_tokens == first.usage.output_tokens
    assert [e.sequence_number for e in events] == list(range(len(events)))
    headers, streamed, _ = ask_responses(client, True, "Good morning")
    assert headers["x-gateway-cache"] == "miss"
    assert_responses_fields_reached(mock)
    calls = upstream_calls(mock)
    for stream in (False, True):
        headers, hit, _ = ask_responses(client, stream, "Good morning")
        assert headers["x-gateway-cache"] == "hit" and upstream_calls(mock) == calls
        assert hit.output_text == streamed.output_text and hit.usage.total_tokens == streamed.usage.total_tokens
    assert ask_responses(client, False, "Hello there", truncation="auto")[0]["x-gateway-cache"] == "miss"


# --- guardrails ------------------------------------------------------------------------------


def guard(tenant, *checks, name="policy", **fields):
    from routing.models import GuardrailCheck, GuardrailPolicy

    row = GuardrailPolicy.objects.create(tenant=tenant, name=name, **fields)
    for n, spec in enumerate(checks):
        GuardrailCheck.objects.create(policy=row, order=n, **spec)
    return row


def test_native_input_redaction_hides_values_from_the_provider_and_restore_gives_them_back(tenant, sdks, mock):
    client, claude = sdks
    guard(tenant, {"kind": "pii", "stage": "input", "action": "redact"}, name="mask", restore=True)
    prompt = f"Mail {EMAIL} please " + directive(say="Done: I wrote to [EMAIL_1].")
    restored = f"Done: I wrote to {EMAIL}."
    assert wait_until(lambda: ask_claude(claude, False, prompt) and "[EMAIL_1]" in str(sent(mock)["body"]),
                      timeout=10)
    for stream in (False, True):
        headers, message = ask_claude(claude, stream, prompt)
        body = assert_anthropic_fields_reached(mock)
        assert EMAIL not in str(body) and "[EMAIL_1]" in str(body["messages"])
        assert [b.type for b in message.content] == ["thinking", "text"]
        assert message.content[1].text == restored, stream
        record = usage_record(headers["x-request-id"])
        assert record.guardrails["checks"][0]["findings"] == {"email": 1} and EMAIL not in str(record.guardrails)
    for stream in (False, True):
        _, response, events = ask_responses(client, stream, prompt)
        body = assert_responses_fields_reached(mock)
        assert EMAIL not in str(body) and "[EMAIL_1]" in str(body["input"])
        assert response.output_text == restored, stream
        if events:
            assert deltas(events) == restored


def test_native_output_redaction_in_json_and_streams_catches_findings_split_across_events(tenant, sdks, mock):
    client, claude = sdks
    guard(tenant, {"kind": "pii", "stage": "output", "action": "redact"}, name="out")
    say = directive(say=f"Reach me at {EMAIL} or 4111 1111 1111 1111, not 4111 1111 1111 1112.")
    expected = "Reach me at [EMAIL_1] or [CARD_1], not 4111 1111 1111 1112."
    assert wait_until(lambda: ask_claude(claude, False, say)[1].content[1].text == expected, timeout=10)
    assert_anthropic_fields_reached(mock)
    headers, message = ask_claude(claude, True, say)
    assert_anthropic_fields_reached(mock)
    assert [b.type for b in message.content] == ["thinking", "text"] and message.content[1].text == expected
    assert usage_record(headers["x-request-id"]).guardrails["checks"][0]["findings"] == {"email": 1, "card": 1}
    for stream in (False, True):
        _, response, events = ask_responses(client, stream, say)
        assert_responses_fields_reached(mock)
        assert response.output_text == expected, stream  # the final response repeats the text as it left
        if events:
            assert deltas(events) == expected
            done = [e for e in events if e.type == "response.output_text.done"]
            assert done and done[0].text == expected


def test_native_blocks_refuse_the_prompt_and_end_a_stream_before_the_finding(tenant, sdks, mock):
    client, claude = sdks
    guard(tenant, {"kind": "pii", "stage": "input", "action": "block"},
          {"kind": "secrets", "stage": "output", "action": "block"}, name="strict")

    def refused():
        try:
            ask_claude(claude, False, f"Write to {EMAIL}")
        except anthropic.BadRequestError as exc:
            return exc
        return None
    error = wait_until(refused, timeout=10)
    assert error is not None and "strict/pii#1" in error.body["error"]["message"]
    with pytest.raises(openai.BadRequestError) as blocked:
        ask_responses(client, False, f"Write to {EMAIL}")
    assert blocked.value.body["code"] == "content_policy_violation"
    leak = directive(say="Here is the token you asked for: ghp_abcdefghijklmnopqrstuvwxyz0123456789 enjoy")
    calls = upstream_calls(mock)
    with pytest.raises(anthropic.APIStatusError) as cut:
        with claude.messages.stream(model="chat-anthropic", max_tokens=4096, messages=[
                {"role": "user", "content": leak}], extra_body=NEXT_YEAR, **ANTHROPIC_ONLY) as events:
            assert "ghp_" not in "".join(events.text_stream)
    assert "strict/secrets#2" in str(cut.value) and upstream_calls(mock) == calls + 1
    assert_anthropic_fields_reached(mock)
    received = []
    with pytest.raises(openai.APIError) as ended:
        for event in client.responses.create(model="chat-openai", input=leak, stream=True, **RESPONSES_ONLY):
            received.append(getattr(event, "delta", "") if event.type == "response.output_text.delta" else "")
    assert "strict/secrets#2" in str(ended.value) and "ghp_" not in "".join(received)
    assert_responses_fields_reached(mock)
