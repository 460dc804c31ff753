"""What a Responses API client gets for what the gateway cannot do, or for a request it refuses:
a 400 naming the parameter, 429s of the limits, and a failure mid-stream, all in OpenAI's error shape."""

import httpx
import openai
import pytest

from tests.conftest import make_provider, wait_until


@pytest.fixture()
def sdk(gateway, api_key, mock):
    make_provider("anthropic", mock.url)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "chat-anthropic" in [m.id for m in client.models.list()])
    return client


@pytest.mark.parametrize(("extra", "param"), [
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1", "colour": "red"}}, "prompt.colour"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"include": ["nothing.at.all"]}, "include[0]"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tool_choice": {"type": "web_search"}, "tools": [{"type": "function", "name": "f", "parameters": {}}]},
     "tool_choice"),
    ({"reasoning": {"effort": ["high"]}}, "reasoning.effort"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"input": [{"role": {"nested": True}, "content": "hi"}]}, "input[0]"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": [{"type": "local_shell_call", "call_id": "c", "action": {}}]}, "input[0].type"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format"),
])
def test_what_cannot_be_served_is_a_400_naming_the_parameter(sdk, extra, param):
    body = {"model": "chat-anthropic", "input": "Hello there", **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.post("/responses", body=body, cast_to=httpx.Response)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == param, error
    assert error["message"] and error["type"] == "invalid_request_error"


def test_the_limits_429_comes_in_openais_shape(sdk, tenant):
    from usage.models import Limit

    Limit.objects.create(tenant=tenant, requests_per_minute=1)
    assert wait_until(lambda: _limited(sdk), timeout=10)


def _limited(sdk) -> bool:
    try:
        sdk.responses.create(model="chat-anthropic", input="Hello there")
        sdk.responses.create(model="chat-anthropic", input="Hello there")
    except openai.RateLimitError as exc:
        return exc.body["type"] == "rate_limit_error" and bool(exc.response.headers.get("retry-after"))
    return False


def test_a_provider_failing_mid_stream_ends_with_response_failed_and_an_error(sdk):
    events = []
    with pytest.raises(openai.APIError) as caught:
        with sdk.responses.stream(model="chat-anthropic", input="Hello there [[mock error_after=3]]") as stream:
            events.extend(stream)
    assert [e.type for e in events][-1] == "response.failed"
    assert events[-1].response.status == "failed" and events[-1].response.error.message
    assert "failed mid-stream" in caught.value.message
    assert sum(e.type == "response.output_text.delta" for e in events) == 3


def test_input_tokens_are_counted_without_a_provider_call(sdk, mock):
    counted = sdk.post("/responses/input_tokens", cast_to=httpx.Response,
                       body={"model": "chat-anthropic", "instructions": "Be brief.", "input": "Hello there"}).json()
    assert counted["object"] == "response.input_tokens" and counted["input_tokens"] > 0
    assert httpx.get(mock.url + "/_mock/stats").json().get("requests", {}) == {}


HELLO = {"role": "user", "content": "Hello there"}
# Inputs the API fuzzer (bench/fuzz_api.py) found mishandled: (extra body fields, param of the 400).
FOUND = {
    "refusal part that is no string (was a 500)": (
        {"input": [{"role": "user", "content": [{"type": "refusal", "refusal": 5}]}]}, "input[0].content[0]"),
    "text part that is no string (was dropped)": (
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": {"a": 1}}]}]}, "input[0].content[0]"),
    "reasoning summary that is no array (was a 500)": (
        {"input": [{"type": "reasoning", "summary": 5}, HELLO]}, "input[0]"),
    "reasoning summary text that is no string (was a 500)": (
        {"input": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": 5}]}, HELLO]}, "input[0]"),
    "encrypted_content that is no string (was passed on)": (
        {"input": [{"type": "reasoning", "summary": [], "encrypted_content": {"a": 1}}, HELLO]}, "input[0]"),
    "background 0 (was taken for false)": ({"background": 0}, "background"),
    "include that is an empty string (was dropped)": ({"include": ""}, "include"),
    "function parameters that are false (was taken for none)": (
        {"tools": [{"type": "function", "name": "f", "parameters": False}]}, "tools[0]"),
    "tool_choice without a type and no tools (was a 500)": ({"tool_choice": {}}, "tool_choice"),
    "item type 0 with a role (was taken for a message)": (
        {"input": [{"type": 0, "role": "user", "content": "Hello there"}]}, "input[0].type"),
}


@pytest.mark.parametrize(("extra", "param"), FOUND.values(), ids=FOUND.keys())
def test_inputs_the_fuzzer_found_get_a_clear_400(sdk, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.post("/responses", body={"model": "chat-anthropic", "input": "Hello there", **extra},
                 cast_to=httpx.Response)
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error", \
        caught.value.body


def test_a_message_item_with_a_null_type_is_a_message(sdk):
    # Pydantic models dumped with their unset fields send "type": null; it was refused as an unknown item type.
    response = sdk.post("/responses", cast_to=httpx.Response, body={
        "model": "chat-anthropic", "input": [{"type": None, "role": "user", "content": "Hello there"}]}).json()
    assert response["status"] == "completed" and response["output"][0]["content"][0]["text"]
