"""OpenAI's wire format, and its Azure OpenAI and Hugging Face TGI dialects.

OpenAI: POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models.
Azure: the same operations under /openai/deployments/{deployment}/...?api-version=,
with prompt and content filter results as Azure adds them.
TGI (flavour huggingface): POST /v1/chat/completions as TGI's Messages API answers.

A chat request with a reasoning_effort other than none, and the reasoning_tokens knob set, is
answered as DeepSeek and vLLM answer: the reasoning in the message's reasoning_content (streamed
before the content). A history message carrying reasoning_content or reasoning_signature is
refused, as OpenAI refuses message fields it does not know and DeepSeek refuses reasoning sent back.
"""

import base64
import hashlib
import math
import struct
import time

import orjson

from .answers import Answer, Ask, answer
from .server import Request, count_served, send_json, send_stream, sse

MODELS = ("mock-gpt", "mock-gpt-large", "mock-embed")
ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_value", "Mock upstream rejected the request."),
    401: ("invalid_request_error", "invalid_api_key",
          "Incorrect API key provided: sk-prov***456. You can find your API key at the mock dashboard."),
    403: ("permission_error", "forbidden", "Mock upstream forbids this."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached for requests."),
}
FINISH = {"stop": "stop", "length": "length", "tool": "tool_calls"}
FILTERS = {"hate": {"filtered": False, "severity": "safe"}, "self_harm": {"filtered": False, "severity": "safe"},
           "sexual": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}


def error_body(status: int, key: str = "", message: str | None = None) -> bytes:
    kind, code, default = ERROR_TYPES.get(status, ("server_error", "server_error", "The mock upstream failed."))
    return orjson.dumps({"error": {"message": message or default, "type": kind, "param": None, "code": code}})


def stream_error(message: str) -> bytes:
    # OpenAI's mid-stream failure: an error object where a chunk was due, then the end.
    return sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})


def invalid(message: str, param: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                   "code": "invalid_value"}})


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def user_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return str(body.get("prompt", "")) if "prompt" in body else ""


def _json_schema(body: dict) -> dict | None:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        return {}
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema") or {}
    if fmt.get("type") == "json":  # TGI's grammar
        return fmt.get("value") or {}
    return None


def ask_of(body: dict) -> Ask:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name")
    return Ask(texts=[text_of(m.get("content")) for m in messages],
               tools=[{"name": t["function"]["name"], "parameters": t["function"].get("parameters") or {}}
                      for t in body.get("tools") or () if isinstance(t, dict) and "function" in t],
               tool_choice=choice, after_tool=bool(messages) and messages[-1].get("role") == "tool",
               json_schema=_json_schema(body), max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
               reasoning=body.get("reasoning_effort") not in (None, "none"))


