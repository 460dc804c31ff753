"""Anthropic's Messages API (POST /v1/messages), translated from and to OpenAI's chat.

The provider's base URL is https://api.anthropic.com (without /v1). The key goes
in `x-api-key`, the API version in `anthropic-version` (provider setting
`anthropic_version`). JSON response formats are honoured the way Anthropic
documents it: one forced tool whose input schema is the wanted JSON, its input
returned as the message text.

reasoning_effort turns on extended thinking with the budget openai_format.BUDGETS
gives it. OpenAI's max_completion_tokens covers reasoning and answer alike, as
Anthropic's max_tokens does, so a client's cap is sent as max_tokens; without
one, max_tokens is the budget plus the usual answer allowance (4096), within the
deployment's max_output_tokens. A cap that cannot hold the budget shrinks it to
the cap less 4096, or half the cap if that is more; under Anthropic's least
budget (1024) the call is refused. With the provider setting
anthropic_thinking=adaptive (Claude 4.6 and later; Opus 4.7 and the Claude 5
models refuse budgets), thinking is adaptive instead, at output_config.effort
low (minimal, low), medium, high or xhigh. Thinking blocks come back as
reasoning_content, the block's signature as reasoning_signature (several blocks:
their texts joined, the last signature kept, or in a stream sent last;
redacted_thinking blocks are not carried), and go back to Anthropic as one
signed thinking block leading the assistant turn. Anthropic reports no separate
count of thinking tokens: they are in output_tokens, and Usage.reasoning_tokens
is the tokenizer's count of the thinking text (openai_format.count_reasoning;
0 when the client asked for display "omitted" or the blocks were redacted). Cache reads and writes (cache_read_input_tokens, cache_creation_input_tokens
split by cache_creation into 5-minute and 1-hour writes) are kept apart in Usage, each
billed at its own price.

For /v1/messages the gateway calls Anthropic with the client's own request
instead (messages_request, count_tokens_request: only the model renamed, the
client's anthropic-beta and anthropic-version headers passed on) and relays its
stream as it is (messages_stream, which reads usage and the end on the way).
"""

import orjson

from gateway_project.lib.errors import GatewayError

from . import base
from . import openai_format as fmt
from .base import StreamEvent, UpstreamRequest, Usage, mapped_error

STREAM_FRAMING = "sse"
EMBEDDINGS = False
KIND = "anthropic"
SUPPORTED = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "tools",
                       "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort"})
JSON_TOOL = "json_response"
DEFAULT_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024
ADAPTIVE_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh"}
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                "tool_use": "tool_calls", "refusal": "content_filter", "model_context_window_exceeded": "length"}


def _headers(target, request_id: str) -> dict[str, str]:
    return base.request_headers(target, request_id, key_header="x-api-key", key_prefix="",
                                more={"anthropic-version": target.settings.get("anthropic_version", "")})


def _image(part: dict, param: str) -> dict:
    url = fmt.image_url_of(part, param)
    inline = fmt.inline_image(url)
    if inline is None:
        return {"type": "image", "source": {"type": "url", "url": url}}
    return {"type": "image", "source": {"type": "base64", "media_type": inline[0], "data": inline[1]}}


def _blocks(content, param: str) -> list[dict]:
    blocks = []
    for i, part in enumerate(fmt.parts_of(content)):
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            blocks.append(_image(part, f"{param}[{i}]"))
        else:
            raise fmt.unsupported(KIND, f"{param}[{i}]", f"content parts of type '{part.get('type')}'")
    return blocks


def _turn(message: dict, param: str, thinking: bool) -> tuple[str, list[dict]]:
    role = message["role"]
    if role == "tool":
        return "user", [{"type": "tool_result", "tool_use_id": message.get("tool_call_id", ""),
                         "content": fmt.text_of(message.get("content"))}]
    if role == "assistant":
        blocks = [b for b in _blocks(message.get("content"), param + ".content") if b.get("text") != ""]
        text, signature = fmt.reasoning_of(message, param)
        if thinking and signature:
            # Anthropic checks the signature against the text, and wants the block first.
            blocks.insert(0, {"type": "thinking", "thinking": text, "signature": signature})
        for call in message.get("tool_calls") or ():
            blocks.append({"type": "tool_use", "id": call.get("id", ""), "name": (call.get("function") or {}).get(
                "name", ""), "input": fmt.arguments_of(call, param + ".tool_calls")})
        return "assistant", blocks
    return "user", _blocks(message.get("content"), param + ".content")


