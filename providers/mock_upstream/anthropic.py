"""Anthropic's Messages API: POST /v1/messages (JSON and named SSE events), GET /v1/models."""

import time

from .answers import Answer, Ask, answer
from .server import Request, send_json, send_stream, sse

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}
STOP = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}


def error_body(status: int, key: str = "", message: str | None = None) -> dict:
    message = message or (f"invalid x-api-key: {key}" if status == 401 else f"Mock Anthropic failed with {status}.")
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": f"req_mock{int(time.time() * 1e6)}"}


def stream_error(message: str) -> bytes:
    return sse({"type": "error", "error": {"type": "overloaded_error", "message": message}}, "error")


def _text(content) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for block in content or ():
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_result":
            texts.append(_text(block.get("content") or ""))
    return " ".join(texts)


def user_text(body: dict) -> str:
    """The last user message's own text: a message of tool results only is the
    tools speaking, so the directive stays the one the user wrote before."""
    for message in reversed(body.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content or () if isinstance(b, dict) and b.get("type") == "text"]
        if texts:
            return " ".join(texts)
    return ""


def _tool_choice(choice) -> str | None:
    kind = (choice or {}).get("type")
    return {"any": "required", "none": "none", "tool": (choice or {}).get("name")}.get(kind)


def ask_of(body: dict) -> Ask:
    system = body.get("system")
    texts = [_text(system)] if system else []
    messages = body.get("messages") or []
    texts += [_text(m.get("content")) for m in messages]
    last = messages[-1].get("content") if messages else None
    after_tool = isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)
    tools = [{"name": t["name"], "parameters": t.get("input_schema") or {}} for t in body.get("tools") or ()]
    return Ask(texts=texts, tools=tools, tool_choice=_tool_choice(body.get("tool_choice")), after_tool=after_tool,
               max_tokens=body.get("max_tokens"))


def _usage(a: Answer) -> dict:
    return {"input_tokens": a.prompt_tokens - a.cached_tokens, "output_tokens": a.completion_tokens + a.reasoning_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": a.cached_tokens, "service_tier": "standard"}


async def messages(req: Request) -> None:
    body = req.body
    if not req.header("anthropic-version"):
        await send_json(req.send, 400, {"type": "error", "error": {
            "type": "invalid_request_error", "message": "anthropic-version: header is required"}})
        return
    missing = [name for name in ("model", "max_tokens", "messages") if not body.get(name)]
    if missing:
        await send_json(req.send, 400, {"type": "error", "error": {
            "type": "invalid_request_error", "message": f"{missing[0]}: Field required"}})
        return
    a = answer(ask_of(body), req.knobs)
    message = {"id": f"msg_mock{int(time.time() * 1e6)}", "type": "message", "role": "assistant",
               "model": body["model"], "content": [], "stop_reason": None, "stop_sequence": None}
    if body.get("stream"):
        await send_stream(req, _frames(message, a))
        return
    if a.tool_name:
        message["content"] = [{"type": "tool_use", "id": "toolu_mock01", "name": a.tool_name,
                               "input": a.tool_arguments}]
    else:
        message["content"] = [{"type": "text", "text": a.text}]
    await send_json(req.send, 200, {**message, "stop_reason": STOP[a.finish], "usage": _usage(a)})


def _frames(message: dict, a: Answer):
    usage = _usage(a)
    yield sse({"type": "message_start", "message": {**message, "usage": {**usage, "output_tokens": 1}}},
              "message_start"), False
    if a.tool_name:
        block = {"type": "tool_use", "id": "toolu_mock01", "name": a.tool_name, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in a.tool_pieces]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in a.pieces]
    yield sse({"type": "content_block_start", "index": 0, "content_block": block}, "content_block_start"), False
    yield sse({"type": "ping"}, "ping"), False
    for delta in deltas:
        yield sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta"), True
    yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop"), False
    yield sse({"type": "message_delta", "delta": {"stop_reason": STOP[a.finish], "stop_sequence": None},
               "usage": {"output_tokens": usage["output_tokens"]}}, "message_delta"), False
    yield sse({"type": "message_stop"}, "message_stop"), False


async def models(req: Request) -> None:
    data = [{"type": "model", "id": m, "display_name": m.replace("-", " ").title(),
             "created_at": "2025-05-14T00:00:00Z"} for m in ("mock-claude", "mock-claude-large")]
    await send_json(req.send, 200, {"data": data, "has_more": False, "first_id": data[0]["id"],
                                    "last_id": data[-1]["id"]})
