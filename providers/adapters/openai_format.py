"""Reading OpenAI-shaped requests and writing OpenAI-shaped answers, for the
adapters that translate to another provider's API (anthropic, gemini, cohere,
ollama, huggingface)."""

import array
import base64
import re
import time
import uuid

import orjson

from gateway_project.lib import tokens
from gateway_project.lib.errors import GatewayError
from gateway_project.lib.messages import content_text

from .base import StreamEvent, UpstreamError, Usage, stream_error, upstream_message

# Accepted by every kind: the gateway consumes them itself, or they are plain
# end-user metadata (and cache hints) no upstream is required to keep.
ALWAYS = frozenset({"model", "messages", "stream", "stream_options", "user", "metadata", "store",
                    "safety_identifier", "prompt_cache_key"})

# A parameter at its OpenAI default asks for nothing: clients and SDKs send these
# routinely, so they pass wherever the provider simply has no such knob.
DEFAULTS: dict[str, object] = {
    "n": 1, "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0, "parallel_tool_calls": True,
    "logit_bias": {}, "top_logprobs": 0, "service_tier": "auto",
}

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
# Thinking-token budgets for the kinds that take a number (Anthropic, Gemini 2.x, Cohere). Each one is
# valid on all of them: Anthropic's smallest budget is 1024, Gemini 2.5 Flash's largest 24576.
BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 24576}


def unsupported(kind: str, param: str, detail: str = "") -> GatewayError:
    return GatewayError(
        400, f"The '{param}' parameter is not supported by {kind} providers{': ' + detail if detail else ''}.",
        param=param, code="unsupported_parameter",
    )


def refuse_unsupported(kind: str, body: dict, supported: frozenset[str]) -> None:
    """A 400 naming the first parameter this kind cannot honour, instead of dropping it."""
    for name, value in body.items():
        if name in ALWAYS or name in supported or value is None:
            continue
        if name in DEFAULTS and value == DEFAULTS[name]:
            continue
        raise unsupported(kind, name)


def parts_of(content) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [p for p in content if isinstance(p, dict)]


def text_of(content) -> str:
    """The text of a message's content (string or parts), image parts left out."""
    return content_text(content, joiner="")


_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S)


def image_url_of(part: dict, param: str) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise GatewayError(400, "An image part needs image_url.url.", param=param, code="invalid_value")
    return url


def inline_image(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a data: URL; None for an http(s) URL."""
    match = _DATA_URL.match(url)
    if match is None:
        return None
    data = match.group("data").strip()
    try:
        base64.b64decode(data, validate=True)
    except ValueError:
        raise GatewayError(400, "An image data URL holds invalid base64.", code="invalid_value") from None
    return match.group("type") or "image/png", data


def arguments_of(call: dict, param: str) -> dict:
    """A tool call's arguments as an object; OpenAI carries them as a JSON string."""
    raw = (call.get("function") or {}).get("arguments")
    if isinstance(raw, dict):
        return raw
    try:
        value = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        raise GatewayError(400, "Tool call arguments must be a JSON object.", param=param,
                           code="invalid_value") from None
    if not isinstance(value, dict):
        raise GatewayError(400, "Tool call arguments must be a JSON object.", param=param, code="invalid_value")
    return value


def tool_names_by_id(messages: list) -> dict[str, str]:
    """tool_call_id -> function name, for providers that match results to calls by name."""
    names = {}
    for message in messages:
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and call.get("id"):
                names[call["id"]] = (call.get("function") or {}).get("name", "")
    return names


def functions_of(body: dict) -> list[dict]:
    """The function definitions of `tools`; other tool types are refused."""
    functions = []
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise GatewayError(400, "Only tools of type 'function' can be translated for this provider.",
                               param=f"tools[{i}]", code="invalid_value")
        functions.append(tool["function"])
    return functions


def forced_function(tool_choice) -> str | None:
    """The name in tool_choice={"type": "function", "function": {"name": ...}}, else None."""
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if not name:
            raise GatewayError(400, "tool_choice needs function.name.", param="tool_choice", code="invalid_value")
        return name
    if tool_choice not in (None, "auto", "none", "required"):
        raise GatewayError(400, "tool_choice must be 'auto', 'none', 'required' or a function.",
                           param="tool_choice", code="invalid_value")
    return None


def json_schema_of(body: dict) -> tuple[str, dict | None] | None:
    """('json_object', None) or ('json_schema', schema) from response_format; None for text."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json_object", None
    if kind == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        return "json_schema", fmt["json_schema"].get("schema") or {"type": "object"}
    raise GatewayError(400, "response_format.type must be 'text', 'json_object' or 'json_schema'.",
                       param="response_format", code="invalid_value")


def reasoning_effort_of(body: dict) -> str | None:
    """The request's reasoning_effort, one of OpenAI's values, or None when not asked for."""
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in EFFORTS:
        raise GatewayError(400, "reasoning_effort must be one of " + ", ".join(EFFORTS) + ".",
                           param="reasoning_effort", code="invalid_value")
    return effort


def reasoning_of(message: dict, param: str) -> tuple[str, str]:
    """(reasoning_content, reasoning_signature) of an assistant message in the history, '' where absent."""
    text, signature = message.get("reasoning_content") or "", message.get("reasoning_signature") or ""
    for name, value in (("reasoning_content", text), ("reasoning_signature", signature)):
        if not isinstance(value, str):
            raise GatewayError(400, f"{name} must be a string.", param=f"{param}.{name}", code="invalid_value")
    return text, signature


def max_tokens_of(body: dict) -> int | None:
    return body.get("max_completion_tokens") or body.get("max_tokens")


def stop_of(body: dict) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def new_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def tool_call(call_id: str, name: str, arguments) -> dict:
    args = arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def usage_dict(usage: Usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        # cache_write_tokens as OpenRouter reports them: OpenAI's own usage has no cache writes.
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def count_reasoning(usage: Usage | None, reasoning: str) -> None:
    """Reasoning tokens for a provider that returns the reasoning text but no count of it (Anthropic's
    thinking, Cohere's, Ollama's: all inside their output tokens): the tokenizer's count of the text,
    never more than the output. Their parse_usage calls it on a whole answer, ChunkStream.end on a
    stream's reasoning deltas. A count the provider gave is kept. Money does not move (reasoning is
    output either way); the figure is what the usage record and the client's usage show."""
    if usage is not None and reasoning and not usage.reasoning_tokens:
        usage.reasoning_tokens = min(usage.completion_tokens, tokens.count_text(reasoning))


