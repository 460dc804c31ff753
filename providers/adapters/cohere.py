"""Cohere's v2 API (POST /v2/chat, POST /v2/embed), translated from and to OpenAI's.

The provider's base URL is https://api.cohere.com; the key goes in
`Authorization: Bearer`. Embedding calls send the provider setting
`embed_input_type` (default search_document), which Cohere's v3+ models require.

reasoning_effort becomes `thinking` ({"type": "enabled", "token_budget": N} with
N from openai_format.BUDGETS, {"type": "disabled"} for none); thinking content
comes back as reasoning_content and goes back as a thinking content item of the
assistant message. Cohere signs nothing, and counts thinking in its output
tokens only (Usage.reasoning_tokens: the tokenizer's count of the thinking text).
"""

import orjson

from . import base
from . import openai_format as fmt
from .base import StreamEvent, UpstreamRequest, Usage, mapped_error

STREAM_FRAMING = "sse"
EMBEDDINGS = True
KIND = "cohere"
SUPPORTED = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "tools",
                       "tool_choice", "response_format", "presence_penalty", "frequency_penalty",
                       "reasoning_effort"})
FINISH_REASONS = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls",
                  "ERROR": "stop", "TIMEOUT": "stop"}
PARAMS = (("temperature", "temperature"), ("top_p", "p"), ("seed", "seed"),
          ("presence_penalty", "presence_penalty"), ("frequency_penalty", "frequency_penalty"))


def _headers(target, request_id: str) -> dict[str, str]:
    return base.request_headers(target, request_id, more={"accept": "application/json"})


def _content(content, param: str):
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for i, part in enumerate(fmt.parts_of(content)):
        if part.get("type") == "text":
            parts.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            parts.append({"type": "image_url", "image_url": {"url": fmt.image_url_of(part, f"{param}[{i}]")}})
        else:
            raise fmt.unsupported(KIND, f"{param}[{i}]", f"content parts of type '{part.get('type')}'")
    return parts


def _message(message: dict, param: str) -> dict:
    role = "system" if message["role"] == "developer" else message["role"]
    if role == "tool":
        return {"role": "tool", "tool_call_id": message.get("tool_call_id", ""),
                "content": fmt.text_of(message.get("content"))}
    result = {"role": role, "content": _content(message.get("content"), param + ".content")}
    if role == "assistant" and (thinking := fmt.reasoning_of(message, param)[0]):
        content = result["content"]
        text = [{"type": "text", "text": content}] if isinstance(content, str) and content else content or []
        result["content"] = [{"type": "thinking", "thinking": thinking}, *text]
    if role == "assistant" and message.get("tool_calls"):
        result["tool_calls"] = [fmt.tool_call(c.get("id", ""), (c.get("function") or {}).get("name", ""),
                                              fmt.arguments_of(c, param + ".tool_calls"))
                                for c in message["tool_calls"]]
        if not result["content"]:
            del result["content"]
    return result


def _tools(body: dict, payload: dict) -> None:
    functions = fmt.functions_of(body)
    if functions:
        payload["tools"] = [{"type": "function", "function": f} for f in functions]
    choice = body.get("tool_choice")
    if fmt.forced_function(choice):
        raise fmt.unsupported(KIND, "tool_choice", "a named function cannot be forced; use 'required'")
    if choice in ("required", "none"):
        payload["tool_choice"] = choice.upper()


def payload(target, body: dict) -> dict:
    fmt.refuse_unsupported(KIND, body, SUPPORTED)
    result: dict = {"model": target.upstream_model,
                    "messages": [_message(m, f"messages[{i}]") for i, m in enumerate(body["messages"])]}
    for ours, theirs in PARAMS:
        if body.get(ours) is not None:
            result[theirs] = body[ours]
    if (limit := fmt.max_tokens_of(body)) is not None:
        result["max_tokens"] = limit
    if stop := fmt.stop_of(body):
        result["stop_sequences"] = stop
    if (effort := fmt.reasoning_effort_of(body)) is not None:
        result["thinking"] = ({"type": "disabled"} if effort == "none" else
                              {"type": "enabled", "token_budget": fmt.BUDGETS[effort]})
    if json_format := fmt.json_schema_of(body):
        result["response_format"] = {"type": "json_object"}
        if json_format[1] is not None:
            result["response_format"]["json_schema"] = json_format[1]
    _tools(body, result)
    if body.get("stream"):
        result["stream"] = True
    return result


def chat_request(target, body: dict, request_id: str) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/v2/chat", _headers(target, request_id),
                           orjson.dumps(payload(target, body)))


