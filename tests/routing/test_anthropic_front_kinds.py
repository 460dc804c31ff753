"""Every provider kind behind the Anthropic-compatible /v1/messages, driven by the
official anthropic SDK: what a Claude client sees is Anthropic's format whichever
kind served it, and every call is billed."""

from decimal import Decimal

import anthropic
import pytest

from tests.conftest import KINDS, make_provider, usage_record, wait_until

TWENTY_WORDS = " ".join(["mock", "reply", "from", "the", "gateway", "test", "upstream", "with", "some", "words"] * 2)
# System 2 words + 3, then user 2 + 3, assistant 1 + 3, user 3 + 3: the mock's count.
PROMPT_TOKENS = 20
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TURNS = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"},
         {"role": "user", "content": "How are you"}]


def cost(prompt: int, completion: int) -> Decimal:
    return (Decimal(prompt) * Decimal("1.5") + Decimal(completion) * Decimal("6")) / 1_000_000


@pytest.fixture(params=list(KINDS))
def claude(request, gateway, api_key, mock):
    """(anthropic SDK client on the gateway, kind) with a provider of that kind on the mock."""
    import openai

    kind = request.param
    make_provider(kind, mock.url)
    models = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0)
    assert wait_until(lambda: f"chat-{kind}" in [m.id for m in models.models.list()])
    return anthropic.Anthropic(base_url=gateway.url, api_key=api_key[1], max_retries=0, timeout=20), kind


def test_message_with_system_and_turns_is_answered_and_billed(claude):
    client, kind = claude
    raw = client.messages.with_raw_response.create(model=f"chat-{kind}", max_tokens=50, system="Be brief.",
                                                   messages=TURNS, extra_body={"temperature": 0.2})
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.model == f"chat-{kind}"
    assert message.content[0].type == "text" and message.content[0].text == TWENTY_WORDS
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (PROMPT_TOKENS, 20)
    record = usage_record(raw.headers["x-request-id"])
    assert record.provider_name == kind and record.status == "ok" and not record.streamed
    assert (record.prompt_tokens, record.completion_tokens) == (PROMPT_TOKENS, 20)
    assert record.cost_usd == cost(PROMPT_TOKENS, 20)


def test_streamed_message_arrives_as_anthropic_events_and_is_billed(claude):
    client, kind = claude
    with client.messages.stream(model=f"chat-{kind}", max_tokens=50, system="Be brief.", messages=TURNS) as stream:
        events = list(stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    kinds_seen = [e.type for e in events]
    assert kinds_seen[0] == "message_start" and "content_block_start" in kinds_seen
    assert kinds_seen.count("content_block_delta") >= 20 and kinds_seen[-1] == "message_stop"
    assert final.content[0].text == TWENTY_WORDS and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 20
    record = usage_record(request_id)
    assert record.streamed and record.status == "ok" and not record.tokens_estimated
    assert (record.prompt_tokens, record.completion_tokens) == (PROMPT_TOKENS, 20)
    assert record.cost_usd == cost(PROMPT_TOKENS, 20)


def test_tool_use_and_its_result_round_trip(claude):
    client, kind = claude
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.messages.create(model=f"chat-{kind}", max_tokens=100, tools=[WEATHER], messages=messages)
    assert first.stop_reason == "tool_use"
    use = next(block for block in first.content if block.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "mock"} and use.id
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": '{"temperature": 21}'}]}]
    second = client.messages.create(model=f"chat-{kind}", max_tokens=100, tools=[WEATHER], messages=messages)
    assert second.stop_reason == "end_turn" and second.content[0].text == TWENTY_WORDS


def test_streamed_tool_use_arrives_as_input_json_deltas(claude):
    client, kind = claude
    choice = {"type": "auto"} if kind == "ollama" else {"type": "any"}
    with client.messages.stream(model=f"chat-{kind}", max_tokens=100, tools=[WEATHER], tool_choice=choice,
                                messages=[{"role": "user", "content": "Weather?"}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    use = next(block for block in final.content if block.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "mock"}
    assert final.stop_reason == "tool_use"
