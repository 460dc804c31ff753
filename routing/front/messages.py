"""Anthropic's Messages API in front of every provider kind (POST /v1/messages).

A request in Anthropic's format becomes the gateway's OpenAI-shaped chat request,
which any adapter can send; the OpenAI-shaped answer, or stream of chunks,
becomes Anthropic's message, or named SSE events, again. Errors use Anthropic's
shape here, since the clients of this endpoint are Anthropic SDKs.
"""

import uuid

import orjson
from django.http import HttpResponse

from gateway_project.lib import errors
from providers.adapters import anthropic, for_kind, openai
from providers.adapters.base import StreamEvent, Usage
from routing import upstream

from . import estimates, relay, validation
from .endpoint import front_view
from .pipeline import Front, json_response, read_chat

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
               429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}
# Anthropic parameters with no counterpart in the OpenAI-shaped request: refused, not dropped.
UNSUPPORTED = ("top_k", "container", "mcp_servers", "context_management", "service_tier")


def _unsupported(param: str, detail: str = "") -> errors.GatewayError:
    return errors.bad_request(f"The '{param}' parameter is not supported by this gateway{': ' + detail if detail else ''}.",
                              param=param, code="unsupported_parameter")


def _image_url(block: dict, param: str) -> dict:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = source.get("url", "")
    else:
        raise _unsupported(param, f"image sources of type '{source.get('type')}'")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_text(block: dict, param: str) -> str:
    content = block.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise _unsupported(param, "tool results other than text")
        texts.append(part.get("text", ""))
    return "".join(texts)


def _user(content, param: str) -> list[dict]:
    """One Anthropic user turn: tool results first (as tool messages), then the rest."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results, parts = [], []
    for i, block in enumerate(content):
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image_url(block, f"{param}[{i}]"))
        elif kind == "tool_result":
            text = _tool_result_text(block, f"{param}[{i}]")
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text})
        else:
            raise _unsupported(f"{param}[{i}]", f"content blocks of type '{kind}'")
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _assistant(content, param: str) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text, calls = [], []
    for i, block in enumerate(content):
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append({"id": block.get("id", ""), "type": "function", "function": {
                "name": block.get("name", ""), "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind not in ("thinking", "redacted_thinking"):  # earlier reasoning has no OpenAI-shaped place
            raise _unsupported(f"{param}[{i}]", f"content blocks of type '{kind}'")
    message = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _system(system) -> list[dict]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    return [{"role": "system", "content": "".join(b.get("text", "") for b in system if isinstance(b, dict))}]


def _tools(body: dict, result: dict) -> None:
    tools = []
    for i, tool in enumerate(body.get("tools") or ()):
        if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
            raise _unsupported(f"tools[{i}]", "server tools")
        function = {"name": tool.get("name", ""), "parameters": tool["input_schema"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        tools.append({"type": "function", "function": function})
    if tools:
        result["tools"] = tools
    choice = body.get("tool_choice")
    if choice:
        kind = choice.get("type")
        result["tool_choice"] = ({"type": "function", "function": {"name": choice.get("name", "")}} if kind == "tool"
                                 else {"auto": "auto", "any": "required", "none": "none"}.get(kind, "auto"))
        if choice.get("disable_parallel_tool_use"):
            result["parallel_tool_calls"] = False


def _options(body: dict, result: dict) -> None:
    for name in UNSUPPORTED:
        if body.get(name) is not None:
            raise _unsupported(name)
    thinking = body.get("thinking")
    if thinking is not None and (not isinstance(thinking, dict) or thinking.get("type") != "disabled"):
        raise _unsupported("thinking")
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("stop_sequences", "stop")):
        if body.get(ours) is not None:
            result[theirs] = body[ours]
    user = (body.get("metadata") or {}).get("user_id")
    if user:
        result["user"] = user
    output = body.get("output_format")
    if output:
        result["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": output.get("schema") or {"type": "object"}}}


def to_openai(body: dict) -> dict:
    """An Anthropic Messages request as the gateway's OpenAI-shaped chat request."""
    messages = _system(body.get("system"))
    for i, message in enumerate(body["messages"]):
        param = f"messages[{i}].content"
        if message["role"] == "user":
            messages.extend(_user(message["content"], param))
        else:
            messages.append(_assistant(message["content"], param))
    result = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    _options(body, result)
    _tools(body, result)
    if body.get("stream"):
        result["stream"] = True
        result["stream_options"] = {"include_usage": True}
    return result


def _usage(usage: Usage | dict | None) -> dict:
    """Anthropic's usage object: input_tokens the uncached input only, cache reads and writes
    (split by lifetime) apart, as Anthropic reports them."""
    if isinstance(usage, dict):
        usage = openai.parse_usage({"usage": usage})
    return anthropic.usage_dict(usage or Usage())


