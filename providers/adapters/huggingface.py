"""Hugging Face Text Generation Inference (TGI) and Inference Endpoints:
TGI's Messages API (POST /v1/chat/completions) for chat, and Text Embeddings
Inference's POST /embed for embeddings.

The provider's base URL is the endpoint (https://NAME.endpoints.huggingface.cloud
or http://127.0.0.1:8080); the key (an hf_ token) goes in `Authorization: Bearer`.
TGI speaks a dialect of OpenAI's format, so requests and answers are adjusted
rather than rebuilt: JSON formats become TGI grammars, and answers are
normalised (tool arguments TGI sends as objects become JSON strings, its own
finish reasons become OpenAI's). TGI has no reasoning knob, so reasoning_effort
is refused, and takes no reasoning back: the gateway's reasoning fields are left
out of the history it is sent.
"""

import orjson

from . import base
from . import openai_format as fmt
from .base import StreamEvent, UpstreamRequest, Usage, mapped_error
from .openai import parse_usage as openai_usage
from .openai import without_reasoning

STREAM_FRAMING = "sse"
EMBEDDINGS = True
KIND = "huggingface"
SUPPORTED = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "tools",
                       "tool_choice", "response_format", "presence_penalty", "frequency_penalty", "logprobs",
                       "top_logprobs"})
FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "stop": "stop", "length": "length",  # nosec B105: finish reasons, not passwords
                  "tool_calls": "tool_calls", "content_filter": "content_filter"}


def _headers(target, request_id: str) -> dict[str, str]:
    return base.request_headers(target, request_id)


def payload(target, body: dict) -> dict:
    fmt.refuse_unsupported(KIND, body, SUPPORTED)
    fmt.functions_of(body)
    fmt.forced_function(body.get("tool_choice"))
    result = {k: v for k, v in body.items() if k not in ("max_completion_tokens", "response_format", "user",
                                                         "metadata", "store", "stream_options")}
    result["model"] = target.upstream_model
    result["messages"] = without_reasoning(body["messages"])
    if (limit := fmt.max_tokens_of(body)) is not None:
        result["max_tokens"] = limit
    if json_format := fmt.json_schema_of(body):
        # TGI constrains output with a grammar: a JSON schema, any object for json_object.
        result["response_format"] = {"type": "json", "value": json_format[1] or {"type": "object"}}
    if body.get("stream"):
        result["stream_options"] = {"include_usage": True}
    return result


def chat_request(target, body: dict, request_id: str) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/v1/chat/completions", _headers(target, request_id),
                           orjson.dumps(payload(target, body)))


def parse_usage(data: dict) -> Usage | None:
    return openai_usage(data) if isinstance(data, dict) else None


def _normal_call(call: dict, index: int) -> dict:
    function = dict(call.get("function") or {})
    if "arguments" in function and not isinstance(function["arguments"], str):
        function["arguments"] = orjson.dumps(function["arguments"]).decode()
    function.pop("description", None)
    return {**call, "index": call.get("index", index), "type": "function", "function": function}


def chat_response(target, body: dict, data: dict) -> dict:
    choices = []
    for choice in data.get("choices") or ():
        message = dict(choice.get("message") or {})
        message.setdefault("refusal", None)  # OpenAI's schema requires it; TGI leaves it out
        if message.get("tool_calls"):
            message["tool_calls"] = [
                {k: v for k, v in _normal_call(c, i).items() if k != "index"} for i, c in enumerate(message["tool_calls"])
            ]
        finish = FINISH_REASONS.get(choice.get("finish_reason") or "stop", "stop")
        choices.append({**choice, "message": message, "finish_reason": finish, "logprobs": choice.get("logprobs")})
    usage = parse_usage(data)
    answer = {"id": data.get("id") or fmt.new_id(), "object": "chat.completion", "created": data.get("created", 0),
              "model": data.get("model") or target.upstream_model, "choices": choices}
    if usage is not None:
        answer["usage"] = fmt.usage_dict(usage)
    return answer


class Stream(fmt.ChunkStream):
    """TGI's OpenAI-like chunks, normalised; its usage chunk kept for billing."""

    finish = "stop"

    def __call__(self, data: bytes) -> StreamEvent:
        if data == b"[DONE]":
            return self.end_of_stream()
        chunk = orjson.loads(data)
        if chunk.get("error"):
            raise self.failed(data)  # TGI's error event: {"error": "...", "error_type": "..."}
        if (usage := parse_usage(chunk)) is not None:
            self.usage = usage
        chunks = []
        for choice in chunk.get("choices") or ():
            delta = dict(choice.get("delta") or {})
            if delta.get("tool_calls"):
                delta["tool_calls"] = [_normal_call(c, i) for i, c in enumerate(delta["tool_calls"])]
                self.tool_calls = max(self.tool_calls, 1)
            finish = choice.get("finish_reason")
            if finish:
                self.finish = FINISH_REASONS.get(finish, "stop")
            if delta.get("content") or delta.get("tool_calls"):
                chunks.append(self.chunk({k: v for k, v in delta.items() if k != "role"}))
        return self.event(chunks)

    def end_of_stream(self) -> StreamEvent:
        return self.end(self.finish, [])


def chat_stream(target, body: dict, want_usage: bool) -> Stream:
    return Stream(target, want_usage)


def embeddings_request(target, body: dict, request_id: str) -> UpstreamRequest:
    payload = {"inputs": fmt.embedding_texts(KIND, body), "normalize": True}
    if body.get("dimensions"):
        payload["dimensions"] = body["dimensions"]
    return UpstreamRequest(f"{target.base_url}/embed", _headers(target, request_id), orjson.dumps(payload))


def embeddings_response(target, body: dict, data: list) -> dict:
    # TEI answers with bare vectors and no token counts; the gateway estimates them.
    return fmt.embeddings_list(target.upstream_model, data if isinstance(data, list) else [], body, None)


def models_request(target) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/info", _headers(target, "connection-test"), None, method="GET")


def parse_models(data: dict) -> list[str]:
    return [data["model_id"]] if isinstance(data, dict) and data.get("model_id") else []


map_error = mapped_error
