"""Anthropic's Messages API in front of every provider kind (POST /v1/messages, /v1/messages/count_tokens).

An Anthropic deployment gets the request as the client sent it (the model renamed to the
deployment's, the anthropic-beta and anthropic-version headers passed on, fields the gateway does
not know included: Anthropic answers for itself), and its answer, JSON or named SSE events, comes
back as Anthropic sent it, thinking and signatures included; the gateway only reads its usage.
So it goes under the response cache and the guardrails too, which read and store Anthropic's own
form (`call.form`); a call that another stage applies to, and every other kind, goes through the
chat form: the request becomes the gateway's OpenAI-shaped chat request (messages_input.py) and the
answer, or stream of chunks, Anthropic's message or events again, reasoning as thinking blocks.
Errors use Anthropic's shape here, since the clients of this endpoint are Anthropic SDKs.
"""

import uuid
from dataclasses import dataclass

import orjson
from django.http import HttpResponse

from gateway_project.lib import errors
from providers.adapters import anthropic, for_kind, openai
from providers.adapters.base import StreamEvent, Usage
from routing import upstream

from . import estimates, relay, stages, validation
from .endpoint import endpoint, front_view
from .messages_input import omits_thinking, to_openai
from .pipeline import (
    Front,
    authenticate,
    authorize,
    call_upstream,
    json_response,
    read_chat,
    read_json,
    upstream_headers,
)

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
FORWARDED_HEADERS = ("anthropic-beta", "anthropic-version")
COUNT_HEADER = "x-gateway-token-count"  # "provider": Anthropic counted; "estimate": the gateway's tokenizer
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
               429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}
def _usage(usage: Usage | dict | None) -> dict:
    """Anthropic's usage object: input_tokens the uncached input only, cache reads and writes
    (split by lifetime) apart, as Anthropic reports them."""
    if isinstance(usage, dict):
        usage = openai.parse_usage({"usage": usage})
    return anthropic.usage_dict(usage or Usage())


def _message_id(openai_id: str | None) -> str:
    return openai_id if openai_id and openai_id.startswith("msg_") else f"msg_{uuid.uuid4().hex[:24]}"


def _thinking(message: dict, omit: bool) -> list[dict]:
    """The message's reasoning as a thinking block (its text left out when the client asked so), none without."""
    text, signature = message.get("reasoning_content") or "", message.get("reasoning_signature") or ""
    if not (text or signature) or (omit and not signature):
        return []
    return [{"type": "thinking", "thinking": "" if omit else text, "signature": signature}]


def from_openai(completion: dict, model: str, usage: Usage | None = None, omit_thinking: bool = False) -> dict:
    """An OpenAI chat.completion as an Anthropic message; its usage the call's own when given
    (the adapter's reading of the upstream's answer keeps what OpenAI's shape cannot say)."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content = _thinking(message, omit_thinking)
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
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

    def __init__(self, model: str, translate=None, omit_thinking: bool = False) -> None:
        self.model = model
        # The adapter's stream translator: what it knows of the usage when the first event
        # arrives (Anthropic's and Gemini's input and cache counts) goes into message_start.
        self.translate = translate
        self.omit_thinking = omit_thinking
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
            out.extend(self._reasoning(delta))
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

    def _reasoning(self, delta: dict) -> list[bytes]:
        """Reasoning as a thinking block: its text as thinking deltas, then its signature. A signature
        that comes only once the answer's blocks have begun (Gemini signs a text answer on its last
        part) is left out: a thinking block after the answer would end the message, and only a
        function call's signature must go back (Gemini signs those on the call, before it)."""
        text = "" if self.omit_thinking else delta.get("reasoning_content")
        signature = delta.get("reasoning_signature")
        if signature and self.block_kind not in ("", "thinking"):
            signature = None
        if not (text or signature):
            return []
        out = [] if self.block_kind == "thinking" else self._open("thinking", {
            "type": "thinking", "thinking": "", "signature": ""})
        if text:
            out.append(_sse("content_block_delta", {"index": self.block, "delta": {
                "type": "thinking_delta", "thinking": text}}))
        if signature:
            out.append(_sse("content_block_delta", {"index": self.block, "delta": {
                "type": "signature_delta", "signature": signature}}))
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


class NativeEvents:
    """An Anthropic stream relayed event by event, the model named as the client asked."""

    def __init__(self, model: str) -> None:
        self.model = model

    def feed(self, event: StreamEvent) -> bytes:
        data = event.forward
        if data is None:  # events an output stage rewrote (or held back: none)
            return b"".join(self._event(chunk, None) for chunk in event.chunks or ())
        return self._event(orjson.loads(data), data)

    def _event(self, parsed: dict, data: bytes | None) -> bytes:
        if parsed.get("type") == "message_start" and isinstance(parsed.get("message"), dict):
            parsed["message"]["model"] = self.model
            data = None
        data = data or orjson.dumps(parsed)
        return b"event: " + str(parsed.get("type", "message")).encode() + b"\ndata: " + data + b"\n\n"

    def error(self, error: errors.GatewayError) -> bytes:
        return _sse("error", {"error": _error_body(error)["error"]})


