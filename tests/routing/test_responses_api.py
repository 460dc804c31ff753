"""Every provider kind behind OpenAI's Responses API (/v1/responses), driven by the official openai SDK:
JSON and streamed answers in the Responses shape, structured output, function tools over several turns
(chained by previous_response_id and with the whole history sent back), images in, and every call billed."""

import uuid
from decimal import Decimal

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import KINDS, make_provider, usage_record, wait_until

TWENTY_WORDS = " ".join(["mock", "reply", "from", "the", "gateway", "test", "upstream", "with", "some", "words"] * 2)
# The mock counts 3 tokens per message plus its words: instructions "Be brief." (2) and input "Hello there" (2).
PROMPT_TOKENS = 10
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmM"
         "IQAAAABJRU5ErkJggg==")
# Server-sent event types a finished stream of one text message carries, in order.
NATIVE = ("openai", "azure")
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", "response.output_text.delta", "response.output_text.done",
               "response.content_part.done", "response.output_item.done", "response.completed"]


def cost(prompt: int, completion: int) -> Decimal:
    return (Decimal(prompt) * Decimal("1.5") + Decimal(completion) * Decimal("6")) / 1_000_000


every_kind = pytest.mark.parametrize("kind_client", list(KINDS), indirect=True)


@every_kind
def test_a_response_is_answered_in_the_responses_shape_and_billed(kind_client, mock):
    sdk, kind = kind_client
    raw = sdk.responses.with_raw_response.create(model=f"chat-{kind}", instructions="Be brief.", input="Hello there",
                                                 metadata={"ticket": "42"}, temperature=0.2)
    response = raw.parse()
    assert response.object == "response" and response.status == "completed" and response.id.startswith("resp_")
    assert response.output_text == TWENTY_WORDS
    message = response.output[-1]
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    assert response.usage.input_tokens == PROMPT_TOKENS and response.usage.output_tokens == 20
    assert response.usage.total_tokens == PROMPT_TOKENS + 20
    assert response.instructions == "Be brief." and response.metadata == {"ticket": "42"}
    assert response.temperature == 0.2 and response.store is True
    record = usage_record(raw.headers["x-request-id"])
    assert record.endpoint == "responses" and record.provider_name == kind and record.status == "ok"
    assert (record.prompt_tokens, record.completion_tokens) == (PROMPT_TOKENS, 20)
    assert record.cost_usd == cost(PROMPT_TOKENS, 20)
    # OpenAI and Azure take the Responses API natively; every other kind gets the chat form.
    served = httpx.get(mock.url + "/_mock/stats").json()["requests"]
    assert any(path.endswith("/responses") for path in served) == (kind in NATIVE), served


@every_kind
def test_a_streamed_response_carries_every_event_in_order_and_is_billed(kind_client):
    sdk, kind = kind_client
    request_id = f"stream-{uuid.uuid4().hex}"  # the client's own request id names the usage record
    with sdk.responses.stream(model=f"chat-{kind}", instructions="Be brief.", input="Hello there",
                              extra_headers={"x-request-id": request_id}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]] == TEXT_EVENTS
    assert types.count("response.output_text.delta") == 20
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert final.output_text == TWENTY_WORDS and final.status == "completed"
    assert final.usage.input_tokens == PROMPT_TOKENS and final.usage.output_tokens == 20
    record = usage_record(request_id)
    assert record.endpoint == "responses" and record.streamed and not record.tokens_estimated
    assert (record.prompt_tokens, record.completion_tokens) == (PROMPT_TOKENS, 20)
    assert record.cost_usd == cost(PROMPT_TOKENS, 20)


class Weather(BaseModel):
    city: str
    degrees: int


@every_kind
def test_structured_output_parses_into_the_schema(kind_client):
    sdk, kind = kind_client
    parsed = sdk.responses.parse(model=f"chat-{kind}", input="Weather in Paris as JSON", text_format=Weather)
    assert parsed.output_parsed == Weather(city="mock", degrees=1)


@every_kind
def test_function_tools_over_turns_chained_by_previous_response_id(kind_client):
    sdk, kind = kind_client
    first = sdk.responses.create(model=f"chat-{kind}", input="What is the weather in Paris?", tools=[WEATHER])
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and call.arguments == '{"city":"mock"}' and call.call_id
    second = sdk.responses.create(model=f"chat-{kind}", previous_response_id=first.id, tools=[WEATHER],
                                  input=[{"type": "function_call_output", "call_id": call.call_id,
                                          "output": '{"temperature": 21}'}])
    assert second.status == "completed" and second.output_text == TWENTY_WORDS
    assert second.previous_response_id == first.id
    # The mock counts what the provider was sent: the first turn, the call and its result came along.
    assert second.usage.input_tokens > first.usage.input_tokens


