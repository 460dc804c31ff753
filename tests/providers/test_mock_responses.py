"""The mock's OpenAI Responses API reads as OpenAI's: the openai SDK's
`client.responses.*` (JSON, `stream()`, `create(stream=True)`, `parse()`), the
Azure client and the openai-agents SDK run against it directly, and every knob
the other formats honour shapes its answers and streams."""

import asyncio
import json

import httpx
import openai
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from pydantic import BaseModel

from providers.mock_upstream import directive

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
CLOCK = {"type": "function", "name": "get_time", "description": "Time in a city", "strict": False,
         "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}
LIFECYCLE = ("response.created", "response.in_progress", "response.completed", "response.incomplete",
             "response.failed")


def _client(mock, prefix: str = "") -> openai.OpenAI:
    return openai.OpenAI(base_url=mock.url + prefix + "/v1", api_key="k", max_retries=0)


def _events(mock, headers: dict | None = None, **params) -> list[dict]:
    """The raw SSE events, each checked for OpenAI's framing: `event: <type>` then its data."""
    with httpx.stream("POST", mock.url + "/v1/responses", json={"model": "m", "stream": True, **params},
                      headers=headers) as reply:
        assert reply.headers["content-type"] == "text/event-stream"
        frames = reply.read().decode().split("\n\n")
    assert frames[-1] == ""
    events = []
    for frame in frames[:-1]:
        name, data = frame.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    return events


def test_sdk_reads_a_response_with_the_echoed_request(mock):
    response = _client(mock).responses.create(
        model="mock-gpt", instructions="Be brief.", input="Say hi [[mock chunks=4 cached_tokens=2]]",
        temperature=0.5, metadata={"run": "1"}, store=False, user="u1", previous_response_id="resp_earlier")
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text == "mock reply from the"
    message = response.output[0]
    assert message.type == "message" and message.id.startswith("msg_") and message.status == "completed"
    assert message.content[0].annotations == [] and message.content[0].logprobs == []
    # 3 per text plus its words (2 in the instructions, 5 in the input); one token per piece
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (13, 4, 17)
    assert response.usage.input_tokens_details.cached_tokens == 2
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert (response.model, response.instructions, response.temperature, response.metadata) == (
        "mock-gpt", "Be brief.", 0.5, {"run": "1"})
    assert (response.store, response.user, response.previous_response_id) == (False, "u1", "resp_earlier")
    assert (response.tool_choice, response.parallel_tool_calls, response.tools, response.error) == ("auto", True, [],
                                                                                                     None)
    assert response.text.format.type == "text" and response.truncation == "disabled"
    stats = httpx.get(mock.url + "/_mock/stats").json()
    assert stats == {"requests": {"/v1/responses": 1}, "tokens": {"prompt": 13, "completion": 4}}
    assert httpx.get(mock.url + "/_mock/last").json()["body"]["previous_response_id"] == "resp_earlier"


def test_stream_sends_the_full_event_sequence_numbered_from_zero(mock):
    events = _events(mock, input="hi [[mock chunks=3]]")
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    item_id = events[2]["item"]["id"]
    deltas = events[4:7]
    assert [d["delta"] for d in deltas] == ["mock", " reply", " from"]
    assert all((d["item_id"], d["output_index"], d["content_index"], d["logprobs"]) == (item_id, 0, 0, [])
               for d in deltas)
    assert events[7]["text"] == "mock reply from"
    final = events[-1]["response"]
    assert final["id"] == events[0]["response"]["id"] and final["output"][0]["id"] == item_id
    assert final["usage"]["output_tokens"] == 3


def test_sdk_streams_parse_every_event(mock):
    client = _client(mock)
    with client.responses.stream(model="m", input="hi [[mock chunks=5]]") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "mock reply from the gateway"
    raw = list(client.responses.create(model="m", input="hi [[mock chunks=2]]", stream=True))
    assert type(raw[-1]).__name__ == "ResponseCompletedEvent" and raw[-1].response.output_text == "mock reply"
    assert all(type(e).__name__.startswith("Response") for e in raw)


def test_reasoning_item_carries_summary_and_encrypted_content_when_asked(mock):
    client = _client(mock)
    plain = client.responses.create(model="m", input="hi [[mock reasoning_tokens=7 chunks=2]]")
    assert [o.type for o in plain.output] == ["reasoning", "message"]
    assert plain.output[0].summary == [] and plain.output[0].encrypted_content is None
    assert plain.usage.output_tokens == 9 and plain.usage.output_tokens_details.reasoning_tokens == 7
    with client.responses.stream(model="m", input="hi [[mock reasoning_tokens=7 chunks=2]]",
                                 reasoning={"effort": "low", "summary": "auto"},
                                 include=["reasoning.encrypted_content"]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    reasoning = final.output[0]
    assert reasoning.id.startswith("rs_") and reasoning.encrypted_content
    assert [p.type for p in reasoning.summary] == ["summary_text"]
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert streamed == reasoning.summary[0].text
    kinds = [e.type for e in events]
    assert kinds.index("response.reasoning_summary_part.added") < kinds.index("response.reasoning_summary_part.done")
    assert final.output_text == "mock reply" and final.reasoning.effort == "low"


def test_function_call_then_final_text_after_its_output(mock):
    client = _client(mock)
    ask = "What time is it? " + directive(tool="get_time", tool_args={"zone": "Europe/Paris"}, chunks=3)
    first = client.responses.create(model="m", input=ask, tools=[WEATHER, CLOCK])
    call = first.output[0]
    assert (call.type, call.name, call.arguments, call.status) == (
        "function_call", "get_time", '{"zone":"Europe/Paris"}', "completed")
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert first.usage.output_tokens == 3  # the arguments' 23 characters in 8-character pieces
    history = [{"role": "user", "content": ask}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "12:00"}]
    second = client.responses.create(model="m", input=history, tools=[WEATHER, CLOCK])
    assert second.output_text == "mock reply from"
    with client.responses.stream(model="m", input="Weather?", tools=[WEATHER, CLOCK]) as stream:
        arguments = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    assert json.loads(arguments) == final.output[0].parsed_arguments == {"city": "mock"}


def test_tool_choice_none_and_forced_function(mock):
    client = _client(mock)
    words = client.responses.create(model="m", input="hi [[mock chunks=2]]", tools=[WEATHER], tool_choice="none")
    assert words.output_text == "mock reply"
    forced = client.responses.create(model="m", input="hi", tools=[WEATHER, CLOCK],
                                     tool_choice={"type": "function", "name": "get_time"})
    assert forced.output[0].name == "get_time" and forced.tool_choice.name == "get_time"


def test_custom_tool_call_carries_the_scripted_input(mock):
    patch = "*** Begin Patch\n*** Add File: hi.txt\n+hi\n*** End Patch\n"
    tool = {"type": "custom", "name": "apply_patch", "description": "Edit files"}
    client = _client(mock)
    with client.responses.stream(model="m", input="Edit " + directive(tool_input=patch), tools=[tool]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    call = final.output[0]
    assert (call.type, call.name, call.input) == ("custom_tool_call", "apply_patch", patch)
    assert "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta") == patch
    after = client.responses.create(model="m", tools=[tool], input=[
        {"role": "user", "content": "Edit"}, call.model_dump(exclude_none=True),
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done"}])
    assert after.output[0].type == "message"


def test_refusal_is_a_refusal_part(mock):
    client = _client(mock)
    refused = client.responses.create(model="m", input="Do it [[mock refusal=1]]")
    part = refused.output[0].content[0]
    assert part.type == "refusal" and part.refusal.startswith("I'm sorry") and refused.output_text == ""
    with client.responses.stream(model="m", input="Do it [[mock refusal=1]]") as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.refusal.delta")
        assert stream.get_final_response().output[0].content[0].refusal == deltas == part.refusal


def test_max_output_tokens_cut_makes_the_response_incomplete(mock):
    cut = _client(mock).responses.create(model="m", input="hi [[mock chunks=10]]", max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output_text == "mock reply from" and cut.output[0].status == "incomplete"
    events = _events(mock, input="hi [[mock chunks=10]]", max_output_tokens=3)
    assert [e["type"] for e in events if e["type"] in LIFECYCLE] == [
        "response.created", "response.in_progress", "response.incomplete"]
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


class Weather(BaseModel):
    city: str
    degrees: int


def test_text_format_json_schema_and_json_object(mock):
    client = _client(mock)
    parsed = client.responses.parse(model="m", input="Weather?", text_format=Weather)
    assert parsed.output_parsed == Weather(city="mock", degrees=1)
    anything = client.responses.create(model="m", input="JSON please", text={"format": {"type": "json_object"}})
    assert isinstance(json.loads(anything.output_text), dict)


@pytest.mark.parametrize(("params", "param"), [
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "hi", "tools": [WEATHER, {"type": "function", "function": {"name": "chat_style"}}]}, "tools[1].name"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"input": "hi", "tool_choice": "sometimes"}, "tool_choice"),
    ({"input": [{"type": "message", "role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": "hi"}, {"type": "mystery"}]}, "input[1].type"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": []}, "input"),
    ({"model": None, "input": "hi"}, "model"),
])
def test_bad_requests_get_a_400_naming_the_parameter(mock, params, param):
    with pytest.raises(openai.BadRequestError) as raised:
        _client(mock).responses.create(**{"model": "m", **params})
    assert raised.value.body["param"] == param and raised.value.body["type"] == "invalid_request_error"


def test_lenient_tools_ignores_tools_the_mock_cannot_run(mock):
    hosted = [{"type": "web_search"}, {"type": "local_shell"}, {"type": "image_generation"},
              {"type": "namespace", "name": "agents", "description": "Sub-agents", "tools": [CLOCK]}]
    response = _client(mock, "/knobs/lenient_tools=1").responses.create(model="m", input="hi",
                                                                        tools=[*hosted, WEATHER])
    assert response.output[0].name == "get_weather" and len(response.tools) == 5
    words = _client(mock).responses.create(model="m", input="hi [[mock lenient_tools=1 chunks=1]]", tools=hosted)
    assert words.output_text == "mock"


def test_error_knobs_reach_the_sdk_as_openai_errors(mock):
    with pytest.raises(openai.RateLimitError) as raised:
        _client(mock, "/knobs/error=429,retry_after=7").responses.create(model="m", input="hi")
    assert raised.value.response.headers["retry-after"] == "7" and raised.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.AuthenticationError):
        _client(mock).responses.create(model="m", input="hi [[mock error=401]]")


def test_error_after_sends_an_error_event_and_ends(mock):
    events = _events(mock, input="hi [[mock chunks=5 error_after=2]]")
    assert [e["type"] for e in events[-3:]] == ["response.output_text.delta", "response.output_text.delta", "error"]
    assert events[-1] == {"type": "error", "code": "server_error", "param": None, "sequence_number": len(events) - 1,
                          "message": "The server had an error processing your request."}
    streamed = list(_client(mock).responses.create(model="m", input="hi [[mock error_after=0]]", stream=True))
    assert type(streamed[-1]).__name__ == "ResponseErrorEvent"
    assert httpx.get(mock.url + "/_mock/stats").json()["tokens"] == {}


def test_fail_after_ends_with_response_failed(mock):
    events = _events(mock, input="hi [[mock chunks=5 fail_after=1]]")
    assert events[-1]["type"] == "response.failed" and events[-2]["type"] == "response.output_text.delta"
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    assert events[-1]["sequence_number"] == len(events) - 1


def test_echo_key_puts_the_key_in_the_error_event(mock):
    events = _events(mock, {"authorization": "Bearer sk-mock-secret"}, input="hi [[mock error_after=0 echo_key=2]]")
    assert events[-1]["type"] == "error" and events[-1]["message"] == "Invalid credentials: SK-MOCK-SECRET"


def test_cut_after_drops_the_connection_mid_stream(mock):
    with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
        list(_client(mock).responses.create(model="m", input="hi [[mock chunks=5 cut_after=2]]", stream=True))


def test_no_usage_and_latency(mock):
    response = _client(mock, "/knobs/no_usage=1,latency_ms=50").responses.create(model="m", input="hi")
    assert response.usage is None and response.output_text
    assert _events(mock, input="hi [[mock no_usage=1 chunks=1]]")[-1]["response"]["usage"] is None
    assert httpx.get(mock.url + "/_mock/stats").json()["tokens"] == {}


def test_azure_clients_reach_both_responses_paths(mock):
    azure = openai.AzureOpenAI(azure_endpoint=mock.url + "/azure", api_key="az-key", api_version="2025-04-01-preview",
                               max_retries=0)
    response = azure.responses.create(model="my-deployment", input="hi [[mock chunks=2]]")
    assert response.model == "my-deployment" and response.output_text == "mock reply"
    v1 = openai.OpenAI(base_url=mock.url + "/azure/openai/v1", api_key="unused", max_retries=0,
                       default_headers={"api-key": "az-key"})
    with v1.responses.stream(model="my-deployment", input="hi [[mock chunks=3]]") as stream:
        assert stream.get_final_response().output_text == "mock reply from"
    missing_version = httpx.post(mock.url + "/azure/openai/responses", json={"model": "d", "input": "hi"})
    assert missing_version.status_code == 404
    assert httpx.get(mock.url + "/_mock/stats").json()["requests"] == {
        "/azure/openai/responses": 2, "/azure/openai/v1/responses": 1}


def test_openai_agents_sdk_runs_a_tool_turn_then_answers(mock):
    set_tracing_disabled(True)
    cities = []

    @function_tool
    def get_weather(city: str) -> str:
        """Tell the weather in a city."""
        cities.append(city)
        return f"Sunny in {city}"

    client = openai.AsyncOpenAI(base_url=mock.url + "/v1", api_key="k", max_retries=0)
    agent = Agent(name="weather", instructions="Use the tool.", tools=[get_weather],
                  model=OpenAIResponsesModel(model="m", openai_client=client))

    async def run() -> tuple[str, str]:
        result = await Runner.run(agent, "Paris? " + directive(tool_args={"city": "Paris"}, chunks=4))
        streamed = Runner.run_streamed(agent, "Rome? " + directive(tool_args={"city": "Rome"}, chunks=2))
        async for _ in streamed.stream_events():
            pass
        return result.final_output, streamed.final_output

    assert asyncio.run(run()) == ("mock reply from the", "mock reply")
    assert cities == ["Paris", "Rome"]
    assert httpx.get(mock.url + "/_mock/stats").json()["requests"] == {"/v1/responses": 4}