def usage(a: Answer, variant: str = "openai") -> dict:
    completion = a.completion_tokens + a.reasoning_tokens
    count_served(a.prompt_tokens, completion)
    if variant == "huggingface":  # TGI reports no token details
        return {"prompt_tokens": a.prompt_tokens, "completion_tokens": completion,
                "total_tokens": a.prompt_tokens + completion}
    return {"prompt_tokens": a.prompt_tokens, "completion_tokens": completion,
            "total_tokens": a.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": a.cached_tokens, "audio_tokens": 0,
                                      **({"cache_write_tokens": a.cache_written} if a.cache_written else {})},
            "completion_tokens_details": {"reasoning_tokens": a.reasoning_tokens, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _tool_call(a: Answer, variant: str) -> dict:
    function = {"name": a.tool_name, "arguments": orjson.dumps(a.tool_arguments).decode()}
    if variant == "huggingface":
        function["description"] = None
    return {"id": f"call_mock{abs(hash(a.tool_name)) % 10**8:08d}", "type": "function", "function": function}


def _message(a: Answer, variant: str) -> dict:
    message = {"role": "assistant", "content": None if a.tool_name else a.text}
    if variant != "huggingface":
        message["refusal"] = None
        if a.refusal:
            message.update(content=None, refusal=a.text)
    if a.tool_name:
        message["tool_calls"] = [_tool_call(a, variant)]
    if a.reasoning:
        message["reasoning_content"] = a.thoughts
    return message


def _reasoning_sent_back(messages: list) -> str | None:
    for i, message in enumerate(messages):
        for name in ("reasoning_content", "reasoning_signature"):
            if isinstance(message, dict) and name in message:
                return f"Additional properties are not allowed ('{name}' was unexpected) - 'messages.{i}'"
    return None


def _base(body: dict, variant: str, model: str, obj: str) -> dict:
    fingerprint = "3.2.1-native" if variant == "huggingface" else "fp_mock"
    return {"id": f"chatcmpl-mock{int(time.time() * 1e6)}", "object": obj, "created": int(time.time()),
            "model": model, "system_fingerprint": fingerprint}


async def chat(req: Request, variant: str = "openai", model: str | None = None) -> None:
    body = req.body
    messages = body.get("messages")
    model = model or body.get("model")
    if not isinstance(model, str) or not isinstance(messages, list) or not messages:
        await send_json(req.send, 400, invalid("'model' and a non-empty 'messages' are required.", "messages"))
        return
    if error := _reasoning_sent_back(messages):
        await send_json(req.send, 400, invalid(error, "messages"))
        return
    a = answer(ask_of(body), req.knobs)
    if body.get("stream"):
        await send_stream(req, _frames(body, req.knobs, a, variant, model))
        return
    choice = {"index": 0, "message": _message(a, variant), "logprobs": None, "finish_reason": FINISH[a.finish]}
    result = {**_base(body, variant, model, "chat.completion"), "choices": [choice]}
    if variant == "azure":
        choice["content_filter_results"] = FILTERS
        result["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": FILTERS}]
    if not req.knobs.get("no_usage"):
        result["usage"] = usage(a, variant)
    await send_json(req.send, 200, result)


def _frames(body: dict, knobs: dict, a: Answer, variant: str, model: str):
    want_usage = bool((body.get("stream_options") or {}).get("include_usage")) and not knobs.get("no_usage")
    base = _base(body, variant, model, "chat.completion.chunk")
    if want_usage:
        base["usage"] = None

    def event(delta: dict, finish=None) -> bytes:
        return sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    if variant == "azure":  # Azure opens with the prompt's filter results and no choices
        yield sse({**base, "model": "", "choices": [], "prompt_filter_results": [
            {"prompt_index": 0, "content_filter_results": FILTERS}]}), False
    refuses = a.refusal and variant != "huggingface"  # TGI has no refusal field: its refusal is the content
    first = {"role": "assistant", "content": ""} if variant == "huggingface" else {
        "role": "assistant", "content": None if refuses else "", "refusal": "" if refuses else None}
    if a.reasoning:  # the reasoning streams first, the answer's own deltas after it
        yield event({**first, "reasoning_content": a.reasoning[0]}), True
        for piece in a.reasoning[1:]:
            yield event({"reasoning_content": piece}), True
        first = {}
    if a.tool_name:
        call = _tool_call(a, variant)
        first = {**first, "content": None, "tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                                            "function": {"name": a.tool_name, "arguments": ""}}]}
    if first:
        yield event(first), False
    for piece in a.tool_pieces:
        yield event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), True
    for piece in a.pieces:
        yield event({"refusal" if refuses else "content": piece}), True
    yield event({}, FINISH[a.finish]), False
    if want_usage:
        yield sse({**base, "choices": [], "usage": usage(a, variant)}), False
    yield b"data: [DONE]\n\n", False


async def completions(req: Request, model: str | None = None) -> None:
    """Legacy text completions: the same words as chat, as `text`."""
    body = req.body
    model = model or body.get("model")
    if not isinstance(model, str) or "prompt" not in body:
        await send_json(req.send, 400, invalid("'model' and 'prompt' are required.", "prompt"))
        return
    prompt = body["prompt"] if isinstance(body["prompt"], str) else " ".join(map(str, body["prompt"]))
    a = answer(Ask(texts=[prompt], max_tokens=body.get("max_tokens")), req.knobs)
    base = {"id": f"cmpl-mock{int(time.time() * 1e6)}", "object": "text_completion", "created": int(time.time()),
            "model": model}
    if not body.get("stream"):
        result = {**base, "choices": [{"text": a.text, "index": 0, "logprobs": None, "finish_reason": FINISH[a.finish]}]}
        if not req.knobs.get("no_usage"):
            result["usage"] = usage(a)
        await send_json(req.send, 200, result)
        return
    want_usage = bool((body.get("stream_options") or {}).get("include_usage")) and not req.knobs.get("no_usage")

    def frames():
        for piece in a.pieces:
            yield sse({**base, "choices": [{"text": piece, "index": 0, "logprobs": None, "finish_reason": None}]}), True
        yield sse({**base, "choices": [{"text": "", "index": 0, "logprobs": None,
                                        "finish_reason": FINISH[a.finish]}]}), False
        if want_usage:
            yield sse({**base, "choices": [], "usage": usage(a)}), False
        yield b"data: [DONE]\n\n", False

    await send_stream(req, frames())


