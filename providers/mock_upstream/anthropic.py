"""Anthropic's Messages API: POST /v1/messages (JSON and named SSE events), GET /v1/models.

With extended thinking on (`thinking: {"type": "enabled", "budget_tokens": N}`, or
`{"type": "adaptive"}` with `output_config.effort`) and the
reasoning_tokens knob set, the answer opens with a signed thinking block; as Anthropic does, a
request with thinking on is refused when its budget is out of range, its temperature is not 1,
a thinking block's signature is not the mock's, or (thinking enabled with a budget) the
assistant turn a tool result answers does not open with its thinking block. With `thinking.display: "omitted"` the thinking blocks
come with their signature and no text, and such a block may come back without its text.
POST /v1/messages/count_tokens counts as the answers' usage would.
"""

import time

from .answers import Answer, Ask, answer, prompt_tokens, signature, signed
from .server import Request, count_served, send_json, send_stream, sse

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
               max_tokens=body.get("max_tokens"),
               reasoning=(body.get("thinking") or {}).get("type") in ("enabled", "adaptive"))


def thinking_error(body: dict) -> str | None:
    """What Anthropic says of a request's thinking, None when it is fine."""
    thinking = body.get("thinking") or {}
    messages = body.get("messages") or []
    for i, message in enumerate(messages):
        for j, block in enumerate(message.get("content") if isinstance(message.get("content"), list) else ()):
            if block.get("type") == "thinking" and not signed(block.get("signature") or "",
                                                              block.get("thinking") or None):
                return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
    effort = (body.get("output_config") or {}).get("effort")
    if effort not in (None, "low", "medium", "high", "xhigh", "max"):
        return "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
    if thinking.get("type") not in ("enabled", "adaptive"):
        return None
    budget = thinking.get("budget_tokens")
    if thinking["type"] == "adaptive" and budget is not None:
        return "thinking.adaptive.budget_tokens: Extra inputs are not permitted"
    if thinking["type"] == "enabled" and (not isinstance(budget, int) or budget < 1024):
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if thinking["type"] == "enabled" and body.get("max_tokens") is not None and budget >= body["max_tokens"]:
        return "`max_tokens` must be greater than `thinking.budget_tokens`."
    if body.get("temperature") not in (None, 1):
        return "`temperature` may only be set to 1 when thinking is enabled."
    last = len(messages) - 2  # the assistant turn before a closing tool result
    # Adaptive thinking may skip thinking on a turn: only a budget makes every turn open with it.
    if thinking["type"] == "enabled" and last >= 0 and ask_of(body).after_tool and messages[last].get("role") == "assistant":
        content = messages[last].get("content")
        first = content[0] if isinstance(content, list) and content else {"type": "text"}
        if first.get("type") not in ("thinking", "redacted_thinking"):
            return (f"messages.{last}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                    f"`{first.get('type')}`. When `thinking` is enabled, a final `assistant` message must start "
                    "with a thinking block.")
    return None


def _usage(a: Answer) -> dict:
    # input_tokens leave out cache reads and writes; cache_creation splits the writes by lifetime.
    return {"input_tokens": a.prompt_tokens - a.cached_tokens - a.cache_written,
            "output_tokens": a.completion_tokens + a.reasoning_tokens,
            "cache_creation_input_tokens": a.cache_written, "cache_read_input_tokens": a.cached_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": a.cache_write_tokens,
                               "ephemeral_1h_input_tokens": a.cache_write_1h_tokens},
            "service_tier": "standard"}


async def _refused(req: Request, required: tuple[str, ...]) -> bool:
    """Answer Anthropic's 400 for what it would refuse (the version header, a required field, thinking)."""
    body = req.body
    missing = [name for name in required if not body.get(name)]
    error = ("anthropic-version: header is required" if not req.header("anthropic-version")
             else f"{missing[0]}: Field required" if missing else thinking_error(body))
    if error:
        await send_json(req.send, 400, {"type": "error", "error": {"type": "invalid_request_error", "message": error}})
    return bool(error)


async def count_tokens(req: Request) -> None:
    if not await _refused(req, ("model", "messages")):
        await send_json(req.send, 200, {"input_tokens": prompt_tokens(ask_of(req.body).texts)})


def _omitted(body: dict) -> bool:
    return (body.get("thinking") or {}).get("display") == "omitted"


async def messages(req: Request) -> None:
    body = req.body
    if await _refused(req, ("model", "max_tokens", "messages")):
        return
    a = answer(ask_of(body), req.knobs)
    message = {"id": f"msg_mock{int(time.time() * 1e6)}", "type": "message", "role": "assistant",
               "model": body["model"], "content": [], "stop_reason": None, "stop_sequence": None}
    if body.get("stream"):
        await send_stream(req, _frames(message, a, _omitted(body)))
        return
    if a.tool_name:
        message["content"] = [{"type": "tool_use", "id": "toolu_mock01", "name": a.tool_name,
                               "input": a.tool_arguments}]
    else:
        message["content"] = [{"type": "text", "text": a.text}]
    if a.reasoning:
        message["content"].insert(0, {"type": "thinking", "thinking": "" if _omitted(body) else a.thoughts,
                                      "signature": signature(a.thoughts)})
    count_served(a.prompt_tokens, a.completion_tokens + a.reasoning_tokens)
    await send_json(req.send, 200, {**message, "stop_reason": STOP[a.finish], "usage": _usage(a)})


def _frames(message: dict, a: Answer, omitted: bool = False):
    usage = _usage(a)
    yield sse({"type": "message_start", "message": {**message, "usage": {**usage, "output_tokens": 1}}},
              "message_start"), False
    index = 0
    if a.reasoning:
        yield sse({"type": "content_block_start", "index": 0, "content_block": {
            "type": "thinking", "thinking": "", "signature": ""}}, "content_block_start"), False
        for piece in () if omitted else a.reasoning:
            yield sse({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": piece}},
                      "content_block_delta"), True
        yield sse({"type": "content_block_delta", "index": 0, "delta": {
            "type": "signature_delta", "signature": signature(a.thoughts)}}, "content_block_delta"), False
        yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop"), False
        index = 1
    if a.tool_name:
        block = {"type": "tool_use", "id": "toolu_mock01", "name": a.tool_name, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in a.tool_pieces]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in a.pieces]
    yield sse({"type": "content_block_start", "index": index, "content_block": block}, "content_block_start"), False
    yield sse({"type": "ping"}, "ping"), False
    for delta in deltas:
        yield sse({"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta"), True
    yield sse({"type": "content_block_stop", "index": index}, "content_block_stop"), False
    count_served(a.prompt_tokens, a.completion_tokens + a.reasoning_tokens)
    yield sse({"type": "message_delta", "delta": {"stop_reason": STOP[a.finish], "stop_sequence": None},
               "usage": _delta_usage(usage)}, "message_delta"), False
    yield sse({"type": "message_stop"}, "message_stop"), False


def _delta_usage(usage: dict) -> dict:
    """message_delta's usage: cumulative, the input counts repeated, as the current API sends it."""
    return {name: usage[name] for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                                           "output_tokens")}


async def models(req: Request) -> None:
    data = [{"type": "model", "id": m, "display_name": m.replace("-", " ").title(),
             "created_at": "2025-05-14T00:00:00Z"} for m in ("mock-claude", "mock-claude-large")]
    await send_json(req.send, 200, {"data": data, "has_more": False, "first_id": data[0]["id"],
                                    "last_id": data[-1]["id"]})