def _usage(usage) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    # `tokens` counts what the model saw; `billed_units` what Cohere bills, when
    # only that is given.
    counted = usage.get("tokens") or usage.get("billed_units") or {}
    return Usage(prompt_tokens=int(counted.get("input_tokens") or 0),
                 completion_tokens=int(counted.get("output_tokens") or 0),
                 cached_tokens=int(usage.get("cached_tokens") or 0))


def parse_usage(data: dict) -> Usage | None:
    if not isinstance(data, dict):
        return None
    if "meta" in data and "usage" not in data:  # embed answers
        billed = (data.get("meta") or {}).get("billed_units") or {}
        return Usage(prompt_tokens=int(billed.get("input_tokens") or 0)) if billed else None
    usage = _usage(data.get("usage"))
    content = (data.get("message") or {}).get("content") if isinstance(data.get("message"), dict) else None
    fmt.count_reasoning(usage, "".join(str(p.get("thinking") or "") for p in content or ()
                                       if isinstance(p, dict) and p.get("type") == "thinking"))
    return usage


def chat_response(target, body: dict, data: dict) -> dict:
    message = data.get("message") or {}
    text = "".join(p.get("text", "") for p in message.get("content") or () if p.get("type") == "text")
    thinking = "".join(p.get("thinking", "") for p in message.get("content") or () if p.get("type") == "thinking")
    calls = [fmt.tool_call(c.get("id", ""), (c.get("function") or {}).get("name", ""),
                           (c.get("function") or {}).get("arguments") or "{}") for c in message.get("tool_calls") or ()]
    finish = FINISH_REASONS.get(data.get("finish_reason") or "COMPLETE", "stop")
    return fmt.completion(target.upstream_model, text, calls, finish, parse_usage(data), completion_id=data.get("id"),
                          reasoning=thinking)


class Stream(fmt.ChunkStream):
    """Cohere's typed stream events (content-delta, tool-call-start, ...) to OpenAI chunks."""

    def __init__(self, target, want_usage: bool) -> None:
        super().__init__(target, want_usage)
        self.tools: dict[int, int] = {}  # Cohere tool-call index -> OpenAI tool index

    def __call__(self, data: bytes) -> StreamEvent:
        event = orjson.loads(data)
        kind = event.get("type")
        if kind == "error" or event.get("error"):
            raise self.failed(data)
        message = ((event.get("delta") or {}).get("message")) or {}
        if kind == "message-start":
            self.id = event.get("id") or self.id
            return StreamEvent(forward=None, chunks=[self.chunk({"content": ""})])
        if kind == "content-delta":
            content = message.get("content") or {}
            if "thinking" in content:
                return self.event([self.reasoning(content["thinking"])] if content["thinking"] else [])
            return self.event([self.text(content.get("text", ""))])
        if kind == "tool-call-start":
            call = message.get("tool_calls") or {}
            function = call.get("function") or {}
            self.tools[event.get("index", 0)] = self.tool_calls
            return self.event([self.tool_start(call.get("id", ""), function.get("name", ""),
                                               function.get("arguments") or "")])
        if kind == "tool-call-delta":
            piece = ((message.get("tool_calls") or {}).get("function") or {}).get("arguments", "")
            return self.event([self.tool_arguments(self.tools.get(event.get("index", 0), 0), piece)] if piece else [])
        if kind == "message-end":
            delta = event.get("delta") or {}
            self.usage = _usage(delta.get("usage")) or self.usage
            return self.end(FINISH_REASONS.get(delta.get("finish_reason") or "COMPLETE", "stop"), [])
        return self.event([])  # content-start/-end, tool-plan-delta, citations


def chat_stream(target, body: dict, want_usage: bool) -> Stream:
    return Stream(target, want_usage)


def embeddings_request(target, body: dict, request_id: str) -> UpstreamRequest:
    payload = {"model": target.upstream_model, "texts": fmt.embedding_texts(KIND, body),
               "input_type": target.settings.get("embed_input_type", "search_document"),
               "embedding_types": ["float"]}
    if body.get("dimensions"):
        payload["output_dimension"] = body["dimensions"]
    return UpstreamRequest(f"{target.base_url}/v2/embed", _headers(target, request_id), orjson.dumps(payload))


def embeddings_response(target, body: dict, data: dict) -> dict:
    vectors = (data.get("embeddings") or {}).get("float") or []
    usage = parse_usage(data)
    return fmt.embeddings_list(target.upstream_model, vectors, body, usage.prompt_tokens if usage else None)


def models_request(target) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/v1/models", _headers(target, "connection-test"), None, method="GET")


def parse_models(data: dict) -> list[str]:
    return [m["name"] for m in data.get("models") or () if isinstance(m, dict) and "name" in m]


map_error = mapped_error
