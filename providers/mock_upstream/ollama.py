"""Ollama's native API: POST /api/chat (JSON, or newline-delimited JSON when
streaming, which is Ollama's default), POST /api/embed, GET /api/tags.

With `think` (true, or a level) and the reasoning_tokens knob set, the answer
carries message.thinking, streamed before the content.
"""

from datetime import UTC, datetime

import orjson

from .answers import Answer, Ask, answer
from .openai import MAX_DIMENSIONS, dimensions, vector
from .server import Request, count_served, send_json, send_stream

MODELS = ("mock-llama:latest", "mock-embed:latest")


def error_body(status: int, key: str = "", message: str | None = None) -> dict:
    return {"error": message or {404: "model not found, try pulling it first", 401: "unauthorized"}.get(
        status, f"mock ollama failed with {status}")}


def stream_error(message: str) -> bytes:
    return orjson.dumps({"error": message}) + b"\n"


def user_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def ask_of(body: dict) -> Ask:
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    fmt = body.get("format")
    schema = {} if fmt == "json" else fmt if isinstance(fmt, dict) else None
    tools = [{"name": t["function"]["name"], "parameters": t["function"].get("parameters") or {}}
             for t in body.get("tools") or () if "function" in t]
    return Ask(texts=[str(m.get("content") or "") for m in messages], tools=tools,
               after_tool=bool(messages) and messages[-1].get("role") == "tool", json_schema=schema,
               max_tokens=(body.get("options") or {}).get("num_predict"), reasoning=bool(body.get("think")))


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _final(model: str, a: Answer, message: dict, no_usage: bool) -> dict:
    result = {"model": model, "created_at": _now(), "message": message,
              "done_reason": "length" if a.finish == "length" else "stop", "done": True,
              "total_duration": 1_000_000, "load_duration": 100_000}
    if not no_usage:
        count_served(a.prompt_tokens, a.completion_tokens + a.reasoning_tokens)
        result.update(prompt_eval_count=a.prompt_tokens, prompt_eval_duration=200_000,
                      eval_count=a.completion_tokens + a.reasoning_tokens, eval_duration=700_000)
    return result


def _calls(a: Answer) -> list[dict]:
    return [{"function": {"name": a.tool_name, "arguments": a.tool_arguments}}]


async def chat(req: Request) -> None:
    body = req.body
    if not isinstance(body.get("model"), str) or not body.get("messages"):
        await send_json(req.send, 400, {"error": "model is required"})
        return
    if body.get("think") not in (None, True, False, "low", "medium", "high"):
        await send_json(req.send, 400, {"error": f"invalid think value: {body['think']!r} (must be \"high\", "
                                                 "\"medium\", \"low\", true, or false)"})
        return
    a = answer(ask_of(body), req.knobs)
    model, no_usage = body["model"], bool(req.knobs.get("no_usage"))
    if body.get("stream", True) is False:
        message = {"role": "assistant", "content": "" if a.tool_name else a.text}
        if a.reasoning:
            message["thinking"] = a.thoughts
        if a.tool_name:
            message["tool_calls"] = _calls(a)
        await send_json(req.send, 200, _final(model, a, message, no_usage))
        return

    def frames():
        for piece in a.reasoning:
            yield _line({"model": model, "created_at": _now(), "message": {
                "role": "assistant", "content": "", "thinking": piece}, "done": False}), True
        if a.tool_name:
            yield _line({"model": model, "created_at": _now(), "message": {
                "role": "assistant", "content": "", "tool_calls": _calls(a)}, "done": False}), True
        for piece in a.pieces:
            yield _line({"model": model, "created_at": _now(), "message": {"role": "assistant", "content": piece},
                         "done": False}), True
        yield _line(_final(model, a, {"role": "assistant", "content": ""}, no_usage)), False

    await send_stream(req, frames(), b"application/x-ndjson")


def _line(value: dict) -> bytes:
    return orjson.dumps(value) + b"\n"


async def embed(req: Request) -> None:
    body = req.body
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(body.get("model"), str) or not isinstance(texts, list) or not texts:
        await send_json(req.send, 400, {"error": "model and input are required"})
        return
    dims = dimensions(body.get("dimensions"), 768)
    if dims is None:
        await send_json(req.send, 400, {"error": f"dimensions must be at most {MAX_DIMENSIONS}"})
        return
    await send_json(req.send, 200, {
        "model": body["model"], "embeddings": [vector(str(t).encode(), dims) for t in texts],
        "total_duration": 1_000_000, "load_duration": 100_000,
        "prompt_eval_count": sum(max(1, len(str(t).split())) for t in texts)})


async def tags(req: Request) -> None:
    await send_json(req.send, 200, {"models": [
        {"name": m, "model": m, "modified_at": "2025-05-01T00:00:00Z", "size": 4_000_000_000,
         "digest": "0" * 64, "details": {"parent_model": "", "format": "gguf", "family": "llama",
                                         "families": ["llama"], "parameter_size": "8B",
                                         "quantization_level": "Q4_K_M"}} for m in MODELS]})
