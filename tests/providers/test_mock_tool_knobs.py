"""Tests script an agent's turns through the mock in every wire format: the
`tool` knob picks which offered tool the model calls, `tool_args` gives the
call's arguments verbatim, and once the last message is a tool result the
model answers in words (the directive still in the conversation), so a test
gets a scripted call, then a final text. `refusal=1` makes OpenAI's formats
refuse."""

import json

import httpx
import openai
import pytest

from providers.mock_upstream import directive

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
NAMES = ("get_weather", "run_shell")
SHELL_ARGS = {"command": ["bash", "-lc", "echo hi > out.txt"], "timeout_ms": 1000}


def _chat(text, call=None):
    messages = [{"role": "user", "content": text}]
    if call:
        messages += [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": call[0], "arguments": json.dumps(call[1])}}]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "done"}]
    return {"model": "m", "messages": messages, "tools": [
        {"type": "function", "function": {"name": n, "parameters": SCHEMA}} for n in NAMES]}


def _chat_call(body):
    message = body["choices"][0]["message"]
    if not message.get("tool_calls"):
        return message["content"]
    function = message["tool_calls"][0]["function"]
    return function["name"], json.loads(function["arguments"])


def _anthropic(text, call=None):
    messages = [{"role": "user", "content": text}]
    if call:
        messages += [{"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": call[0],
                                                         "input": call[1]}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done"}]}]
    return {"model": "m", "max_tokens": 100, "messages": messages,
            "tools": [{"name": n, "input_schema": SCHEMA} for n in NAMES]}


def _anthropic_call(body):
    block = body["content"][0]
    return (block["name"], block["input"]) if block["type"] == "tool_use" else block["text"]


def _gemini(text, call=None):
    contents = [{"role": "user", "parts": [{"text": text}]}]
    if call:
        contents += [{"role": "model", "parts": [{"functionCall": {"name": call[0], "args": call[1]}}]},
                     {"role": "user", "parts": [{"functionResponse": {"name": call[0], "response": {"ok": 1}}}]}]
    return {"contents": contents, "tools": [{"functionDeclarations": [
        {"name": n, "parameters": SCHEMA} for n in NAMES]}]}


def _gemini_call(body):
    part = body["candidates"][0]["content"]["parts"][0]
    return (part["functionCall"]["name"], part["functionCall"]["args"]) if "functionCall" in part else part["text"]


def _cohere_call(body):
    message = body["message"]
    if not message.get("tool_calls"):
        return message["content"][0]["text"]
    function = message["tool_calls"][0]["function"]
    return function["name"], json.loads(function["arguments"])


def _ollama(text, call=None):
    body = _chat(text)
    if call:
        body["messages"] += [{"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": call[0], "arguments": call[1]}}]}, {"role": "tool", "content": "done"}]
    return {**body, "stream": False}


def _ollama_call(body):
    message = body["message"]
    if not message.get("tool_calls"):
        return message["content"]
    return message["tool_calls"][0]["function"]["name"], message["tool_calls"][0]["function"]["arguments"]


def _responses(text, call=None):
    items = [{"role": "user", "content": text}]
    if call:
        items += [{"type": "function_call", "call_id": "call_1", "name": call[0], "arguments": json.dumps(call[1])},
                  {"type": "function_call_output", "call_id": "call_1", "output": "done"}]
    return {"model": "m", "input": items, "tools": [
        {"type": "function", "name": n, "parameters": SCHEMA, "strict": False} for n in NAMES]}


def _responses_call(body):
    item = body["output"][0]
    return (item["name"], json.loads(item["arguments"])) if item["type"] == "function_call" else (
        item["content"][0]["text"])


FORMATS = {
    "openai": ("/v1/chat/completions", {}, _chat, _chat_call),
    "azure": ("/azure/openai/deployments/d/chat/completions?api-version=2024-10-21", {}, _chat, _chat_call),
    "anthropic": ("/v1/messages", {"anthropic-version": "2023-06-01"}, _anthropic, _anthropic_call),
    "gemini": ("/v1beta/models/m:generateContent", {}, _gemini, _gemini_call),
    "cohere": ("/cohere/v2/chat", {}, _chat, _cohere_call),
    "ollama": ("/api/chat", {}, _ollama, _ollama_call),
    "huggingface": ("/huggingface/v1/chat/completions", {}, _chat, _chat_call),
    "responses": ("/v1/responses", {}, _responses, _responses_call),
}