def _messages(messages: list, thinking: bool) -> tuple[list[dict], list[dict]]:
    """(system blocks, turns), consecutive turns of one role merged as Anthropic expects; earlier
    thinking sent back only when thinking is on (Anthropic has no use for it otherwise)."""
    system, turns = [], []
    for i, message in enumerate(messages):
        if message["role"] in ("system", "developer"):
            system.append({"type": "text", "text": fmt.text_of(message.get("content"))})
            continue
        role, blocks = _turn(message, f"messages[{i}]", thinking)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _tool_choice(body: dict) -> dict | None:
    choice = body.get("tool_choice")
    forced = fmt.forced_function(choice)
    result = ({"type": "tool", "name": forced} if forced else
              {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}.get(choice))
    if body.get("parallel_tool_calls") is False:
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


def _tools(body: dict, payload: dict) -> None:
    functions = fmt.functions_of(body)
    json_format = fmt.json_schema_of(body)
    if functions and json_format:
        raise fmt.unsupported(KIND, "response_format", "a JSON response format cannot be combined with tools")
    if json_format:
        schema = json_format[1] or {"type": "object"}
        payload["tools"] = [{"name": JSON_TOOL, "description": "Answer with this JSON.", "input_schema": schema}]
        payload["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
        return
    if functions:
        payload["tools"] = [{"name": f.get("name", ""), "description": f.get("description", ""),
                             "input_schema": f.get("parameters") or {"type": "object", "properties": {}}}
                            for f in functions]
    if (choice := _tool_choice(body)) is not None:
        payload["tool_choice"] = choice


def _refuse_with_thinking(body: dict) -> None:
    """What Anthropic refuses alongside extended thinking, refused here with the parameter named."""
    if body.get("temperature") not in (None, 1):
        raise fmt.unsupported(KIND, "temperature", "Anthropic allows no temperature but 1 with reasoning_effort")
    if body.get("top_p") is not None and body["top_p"] < 0.95:
        raise fmt.unsupported(KIND, "top_p", "Anthropic allows top_p only from 0.95 to 1 with reasoning_effort")
    if fmt.forced_function(body.get("tool_choice")) or body.get("tool_choice") == "required":
        raise fmt.unsupported(KIND, "tool_choice", "with reasoning_effort Anthropic takes only 'auto' or 'none'")
    if fmt.json_schema_of(body):
        raise fmt.unsupported(KIND, "response_format", "Anthropic's JSON format is a forced tool call, which "
                                                       "reasoning_effort rules out")


def _thinking(target, body: dict, effort: str, result: dict) -> None:
    """Thinking and max_tokens for a reasoning_effort other than none: a budget, or adaptive
    thinking at an effort level where the provider's setting anthropic_thinking says so."""
    _refuse_with_thinking(body)
    budget = fmt.BUDGETS[effort]
    limit = fmt.max_tokens_of(body)
    if limit is None:
        limit = budget + DEFAULT_MAX_TOKENS
        if target.max_output_tokens:
            limit = min(limit, target.max_output_tokens)
    result["max_tokens"] = limit
    if target.settings.get("anthropic_thinking") == "adaptive":
        result["thinking"] = {"type": "adaptive"}
        result["output_config"] = {"effort": ADAPTIVE_EFFORTS[effort]}
        return
    if limit <= budget:  # the budget shrinks to leave the answer its usual room, or half the cap
        budget = max(limit - DEFAULT_MAX_TOKENS, limit // 2)
    if budget < MIN_THINKING_BUDGET:
        param = next((p for p in ("max_completion_tokens", "max_tokens") if body.get(p)), "reasoning_effort")
        raise GatewayError(400, f"With reasoning_effort, Anthropic needs max_completion_tokens of at least "
                                f"{2 * MIN_THINKING_BUDGET}: a thinking budget of {MIN_THINKING_BUDGET} or more, "
                                f"and room for the answer.", param=param, code="invalid_value")
    result["thinking"] = {"type": "enabled", "budget_tokens": budget}


def payload(target, body: dict) -> dict:
    fmt.refuse_unsupported(KIND, body, SUPPORTED)
    effort = fmt.reasoning_effort_of(body)
    thinking = effort not in (None, "none")
    system, turns = _messages(body["messages"], thinking)
    result = {"model": target.upstream_model, "messages": turns,
              "max_tokens": fmt.max_tokens_of(body) or min(target.max_output_tokens or DEFAULT_MAX_TOKENS,
                                                           DEFAULT_MAX_TOKENS)}
    if thinking:
        _thinking(target, body, effort, result)
    if system:
        result["system"] = system
    for name, theirs in (("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(name) is not None:
            result[theirs] = body[name]
    if stop := fmt.stop_of(body):
        result["stop_sequences"] = stop
    if body.get("user"):
        result["metadata"] = {"user_id": str(body["user"])}
    _tools(body, result)
    if body.get("stream"):
        result["stream"] = True
    return result


def chat_request(target, body: dict, request_id: str) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/v1/messages", _headers(target, request_id),
                           orjson.dumps(payload(target, body)))


def embeddings_request(target, body: dict, request_id: str) -> UpstreamRequest:
    raise GatewayError(400, f"Provider '{target.provider_name}' (Anthropic) offers no embeddings.",
                       param="model", code="model_not_supported")


def embeddings_response(target, body: dict, data: dict) -> None:
    return None


def parse_usage(data: dict) -> Usage | None:
    """A message's usage, its reasoning tokens counted from its thinking blocks (fmt.count_reasoning)."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    result = usage_of(usage)
    blocks = data.get("content") if isinstance(data.get("content"), list) else ()
    fmt.count_reasoning(result, "".join(str(b.get("thinking") or "") for b in blocks
                                        if isinstance(b, dict) and b.get("type") == "thinking"))
    return result


def usage_of(usage: dict) -> Usage:
    """Anthropic's usage object (a message's, or a stream's cumulative message_delta one) as Usage.

    Anthropic's input_tokens leave out cache reads and writes; OpenAI's prompt_tokens (and Usage's)
    include them. cache_creation splits the writes by lifetime; without it they are all 5-minute ones.
    """
    read = int(usage.get("cache_read_input_tokens") or 0)
    split = usage.get("cache_creation") if isinstance(usage.get("cache_creation"), dict) else {}
    hour = int(split.get("ephemeral_1h_input_tokens") or 0)
    written = max(int(usage.get("cache_creation_input_tokens") or 0),
                  hour + int(split.get("ephemeral_5m_input_tokens") or 0))
    return Usage(prompt_tokens=int(usage.get("input_tokens") or 0) + read + written,
                 completion_tokens=int(usage.get("output_tokens") or 0), cached_tokens=read,
                 cache_write_tokens=written, cache_write_1h_tokens=hour)


def chat_response(target, body: dict, data: dict) -> dict:
    text, calls, thoughts, signature = [], [], [], ""
    for block in data.get("content") or ():
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "thinking":
            thoughts.append(block.get("thinking") or "")
            signature = block.get("signature") or signature
        elif block.get("type") == "tool_use" and block.get("name") == JSON_TOOL and fmt.json_schema_of(body):
            text.append(orjson.dumps(block.get("input") or {}).decode())
        elif block.get("type") == "tool_use":
            calls.append(fmt.tool_call(block.get("id", ""), block.get("name", ""), block.get("input")))
    finish = STOP_REASONS.get(data.get("stop_reason") or "end_turn", "stop")
    if finish == "tool_calls" and not calls:
        finish = "stop"  # the emulated JSON format's forced tool call is an answer
    return fmt.completion(target.upstream_model, "".join(text), calls, finish, parse_usage(data),
                          completion_id=data.get("id"), reasoning="".join(thoughts), signature=signature)


class Stream(fmt.ChunkStream):
    """Anthropic's named events to OpenAI chunks, one event at a time."""

    def __init__(self, target, body: dict, want_usage: bool) -> None:
        super().__init__(target, want_usage)
        self.json_mode = fmt.json_schema_of(body) is not None
        self.blocks: dict[int, int | None] = {}  # Anthropic block index -> OpenAI tool index (None: text)
        self.finish = "stop"

    def __call__(self, data: bytes) -> StreamEvent:
        event = orjson.loads(data)
        kind = event.get("type")
        handler = getattr(self, "on_" + str(kind), None)
        return handler(event) if handler else StreamEvent(forward=None, chunks=[])

    def on_message_start(self, event: dict) -> StreamEvent:
        message = event.get("message") or {}
        self.id = message.get("id") or self.id
        self.usage = parse_usage(message) or Usage()
        return StreamEvent(forward=None, chunks=[self.chunk({"content": ""})])

    def on_content_block_start(self, event: dict) -> StreamEvent:
        block = event.get("content_block") or {}
        index = event.get("index", 0)
        if block.get("type") == "tool_use" and not (self.json_mode and block.get("name") == JSON_TOOL):
            self.blocks[index] = self.tool_calls
            return self.event([self.tool_start(block.get("id", ""), block.get("name", ""))])
        self.blocks[index] = None
        if block.get("type") == "thinking":
            return self.event([self.reasoning(block["thinking"])] if block.get("thinking") else [])
        return self.event([self.text(block["text"])] if block.get("text") else [])

    def on_content_block_delta(self, event: dict) -> StreamEvent:
        delta = event.get("delta") or {}
        tool = self.blocks.get(event.get("index", 0))
        if delta.get("type") == "text_delta":
            return self.event([self.text(delta.get("text", ""))])
        if delta.get("type") == "thinking_delta":
            return self.event([self.reasoning(delta["thinking"])] if delta.get("thinking") else [])
        if delta.get("type") == "signature_delta":
            return self.event([self.signature(delta["signature"])] if delta.get("signature") else [])
        if delta.get("type") == "input_json_delta":
            piece = delta.get("partial_json", "")
            if not piece:
                return self.event([])
            return self.event([self.text(piece) if tool is None else self.tool_arguments(tool, piece)])
        return self.event([])

    def on_message_delta(self, event: dict) -> StreamEvent:
        reason = (event.get("delta") or {}).get("stop_reason")
        if reason:
            self.finish = STOP_REASONS.get(reason, "stop")
        usage = event.get("usage") or {}
        if any(name in usage for name in _INPUT_COUNTS):
            # The current API repeats the input counts here, cumulative: they replace message_start's.
            self.usage = usage_of({**usage_dict(self.usage), **usage})
        elif "output_tokens" in usage:
            self.usage.completion_tokens = int(usage["output_tokens"] or 0)
        return self.event([])

    def on_message_stop(self, event: dict) -> StreamEvent:
        if self.finish == "tool_calls" and not self.tool_calls:
            self.finish = "stop"  # the emulated JSON format's forced tool call is an answer
        return self.end(self.finish, [])

    def on_error(self, event: dict) -> StreamEvent:
        raise self.failed(orjson.dumps(event))


_INPUT_COUNTS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "cache_creation")


def usage_dict(usage: Usage) -> dict:
    """Usage as Anthropic's usage object (the /v1/messages front answers with it too)."""
    return {"input_tokens": usage.input_tokens, "cache_read_input_tokens": usage.cached_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": usage.cache_write_5m_tokens,
                               "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens},
            "output_tokens": usage.completion_tokens}


def chat_stream(target, body: dict, want_usage: bool) -> Stream:
    return Stream(target, body, want_usage)


# --- the Messages API as the client sent it (routing/front/messages.py) --------------------

def _native(target, path: str, body: dict, request_id: str, headers: dict[str, str], query: str) -> UpstreamRequest:
    """`body` as the client sent it, to the deployment's model, with the client's anthropic-beta and
    anthropic-version (the provider's anthropic_version when it sent none)."""
    sent = _headers(target, request_id)
    version = headers.get("anthropic-version")
    if version and "anthropic-version" not in target.extra_headers:
        sent["anthropic-version"] = version
    if beta := headers.get("anthropic-beta"):
        sent["anthropic-beta"] = beta
    url = f"{target.base_url}{path}" + (f"?{query}" if query else "")
    return UpstreamRequest(url, sent, orjson.dumps({**body, "model": target.upstream_model}))


def messages_request(target, body: dict, request_id: str, headers: dict[str, str], query: str = "") -> UpstreamRequest:
    return _native(target, "/v1/messages", body, request_id, headers, query)


def count_tokens_request(target, body: dict, request_id: str, headers: dict[str, str],
                         query: str = "") -> UpstreamRequest:
    return _native(target, "/v1/messages/count_tokens", body, request_id, headers, query)


class NativeStream(Stream):
    """Anthropic's events relayed as they are (StreamEvent.forward), read for usage and the end."""

    def __call__(self, data: bytes) -> StreamEvent:
        event = super().__call__(data)
        return StreamEvent(forward=data, usage=event.usage, has_content=event.has_content, done=event.done)


def messages_stream(target) -> NativeStream:
    return NativeStream(target, {}, True)


def models_request(target) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/v1/models", _headers(target, "connection-test"), None, method="GET")


def parse_models(data: dict) -> list[str]:
    return [m["id"] for m in data.get("data") or () if isinstance(m, dict) and "id" in m]


map_error = mapped_error