def _message_id(openai_id: str | None) -> str:
    return openai_id if openai_id and openai_id.startswith("msg_") else f"msg_{uuid.uuid4().hex[:24]}"


def from_openai(completion: dict, model: str, usage: Usage | None = None) -> dict:
    """An OpenAI chat.completion as an Anthropic message; its usage the call's own when given
    (the adapter's reading of the upstream's answer keeps what OpenAI's shape cannot say)."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content = [{"type": "text", "text": message["content"]}] if message.get("content") else []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {}
        content.append({"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""),
                        "input": arguments})
    return {"id": _message_id(completion.get("id")), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None, "usage": _usage(usage or completion.get("usage"))}


def _sse(kind: str, data: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def _error_body(error: errors.GatewayError) -> dict:
    kind = ERROR_TYPES.get(error.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def error_response(error: errors.GatewayError) -> HttpResponse:
    body = orjson.dumps(_error_body(error))
    response = HttpResponse(body, status=error.status, content_type="application/json")
    response["content-length"] = str(len(body))
    for name, value in error.headers.items():
        response[name] = value
    return response


class Stream:
    """Writes OpenAI chunks as Anthropic's named SSE events, block by block."""

    def __init__(self, model: str, translate=None) -> None:
        self.model = model
        # The adapter's stream translator: what it knows of the usage when the first event
        # arrives (Anthropic's and Gemini's input and cache counts) goes into message_start.
        self.translate = translate
        self.started = False
        self.block = -1  # index of the open content block, -1 for none
        self.block_kind = ""
        self.finish = "stop"
        self.usage: Usage | None = None

    def feed(self, event: StreamEvent) -> bytes:
        chunks = event.chunk_objects()
        if event.usage is not None:
            self.usage = event.usage
        out = [] if self.started else [self._start()]
        for chunk in chunks:
            out.extend(self._chunk(chunk))
        if event.done:
            out.extend(self._stop())
        return b"".join(out)

    def _start(self) -> bytes:
        self.started = True
        message = {"id": _message_id(None), "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": _usage(getattr(self.translate, "usage", None))}
        return _sse("message_start", {"message": message}) + _sse("ping", {})

    def _open(self, kind: str, block: dict) -> list[bytes]:
        out = self._close()
        self.block += 1
        self.block_kind = kind
        return [*out, _sse("content_block_start", {"index": self.block, "content_block": block})]

    def _close(self) -> list[bytes]:
        if not self.block_kind:
            return []
        self.block_kind = ""
        return [_sse("content_block_stop", {"index": self.block})]

    def _chunk(self, chunk: dict) -> list[bytes]:
        out = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.block_kind != "text":
                    out.extend(self._open("text", {"type": "text", "text": ""}))
                out.append(_sse("content_block_delta", {"index": self.block, "delta": {
                    "type": "text_delta", "text": delta["content"]}}))
            for call in delta.get("tool_calls") or ():
                out.extend(self._tool_delta(call))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _tool_delta(self, call: dict) -> list[bytes]:
        out = []
        function = call.get("function") or {}
        if call.get("id"):
            out.extend(self._open("tool_use", {"type": "tool_use", "id": call["id"], "name": function.get("name", ""),
                                               "input": {}}))
        if function.get("arguments"):
            out.append(_sse("content_block_delta", {"index": self.block, "delta": {
                "type": "input_json_delta", "partial_json": function["arguments"]}}))
        return out

    def _stop(self) -> list[bytes]:
        usage = _usage(self.usage)
        delta = {"stop_reason": STOP_REASONS.get(self.finish, "end_turn"), "stop_sequence": None}
        return [*self._close(), _sse("message_delta", {"delta": delta, "usage": usage}), _sse("message_stop", {})]

    def error(self, error: errors.GatewayError) -> bytes:
        return _sse("error", {"error": _error_body(error)["error"]})


# --- the endpoint (POST /v1/messages) ----------------------------------------------

def parse(request) -> dict:
    body = validation.messages_body(request)
    try:
        body = to_openai(body)
    except upstream.MALFORMED:
        raise errors.bad_request("The request does not follow the Messages API: check the content blocks, "
                                 "tools and system prompt.", code="invalid_value") from None
    # What every adapter relies on holds for the translated request too.
    return validation.chat(body)


def build(adapter, target, body: dict, call):
    return adapter.chat_request(target, body, call.request_id)


async def answer(call, attempt, body: dict):
    if body.get("stream"):
        translate = for_kind(attempt.target.kind).chat_stream(attempt.target, body, True)
        return relay.relay_stream(call, attempt, translate, Stream(call.model, translate))
    _, completion, _ = await read_chat(call, attempt, body)
    message = upstream.decode(attempt.target, from_openai, completion, call.model, call.usage)
    return json_response(orjson.dumps(message))


FRONT = Front("messages", "POST", "chat", parse, build, answer, estimates.chat, error_shape=error_response)
messages = front_view(FRONT)
