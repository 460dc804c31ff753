"""Ollama's native API (POST /api/chat, POST /api/embed), translated from and to OpenAI's.

The provider's base URL is the Ollama server (http://127.0.0.1:11434); no key is
needed, but one is sent as a bearer token when set (for Ollama behind a proxy).
Ollama streams newline-delimited JSON, not SSE, and takes images inline only.

reasoning_effort becomes `think`: false for none; a level (low, medium, high)
for gpt-oss models, which think by level; true for every other thinking model,
which takes only true or false. message.thinking comes back as
reasoning_content and goes back as the assistant message's `thinking`. Ollama
counts thinking in eval_count only (Usage.reasoning_tokens: the tokenizer's count of it).
"""

import uuid

import orjson

from . import base
from . import openai_format as fmt
from .base import StreamEvent, UpstreamRequest, Usage, mapped_error

STREAM_FRAMING = "ndjson"
EMBEDDINGS = True
KIND = "ollama"
SUPPORTED = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "tools",
                       "tool_choice", "response_format", "presence_penalty", "frequency_penalty",
                       "reasoning_effort"})
LEVELS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
OPTIONS = (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
           ("presence_penalty", "presence_penalty"), ("frequency_penalty", "frequency_penalty"))


def _headers(target, request_id: str) -> dict[str, str]:
    return base.request_headers(target, request_id)


def _user(message: dict, param: str) -> dict:
    text, images = [], []
    for i, part in enumerate(fmt.parts_of(message.get("content"))):
        if part.get("type") == "text":
            text.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            inline = fmt.inline_image(fmt.image_url_of(part, f"{param}[{i}]"))
            if inline is None:
                raise fmt.unsupported(KIND, f"{param}[{i}]", "images must be sent inline as data: URLs")
            images.append(inline[1])
        else:
            raise fmt.unsupported(KIND, f"{param}[{i}]", f"content parts of type '{part.get('type')}'")
    result = {"role": message["role"], "content": "".join(text)}
    if images:
        result["images"] = images
    return result


def _message(message: dict, param: str, names: dict[str, str]) -> dict:
    role = message["role"]
    if role == "tool":
        return {"role": "tool", "content": fmt.text_of(message.get("content")),
                "tool_name": names.get(message.get("tool_call_id", ""), "")}
    if role == "assistant":
        result = {"role": "assistant", "content": fmt.text_of(message.get("content"))}
        if thinking := fmt.reasoning_of(message, param)[0]:
            result["thinking"] = thinking
        if message.get("tool_calls"):
            result["tool_calls"] = [{"function": {"name": (c.get("function") or {}).get("name", ""),
                                                  "arguments": fmt.arguments_of(c, param + ".tool_calls")}}
                                    for c in message["tool_calls"]]
        return result
    return _user({**message, "role": "system" if role == "developer" else role}, param + ".content")


def _tools(body: dict, payload: dict) -> None:
    choice = body.get("tool_choice")
    if fmt.forced_function(choice) or choice == "required":
        raise fmt.unsupported(KIND, "tool_choice", "Ollama decides itself whether to call a tool")
    functions = fmt.functions_of(body)
    # tool_choice "none" is honoured by not offering the tools at all.
    if functions and choice != "none":
        payload["tools"] = [{"type": "function", "function": f} for f in functions]


def payload(target, body: dict) -> dict:
    fmt.refuse_unsupported(KIND, body, SUPPORTED)
    messages = body["messages"]
    names = fmt.tool_names_by_id(messages)
    result: dict = {"model": target.upstream_model,
                    "messages": [_message(m, f"messages[{i}]", names) for i, m in enumerate(messages)],
                    "stream": bool(body.get("stream"))}
    options = {theirs: body[ours] for ours, theirs in OPTIONS if body.get(ours) is not None}
    if (limit := fmt.max_tokens_of(body)) is not None:
        options["num_predict"] = limit
    if stop := fmt.stop_of(body):
        options["stop"] = stop
    if options:
        result["options"] = options
    if json_format := fmt.json_schema_of(body):
        result["format"] = json_format[1] or "json"
    if (effort := fmt.reasoning_effort_of(body)) is not None:
        result["think"] = _think(target, effort)
    _tools(body, result)
    return result


def _think(target, effort: str) -> bool | str:
    if effort == "none":
        return False
    return LEVELS[effort] if target.upstream_model.startswith("gpt-oss") else True


def chat_request(target, body: dict, request_id: str) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/api/chat", _headers(target, request_id),
                           orjson.dumps(payload(target, body)))


def parse_usage(data: dict) -> Usage | None:
    if not isinstance(data, dict) or ("prompt_eval_count" not in data and "eval_count" not in data):
        return None
    usage = Usage(prompt_tokens=int(data.get("prompt_eval_count") or 0),
                  completion_tokens=int(data.get("eval_count") or 0))
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    fmt.count_reasoning(usage, str(message.get("thinking") or ""))
    return usage


def _finish(data: dict) -> str:
    return "length" if data.get("done_reason") == "length" else "stop"


def _calls(message: dict) -> list[dict]:
    return [fmt.tool_call(c.get("id") or f"call_{uuid.uuid4().hex[:24]}", (c.get("function") or {}).get("name", ""),
                          (c.get("function") or {}).get("arguments")) for c in message.get("tool_calls") or ()]


def chat_response(target, body: dict, data: dict) -> dict:
    message = data.get("message") or {}
    return fmt.completion(target.upstream_model, message.get("content") or "", _calls(message), _finish(data),
                          parse_usage(data), reasoning=message.get("thinking") or "")


class Stream(fmt.ChunkStream):
    """Each NDJSON line to OpenAI chunks; the line with done=true ends the stream."""

    def __call__(self, data: bytes) -> StreamEvent:
        line = orjson.loads(data)
        if line.get("error"):
            raise self.failed(data)
        message = line.get("message") or {}
        chunks = [self.reasoning(message["thinking"])] if message.get("thinking") else []
        if message.get("content"):
            chunks.append(self.text(message["content"]))
        for call in _calls(message):
            chunks.append(self.tool_start(call["id"], call["function"]["name"], call["function"]["arguments"]))
        if line.get("done"):
            self.usage = parse_usage(line) or self.usage
            return self.end(_finish(line), chunks)
        return self.event(chunks)


def chat_stream(target, body: dict, want_usage: bool) -> Stream:
    return Stream(target, want_usage)


def embeddings_request(target, body: dict, request_id: str) -> UpstreamRequest:
    payload = {"model": target.upstream_model, "input": fmt.embedding_texts(KIND, body)}
    if body.get("dimensions"):
        payload["dimensions"] = body["dimensions"]
    return UpstreamRequest(f"{target.base_url}/api/embed", _headers(target, request_id), orjson.dumps(payload))


def embeddings_response(target, body: dict, data: dict) -> dict:
    usage = parse_usage(data)
    return fmt.embeddings_list(target.upstream_model, data.get("embeddings") or [], body,
                               usage.prompt_tokens if usage else None)


def models_request(target) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/api/tags", _headers(target, "connection-test"), None, method="GET")


def parse_models(data: dict) -> list[str]:
    return [m.get("model") or m["name"] for m in data.get("models") or () if isinstance(m, dict) and "name" in m]


map_error = mapped_error