# --- the endpoints (POST /v1/messages, POST /v1/messages/count_tokens) ----------------

@dataclass(slots=True)
class Request:
    """The client's request as sent, for an Anthropic deployment, beside its chat form."""

    body: dict
    headers: dict[str, str]  # the anthropic-* headers to pass on
    query: str  # ?beta=true, as the beta SDK sends it


def _client_request(request, body: dict) -> Request:
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if request.headers.get(name)}
    query = "beta=true" if request.GET.get("beta") == "true" else ""
    return Request(body, headers, query)


def parse(request, counting: bool = False) -> dict:
    body = validation.messages_body(request, counting)
    request.gateway_call.front_state = _client_request(request, body)
    try:
        chat = to_openai(body)
    except upstream.MALFORMED:
        raise errors.bad_request("The request does not follow the Messages API: check the content blocks, "
                                 "tools and system prompt.", code="invalid_value") from None
    # What every adapter relies on holds for the translated request too.
    return validation.chat(chat, prompted=request.gateway_call.prompt is not None)


def native(target, call) -> bool:
    """Whether this call goes to `target` as the client sent it (else through the chat form)."""
    return target.kind == "anthropic" and stages.all_native(call)


def cache_body(call) -> dict:
    """The request as the client sent it: the cache keys it so (fields the chat form lacks included)."""
    return call.front_state.body


def rebuild(call) -> None:
    """The chat form again, from the client's request as a stage changed it (a redaction, a template's
    messages), with the parameters only the chat form carries (`call.chat_only`)."""
    chat = {**to_openai(call.front_state.body), **call.chat_only}
    chat["model"] = call.body["model"]
    call.body = validation.chat(chat)


def build(adapter, target, body: dict, call):
    if native(target, call):
        state: Request = call.front_state
        return anthropic.messages_request(target, state.body, call.request_id, state.headers, state.query)
    return adapter.chat_request(target, body, call.request_id)


async def answer(call, attempt, body: dict):
    state: Request = call.front_state
    if native(attempt.target, call):
        return await _answer_native(call, attempt, state)
    omit = omits_thinking(state.body)
    if body.get("stream"):
        translate = for_kind(attempt.target.kind).chat_stream(attempt.target, body, True)
        return relay.relay_stream(call, attempt, translate, Stream(call.model, translate, omit))
    _, completion, _ = await read_chat(call, attempt, body)
    message = upstream.decode(attempt.target, from_openai, completion, call.model, call.usage, omit)
    return json_response(orjson.dumps(message))


async def _answer_native(call, attempt, state: Request):
    call.form = "anthropic"
    if state.body.get("stream"):
        return relay.relay_stream(call, attempt, anthropic.messages_stream(attempt.target), NativeEvents(call.model))
    _, data = await read_json(call, attempt)
    call.first_token()
    if stages.has_output(call):
        data = await stages.run_answer(call, data)
    data["model"] = call.model
    return json_response(orjson.dumps(data))


FRONT = Front("messages", "POST", "chat", parse, build, answer, estimates.chat, error_shape=error_response,
              cache_body=cache_body, rebuild=rebuild)
messages = front_view(FRONT)


@endpoint("messages.count_tokens", "POST", error_response)
async def count_tokens(request, call) -> HttpResponse:
    """POST /v1/messages/count_tokens: Anthropic's own count on an Anthropic deployment, the gateway's
    estimate (header x-gateway-token-count: estimate) on any other; nothing billed either way. A named
    template (`gateway_prompt`) is expanded first, into the request Anthropic counts."""
    body = parse(request, counting=True)
    call.body, call.model = body, body["model"]
    await authenticate(request, call)
    await stages.expand_template(call, FRONT)  # the template's messages are counted, as they would be sent
    spec = await authorize(call, "chat")
    targets = [t for t in spec.targets if t.kind == "anthropic"]
    if targets:
        state: Request = call.front_state
        attempt = await call_upstream(call, spec, targets, lambda adapter, t: anthropic.count_tokens_request(
            t, state.body, call.request_id, state.headers, state.query))
        _, data = await upstream.read_json(attempt)
        response, counted = json_response(orjson.dumps({"input_tokens": data.get("input_tokens", 0)})), "provider"
    else:
        response = json_response(orjson.dumps({"input_tokens": call.estimated_prompt()}))
        counted = "estimate"
    call.key = None  # counting is free: no usage record (the request log still has the call)
    response[COUNT_HEADER] = counted
    return upstream_headers(response, call)