@every_kind
def test_function_tools_with_the_whole_history_sent_back(kind_client):
    sdk, kind = kind_client
    history = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = sdk.responses.create(model=f"chat-{kind}", input=history, tools=[WEATHER], store=False)
    call = next(item for item in first.output if item.type == "function_call")
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 21}'})
    second = sdk.responses.create(model=f"chat-{kind}", input=history, tools=[WEATHER], store=False)
    assert second.output_text == TWENTY_WORDS and second.store is False


@every_kind
def test_an_image_goes_in(kind_client, mock):
    sdk, kind = kind_client
    response = sdk.responses.create(model=f"chat-{kind}", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is in this picture?"},
        {"type": "input_image", "image_url": PIXEL}]}])
    assert response.output_text == TWENTY_WORDS
    assert "iVBORw0KGgo" in str(httpx.get(mock.url + "/_mock/last").json()["body"])


def test_a_failing_kind_falls_back_to_another_and_the_call_is_billed_once_answered(gateway, api_key, mock):
    from providers.models import Deployment

    broken = make_provider("anthropic", mock.url, name="broken", knobs="error=503")
    make_provider("gemini", mock.url, name="spare")
    Deployment.objects.filter(provider=broken).update(public_model="shared", priority=0)
    Deployment.objects.filter(public_model="chat-spare").update(public_model="shared", priority=1)
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "shared" in [m.id for m in sdk.models.list()])
    raw = sdk.responses.with_raw_response.create(model="shared", input="Hello there")
    assert raw.headers["x-gateway-provider"] == "spare" and raw.headers["x-gateway-attempts"] == "2"
    assert raw.parse().output_text == TWENTY_WORDS
    record = usage_record(raw.headers["x-request-id"])
    assert record.provider_name == "spare" and record.attempts == 2 and record.endpoint == "responses"


def test_what_only_a_native_deployment_can_do_goes_to_one(gateway, api_key, mock):
    """A built-in tool cannot go through the chat form: on a route with both, the native deployment serves it,
    while a plain request keeps the route's order."""
    from providers.models import Deployment

    make_provider("anthropic", mock.url, name="first")
    make_provider("openai", mock.url, name="native", knobs="lenient_tools=1")
    Deployment.objects.filter(public_model="chat-first").update(public_model="mixed", priority=0)
    Deployment.objects.filter(public_model="chat-native").update(public_model="mixed", priority=1)
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "mixed" in [m.id for m in sdk.models.list()])
    plain = sdk.responses.with_raw_response.create(model="mixed", input="Hello there")
    assert plain.headers["x-gateway-provider"] == "first"
    searched = sdk.responses.with_raw_response.create(model="mixed", input="Hello there",
                                                      tools=[{"type": "web_search"}])
    assert searched.headers["x-gateway-provider"] == "native" and searched.parse().output_text == TWENTY_WORDS
    sent = httpx.get(mock.url + "/_mock/last").json()["body"]
    assert sent["tools"] == [{"type": "web_search"}] and sent["store"] is False


def test_an_openai_compatible_deployment_may_say_it_speaks_the_responses_api(gateway, api_key, mock):
    from providers.models import Deployment

    make_provider("openai_compatible", mock.url, name="vllm")
    Deployment.objects.filter(public_model="chat-vllm").update(native_responses=True)
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "chat-vllm" in [m.id for m in sdk.models.list()])
    response = sdk.responses.create(model="chat-vllm", input="Hello there")
    assert response.output_text == TWENTY_WORDS
    assert "/v1/responses" in httpx.get(mock.url + "/_mock/stats").json()["requests"]


def test_a_conversation_moves_between_kinds_and_a_follow_up_finds_a_stream_the_moment_it_ends(gateway, api_key,
                                                                                               mock, other_tenant):
    from keys import services as key_services

    make_provider("anthropic", mock.url)
    make_provider("gemini", mock.url)
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: {"chat-anthropic", "chat-gemini"} <= {m.id for m in sdk.models.list()})
    with sdk.responses.stream(model="chat-anthropic", input="What is the weather in Paris?", tools=[WEATHER]) as stream:
        for event in stream:
            if event.type == "response.completed":
                first = event.response
                break
    # Sent while the first stream is still open: the stored response is already readable.
    assert sdk.responses.retrieve(first.id).output[0].call_id == first.output[0].call_id
    call = first.output[0]
    second = sdk.responses.create(model="chat-gemini", previous_response_id=first.id, tools=[WEATHER],
                                  input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21 C"}])
    assert second.output_text == TWENTY_WORDS
    sent = str(httpx.get(mock.url + "/_mock/last").json()["body"])
    assert "What is the weather in Paris?" in sent and "21 C" in sent  # the whole conversation reached Gemini
    stranger = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key_services.issue(other_tenant, "k")[1],
                             max_retries=0, timeout=20)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(second.id)
    with pytest.raises(openai.BadRequestError) as refused:
        stranger.responses.create(model="chat-gemini", previous_response_id=second.id, input="And tomorrow?")
    assert refused.value.body["param"] == "previous_response_id"
