"""Reasoning through /v1/responses on every kind that reasons: `reasoning.effort` reaches the provider, its
reasoning comes back as a reasoning item (summary and, when asked, encrypted_content), and the signed reasoning
goes back in a later turn, chained or sent whole, as Anthropic and Gemini require for a tool loop."""

import httpx
import openai
import pytest

from tests.conftest import make_provider, wait_until

THOUGHTS = "thinking it over"  # the mock's reasoning for reasoning_tokens=3
TWENTY_WORDS = " ".join(["mock", "reply", "from", "the", "gateway", "test", "upstream", "with", "some", "words"] * 2)
WEATHER = {"type": "function", "name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
REASONING = {"effort": "low", "summary": "auto"}
CHAT_FORM = ["anthropic", "gemini", "cohere", "ollama", "openai_compatible"]
SIGNING = ["anthropic", "gemini"]


@pytest.fixture()
def sdk(request, gateway, api_key, mock):
    kind = request.param
    make_provider(kind, mock.url, knobs="reasoning_tokens=3")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: f"chat-{kind}" in [m.id for m in client.models.list()])
    return client, kind


@pytest.mark.parametrize("sdk", [*CHAT_FORM, "openai"], indirect=True)
def test_the_reasoning_comes_back_as_a_reasoning_item_with_its_summary(sdk):
    client, kind = sdk
    response = client.responses.create(model=f"chat-{kind}", input="Hello", reasoning=REASONING)
    reasoning, message = response.output[0], response.output[-1]
    assert reasoning.type == "reasoning" and reasoning.summary[0].text
    if kind != "openai":  # through the chat form: the provider's own reasoning text
        assert reasoning.summary[0].text == THOUGHTS
    assert message.type == "message" and response.output_text == TWENTY_WORDS
    assert response.usage.output_tokens == 23
    if kind != "openai":  # through the chat form, reasoning asked for only: the mock then reasons
        unasked = client.responses.create(model=f"chat-{kind}", input="Hello")
        assert [item.type for item in unasked.output] == ["message"]


@pytest.mark.parametrize("sdk", CHAT_FORM, indirect=True)
def test_streamed_reasoning_summary_events_come_before_the_text(sdk):
    client, kind = sdk
    with client.responses.stream(model=f"chat-{kind}", input="Hello", reasoning=REASONING) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types.index("response.reasoning_summary_part.added") < types.index("response.reasoning_summary_text.delta")
    assert types.index("response.reasoning_summary_text.done") < types.index("response.output_text.delta")
    done = next(e for e in events if e.type == "response.reasoning_summary_text.done")
    assert done.text == THOUGHTS and final.output[0].summary[0].text == THOUGHTS


@pytest.mark.parametrize("sdk", SIGNING, indirect=True)
def test_signed_reasoning_goes_back_in_a_chained_tool_loop(sdk, mock):
    client, kind = sdk
    first = client.responses.create(model=f"chat-{kind}", input="Weather in Paris?", tools=[WEATHER],
                                    reasoning=REASONING, include=["reasoning.encrypted_content"])
    reasoning = first.output[0]
    call = next(item for item in first.output if item.type == "function_call")
    assert reasoning.type == "reasoning" and reasoning.encrypted_content
    # The mock refuses a tool result whose turn lost its signed reasoning, as the provider does.
    second = client.responses.create(model=f"chat-{kind}", previous_response_id=first.id, tools=[WEATHER],
                                     reasoning=REASONING, input=[{"type": "function_call_output",
                                                                  "call_id": call.call_id, "output": "21 C"}])
    assert second.output_text == TWENTY_WORDS
    assert reasoning.encrypted_content in str(httpx.get(mock.url + "/_mock/last").json()["body"])


@pytest.mark.parametrize("sdk", SIGNING, indirect=True)
def test_signed_reasoning_goes_back_when_the_client_sends_the_whole_history(sdk):
    """Codex CLI's way: store false, every turn the whole conversation with the reasoning items in it."""
    client, kind = sdk
    history = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.responses.create(model=f"chat-{kind}", input=history, tools=[WEATHER], store=False,
                                    reasoning=REASONING, include=["reasoning.encrypted_content"])
    call = next(item for item in first.output if item.type == "function_call")
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "21 C"})
    second = client.responses.create(model=f"chat-{kind}", input=history, tools=[WEATHER], store=False,
                                     reasoning=REASONING, include=["reasoning.encrypted_content"])
    assert second.output_text == TWENTY_WORDS
    without = [item for item in history if item.get("type") != "reasoning"]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=f"chat-{kind}", input=without, tools=[WEATHER], store=False,
                                reasoning=REASONING)