def completion(model: str, text: str | None, tool_calls: list[dict], finish: str, usage: Usage | None,
               completion_id: str | None = None, reasoning: str = "", signature: str = "") -> dict:
    """An OpenAI chat.completion with one choice, the provider's reasoning in reasoning_content
    and its signature in reasoning_signature when it gave them."""
    message = {"role": "assistant", "content": text if (text or not tool_calls) else None, "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if signature:
        message["reasoning_signature"] = signature
    if tool_calls:
        message["tool_calls"] = tool_calls
        finish = "tool_calls" if finish == "stop" else finish
    answer = {
        "id": completion_id or new_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        answer["usage"] = usage_dict(usage)
    return answer


def embeddings_list(model: str, vectors: list[list[float]], body: dict, prompt_tokens: int | None) -> dict:
    """An OpenAI embeddings list, in the encoding the client asked for."""
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, vector in enumerate(vectors):
        embedding = base64.b64encode(_floats32(vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    answer = {"object": "list", "data": data, "model": model}
    if prompt_tokens is not None:
        answer["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return answer


def _floats32(vector: list[float]) -> bytes:
    return array.array("f", vector).tobytes()


def embedding_texts(kind: str, body: dict) -> list[str]:
    value = body["input"]
    if isinstance(value, str):
        return [value]
    if all(isinstance(v, str) for v in value):
        return list(value)
    raise unsupported(kind, "input", "token arrays cannot be embedded, send text")


class ChunkStream:
    """Base of the stream translators: builds OpenAI chunks with one id, and
    remembers what the stream reported so far."""

    def __init__(self, target, want_usage: bool) -> None:
        self.target = target
        self.id = new_id()
        self.created = int(time.time())
        self.model = target.upstream_model
        self.provider = target.provider_name
        self.want_usage = want_usage
        self.usage = Usage()
        self.tool_calls = 0
        self.started = False
        self.thoughts: list[str] = []  # the reasoning text streamed, counted at the end (count_reasoning)

    def chunk(self, delta: dict, finish: str | None = None) -> dict:
        if not self.started:
            # OpenAI's first chunk always carries the role.
            delta = {"role": "assistant", **delta}
            self.started = True
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def text(self, text: str) -> dict:
        return self.chunk({"content": text})

    def reasoning(self, text: str) -> dict:
        self.thoughts.append(text)
        return self.chunk({"reasoning_content": text})

    def signature(self, signature: str) -> dict:
        return self.chunk({"reasoning_signature": signature})

    def tool_start(self, call_id: str, name: str, arguments: str = "") -> dict:
        index = self.tool_calls
        self.tool_calls += 1
        return self.chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                           "function": {"name": name, "arguments": arguments}}]})

    def tool_arguments(self, index: int, arguments: str) -> dict:
        return self.chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})

    def end(self, finish: str, chunks: list[dict]) -> StreamEvent:
        """The closing chunk(s): finish reason, then usage when the client asked for it."""
        if self.tool_calls and finish == "stop":
            finish = "tool_calls"
        has_content = bool(chunks)
        count_reasoning(self.usage, "".join(self.thoughts))
        chunks.append(self.chunk({}, finish))
        if self.want_usage:
            chunks.append({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": self.model, "choices": [], "usage": usage_dict(self.usage)})
        return StreamEvent(forward=None, chunks=chunks, usage=self.usage, done=True, has_content=has_content)

    def event(self, chunks: list[dict]) -> StreamEvent:
        return StreamEvent(forward=None, chunks=chunks, has_content=bool(chunks))

    def failed(self, data: bytes) -> UpstreamError:
        """The upstream's error event, for the translator to raise: its message never holds the key."""
        return stream_error(self.target, upstream_message(data))