def _ask(mock, kind: str, text: str, call=None, headers=None):
    path, format_headers, build, read = FORMATS[kind]
    reply = httpx.post(mock.url + path, json=build(text, call), headers={**format_headers, **(headers or {})})
    assert reply.status_code == 200, reply.text
    return read(reply.json())


@pytest.mark.parametrize("kind", FORMATS)
def test_scripted_tool_call_then_words_after_its_result(mock, kind):
    prompt = "Clean up " + directive(tool="run_shell", tool_args=SHELL_ARGS, chunks=3)
    assert _ask(mock, kind, prompt) == ("run_shell", SHELL_ARGS)
    assert _ask(mock, kind, prompt, call=("run_shell", SHELL_ARGS)) == "mock reply from"


@pytest.mark.parametrize("kind", FORMATS)
def test_without_knobs_the_first_tool_gets_arguments_from_its_schema(mock, kind):
    assert _ask(mock, kind, "Weather?") == ("get_weather", {"city": "mock"})


def test_tool_knobs_come_from_headers_prefixes_and_forced_knobs_too(mock):
    shell = {"x-mock-tool": "run_shell"}
    assert _ask(mock, "openai", "hi", headers=shell) == ("run_shell", {"city": "mock"})
    prefixed = httpx.post(mock.url + "/knobs/tool=run_shell/v1/responses", json=_responses("hi")).json()
    assert _responses_call(prefixed)[0] == "run_shell"
    assert httpx.post(mock.url + "/_mock/knobs", json={"tool": "run_shell", "tool_args": {"n": 1}}).status_code == 200
    try:
        assert _ask(mock, "anthropic", "hi") == ("run_shell", {"n": 1})
    finally:
        httpx.post(mock.url + "/_mock/knobs", json={})
    assert _ask(mock, "anthropic", "hi") == ("get_weather", {"city": "mock"})


def test_empty_tool_args_are_given_verbatim(mock):
    assert _ask(mock, "openai", directive(tool_args={})) == ("get_weather", {})


def test_padded_base64_tool_args_are_read_too(mock):
    assert directive(tool_args={"a": 1}) == "[[mock tool_args=eyJhIjoxfQ]]"
    assert _ask(mock, "responses", "[[mock tool_args=eyJhIjoxfQ==]]") == ("get_weather", {"a": 1})


@pytest.mark.parametrize(("text", "complaint"), [
    ("[[mock tool_args=%%%]]", "tool_args"),
    ("[[mock tool_args=WzFd]]", "JSON object"),  # [1]
    ("[[mock tool=delete_everything]]", "delete_everything"),
])
def test_knobs_the_mock_cannot_follow_get_a_400_in_the_format_error_shape(mock, text, complaint):
    anthropic = httpx.post(mock.url + "/v1/messages", json=_anthropic(text), headers={"anthropic-version": "1"})
    assert anthropic.status_code == 400 and complaint in anthropic.json()["error"]["message"]
    assert anthropic.json()["type"] == "error"
    chat = httpx.post(mock.url + "/v1/chat/completions", json=_chat(text))
    assert chat.status_code == 400 and complaint in chat.json()["error"]["message"]


def test_forced_knobs_refuse_what_they_cannot_follow(mock):
    refused = httpx.post(mock.url + "/_mock/knobs", json={"tool_args": "bm90IGpzb24"})  # "not json"
    assert refused.status_code == 400 and "tool_args" in refused.json()["error"]["message"]
    assert _ask(mock, "openai", "hi") == ("get_weather", {"city": "mock"})


def test_directive_names_only_knobs_the_mock_knows():
    assert directive(chunks=3, refusal=True, tool="x") == "[[mock chunks=3 refusal=1 tool=x]]"
    with pytest.raises(ValueError, match="colour"):
        directive(colour=1)


def test_refusal_in_openai_chat_json_and_stream(mock):
    client = openai.OpenAI(base_url=mock.url + "/v1", api_key="k", max_retries=0)
    messages = [{"role": "user", "content": "Do it " + directive(refusal=1)}]
    message = client.chat.completions.create(model="m", messages=messages).choices[0].message
    assert message.content is None and message.refusal.startswith("I'm sorry")
    with client.chat.completions.stream(model="m", messages=messages) as stream:
        refusal = "".join(e.delta for e in stream if e.type == "refusal.delta")
        assert stream.get_final_completion().choices[0].message.refusal == refusal == message.refusal


def test_refusal_reads_as_text_where_a_format_has_no_refusal_field(mock):
    text = _ask(mock, "anthropic", "Do it " + directive(refusal=1))
    assert text.startswith("I'm sorry")
