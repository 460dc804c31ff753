"""Cohere's v2 API: POST /v2/chat (JSON and typed SSE events), POST /v2/embed, GET /v1/models.

With `thinking: {"type": "enabled"}` and the reasoning_tokens knob set, the answer's content
opens with a thinking item (streamed as its own content block).
"""

import uuid

import orjson

from .answers import Answer, Ask, answer
from .openai import MAX_DIMENSIONS, dimensions, vector
from .server import Request, count_served, send_json, send_stream, sse

FINISH = {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool": "TOOL_CALL"}
MODELS = ("mock-command", "mock-embed-v4")


def error_body(status: int, key: str = "", message: str | None = None) -> dict:
    message = message or (f"invalid api token: {key}" if status == 401 else f"Mock Cohere failed with {status}.")
    return {"id": str(uuid.uuid4()), "message": message}


def stream_error(message: str) -> bytes:
    return sse({"type": "error", "message": message}, "error")


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or () if isinstance(p, dict))


def user_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def ask_of(body: dict) -> Ask:
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}) if fmt.get("type") == "json_object" else None
    tools = [{"name": t["function"]["name"], "parameters": t["function"].get("parameters") or {}}
             for t in body.get("tools") or () if "function" in t]
    return Ask(texts=[_text(m.get("content")) for m in messages], tools=tools,
               tool_choice={"REQUIRED": "required", "NONE": "none"}.get(body.get("tool_choice")),
               after_tool=bool(messages) and messages[-1].get("role") == "tool", json_schema=schema,
               max_tokens=body.get("max_tokens"), reasoning=(body.get("thinking") or {}).get("type") == "enabled")


def _usage(a: Answer) -> dict:
    """The usage of a whole answer (a JSON answer's, a stream's message-end)."""
    count_served(a.prompt_tokens, a.completion_tokens + a.reasoning_tokens)
    tokens = {"input_tokens": a.prompt_tokens, "output_tokens": a.completion_tokens + a.reasoning_tokens}
    return {"billed_units": dict(tokens), "tokens": tokens, "cached_tokens": a.cached_tokens}


def _tool_call(a: Answer) -> dict:
    return {"id": f"{a.tool_name}_mock01", "type": "function",
            "function": {"name": a.tool_name, "arguments": orjson.dumps(a.tool_arguments).decode()}}


async def chat(req: Request) -> None:
    body = req.body
    if not isinstance(body.get("model"), str) or not body.get("messages"):
        await send_json(req.send, 400, {"id": str(uuid.uuid4()), "message": "invalid request: model and messages "
                                        "are required"})
        return
    a = answer(ask_of(body), req.knobs)
    if body.get("stream"):
        await send_stream(req, _frames(a, req.knobs))
        return
    thinking = [{"type": "thinking", "thinking": a.thoughts}] if a.reasoning else []
    if a.tool_name:
        message = {"role": "assistant", "tool_plan": f"I will call {a.tool_name}.", "tool_calls": [_tool_call(a)]}
        if thinking:
            message["content"] = thinking
    else:
        message = {"role": "assistant", "content": [*thinking, {"type": "text", "text": a.text}]}
    result = {"id": str(uuid.uuid4()), "finish_reason": FINISH[a.finish], "message": message}
    if not req.knobs.get("no_usage"):
        result["usage"] = _usage(a)
    await send_json(req.send, 200, result)


def _event(kind: str, **fields) -> bytes:
    return sse({"type": kind, **fields}, kind)


def _frames(a: Answer, knobs: dict):
    yield _event("message-start", id=str(uuid.uuid4()), delta={"message": {
        "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}), False
    index = 0
    if a.reasoning:
        yield _event("content-start", index=0, delta={"message": {"content": {"type": "thinking",
                                                                             "thinking": ""}}}), False
        for piece in a.reasoning:
            yield _event("content-delta", index=0, delta={"message": {"content": {"thinking": piece}}}), True
        yield _event("content-end", index=0), False
        index = 1
    if a.tool_name:
        yield _event("tool-plan-delta", delta={"message": {"tool_plan": f"I will call {a.tool_name}."}}), False
        call = {**_tool_call(a), "function": {"name": a.tool_name, "arguments": ""}}
        yield _event("tool-call-start", index=0, delta={"message": {"tool_calls": call}}), False
        for piece in a.tool_pieces:
            yield _event("tool-call-delta", index=0, delta={"message": {"tool_calls": {
                "function": {"arguments": piece}}}}), True
        yield _event("tool-call-end", index=0), False
    else:
        yield _event("content-start", index=index, delta={"message": {"content": {"type": "text", "text": ""}}}), False
        for piece in a.pieces:
            yield _event("content-delta", index=index, delta={"message": {"content": {"text": piece}}}), True
        yield _event("content-end", index=index), False
    delta = {"finish_reason": FINISH[a.finish]}
    if not knobs.get("no_usage"):
        delta["usage"] = _usage(a)
    yield _event("message-end", delta=delta), False


async def embed(req: Request) -> None:
    body = req.body
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts:
        await send_json(req.send, 400, {"id": str(uuid.uuid4()), "message": "invalid request: texts is required"})
        return
    if not body.get("input_type"):
        await send_json(req.send, 400, {"id": str(uuid.uuid4()), "message": "invalid request: valid input_type "
                                        "must be provided with the provided model"})
        return
    dims = dimensions(body.get("output_dimension"), 1024)
    if dims is None:
        await send_json(req.send, 400, {"id": str(uuid.uuid4()),
                                        "message": f"invalid request: output_dimension must be at most {MAX_DIMENSIONS}"})
        return
    tokens = sum(max(1, len(t.split())) for t in texts)
    await send_json(req.send, 200, {
        "id": str(uuid.uuid4()), "embeddings": {"float": [vector(t.encode(), dims) for t in texts]}, "texts": texts,
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
        "response_type": "embeddings_by_type"})


async def models(req: Request) -> None:
    await send_json(req.send, 200, {"models": [
        {"name": m, "endpoints": ["embed"] if "embed" in m else ["chat"], "finetuned": False,
         "context_length": 128000, "features": ["tools"]} for m in MODELS]})