# More than any real embedding model has: a request for 10**9 dimensions gets a
# 400, as from a real provider, instead of stalling the mock while it computes them.
MAX_DIMENSIONS = 4096


def dimensions(value, default: int) -> int | None:
    """The dimensions asked for (or the model's default), None when no real model has that many."""
    dims = value or default
    return dims if isinstance(dims, int) and 0 < dims <= MAX_DIMENSIONS else None


def vector(seed: bytes, dims: int) -> list[float]:
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        digest = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        out.extend(b / 127.5 - 1.0 for b in digest)
        counter += 1
    out = out[:dims]
    norm = math.sqrt(sum(v * v for v in out)) or 1.0
    return [v / norm for v in out]


def _embedding_inputs(value) -> list | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [value]
        if all(isinstance(v, (str, list)) for v in value):
            return value
    return None


async def embeddings(req: Request, model: str | None = None) -> None:
    body = req.body
    model = model or body.get("model")
    inputs = _embedding_inputs(body.get("input"))
    if not isinstance(model, str) or inputs is None:
        await send_json(req.send, 400, invalid("'model' and a non-empty 'input' are required.", "input"))
        return
    dims = dimensions(body.get("dimensions"), 1536)
    if dims is None:
        await send_json(req.send, 400, invalid(f"'dimensions' must be at most {MAX_DIMENSIONS}.", "dimensions"))
        return
    as_base64 = body.get("encoding_format") == "base64"
    data, tokens = [], 0
    for index, item in enumerate(inputs):
        values = vector(orjson.dumps(item), dims)
        tokens += len(item) if isinstance(item, list) else max(1, len(item.split()))
        embedding = base64.b64encode(struct.pack(f"<{dims}f", *values)).decode() if as_base64 else values
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    result = {"object": "list", "data": data, "model": model}
    if not req.knobs.get("no_usage"):
        result["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    await send_json(req.send, 200, result)


# What the mock's moderation model flags: a word of each category, whole, in any case.
MODERATION_WORDS = {"violence": "kill", "harassment": "idiot", "self-harm": "suicide"}


async def moderations(req: Request) -> None:
    """OpenAI's /v1/moderations: one result per input, flagged on the words above."""
    body = req.body
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        await send_json(req.send, 400, invalid("'input' must be a string or a list of strings.", "input"))
        return
    results = []
    for text in inputs:
        words = set(text.lower().replace(".", " ").replace(",", " ").split())
        categories = {name: word in words for name, word in MODERATION_WORDS.items()}
        results.append({"flagged": any(categories.values()), "categories": categories,
                        "category_scores": {name: 0.99 if hit else 0.01 for name, hit in categories.items()}})
    await send_json(req.send, 200, {"id": "modr-mock", "model": body.get("model") or "omni-moderation-latest",
                                    "results": results})


MODELS_BODY = orjson.dumps({"object": "list", "data": [
    {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "mock"} for m in MODELS]})


async def models(req: Request) -> None:
    await send_json(req.send, 200, MODELS_BODY)


async def azure(req: Request) -> None:
    """/openai/deployments/{deployment}/{operation}?api-version=..."""
    if not req.query.get("api-version"):
        await send_json(req.send, 404, {"error": {"code": "404", "message": "Resource not found"}})
        return
    deployment, operation = req.match.group("deployment"), req.match.group("operation")
    handler = {"chat/completions": chat, "completions": completions, "embeddings": embeddings}[operation]
    if handler is chat:
        await chat(req, "azure", deployment)
    else:
        await handler(req, deployment)


async def azure_models(req: Request) -> None:
    await send_json(req.send, 200, {"object": "list", "data": [
        {"id": m, "object": "model", "created_at": 1_700_000_000, "status": "succeeded"} for m in MODELS]})
