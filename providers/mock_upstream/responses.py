"""OpenAI's Responses API: POST /v1/responses, as JSON or as named SSE events
numbered by `sequence_number` from 0; Azure's POST /openai/v1/responses and
POST /openai/responses?api-version=... (flavour azure, key in `api-key`).

Input items, instructions and tools become an Ask. The output items are a
`reasoning` item when the answer has reasoning tokens, then a `message`
(output_text, or a refusal part with refusal=1), a `function_call` or a
`custom_tool_call`. The response echoes the request's parameters as OpenAI's
does. The mock stores nothing: previous_response_id is echoed, not looked up.

Tool types the mock cannot run (web_search, local_shell, namespace, ...) get a
400 naming `tools[i].type`, unless lenient_tools=1, which accepts and ignores
them. The stream ends with exactly one of response.completed,
response.incomplete (cut by max_output_tokens) or response.failed (the
fail_after knob); error_after sends an `error` event instead and ends there.
"""

import base64
import time
import uuid

from .answers import Answer, Ask, answer, pieces_of
from .openai import error_body as error_body  # the server answers this format's errors in OpenAI's shape
from .openai import invalid
from .server import Request, count_served, send_json, send_stream, sse

ROLES = ("user", "system", "developer", "assistant")
# Content part type -> the field holding its text (None: no text to count).
PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal", "input_image": None, "input_file": None}
# Input item type -> the field holding its text; reasoning items are carried, not counted.
ITEMS = {"function_call": "arguments", "function_call_output": "output", "custom_tool_call": "input",
         "custom_tool_call_output": "output", "reasoning": None}
TOOL_RESULTS = ("function_call_output", "custom_tool_call_output")
SUMMARY = "The mock considered the request and chose its answer."


class Invalid(Exception):
    """A request OpenAI would refuse: the 400 names the parameter."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def _supported(value, names) -> str:
    return f"Invalid value: '{value}'. Supported values are: " + ", ".join(f"'{n}'" for n in names) + "."


def _content_text(content, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Invalid(f"Invalid type for '{param}': expected a string or an array of content parts.", param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PARTS:
            raise Invalid(_supported(kind, PARTS), f"{param}[{j}].type")
        if PARTS[kind]:
            texts.append(str(part.get(PARTS[kind]) or ""))
    return " ".join(texts)


def _input_items(body: dict) -> list:
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise Invalid("'input' must be a string or a non-empty array of input items.", "input")
    return value


def _item_texts(items: list) -> list[str]:
    texts = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise Invalid(f"Invalid type for 'input[{i}]': expected an object.", f"input[{i}]")
        kind = item.get("type", "message")  # a message may leave out its type (the agents SDK does)
        if kind == "message":
            if item.get("role") not in ROLES:
                raise Invalid(_supported(item.get("role"), ROLES), f"input[{i}].role")
            texts.append(_content_text(item.get("content"), f"input[{i}].content"))
        elif kind not in ITEMS:
            raise Invalid(_supported(kind, ("message", *ITEMS)), f"input[{i}].type")
        elif ITEMS[kind]:
            texts.append(_content_text(item.get(ITEMS[kind]) or "", f"input[{i}].{ITEMS[kind]}"))
    return texts


def user_text(body: dict) -> str:
    """The last user message's text, where the mock reads its directive."""
    value = body.get("input")
    if isinstance(value, str):
        return value
    for item in reversed(value if isinstance(value, list) else ()):
        if isinstance(item, dict) and item.get("type", "message") == "message" and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return " ".join(str(p.get("text") or "") for p in content or () if isinstance(p, dict))
    return ""


def _tools(body: dict, lenient: bool) -> list[dict]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise Invalid("Invalid type for 'tools': expected an array.", "tools")
    offered = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in ("function", "custom"):
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise Invalid(f"Missing required parameter: 'tools[{i}].name'.", f"tools[{i}].name")
            offered.append({"name": tool["name"], "parameters": tool.get("parameters") or {}, "type": kind})
        elif not lenient:
            raise Invalid(f"The mock upstream runs function and custom tools only, not '{kind}' "
                          "(the lenient_tools knob ignores other tools).", f"tools[{i}].type")
    return offered


def _tool_choice(choice, tools: list[dict], lenient: bool) -> str | None:
    if choice is None or choice == "auto":
        return None
    if choice in ("none", "required"):
        return choice
    if not isinstance(choice, dict):
        raise Invalid(_supported(choice, ("none", "auto", "required")), "tool_choice")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        if not any(t["name"] == choice.get("name") for t in tools):
            raise Invalid(f"Tool choice '{kind}' not found in 'tools' parameter.", "tool_choice")
        return choice["name"]
    if kind == "allowed_tools" or lenient:
        return None
    raise Invalid(_supported(kind, ("function", "custom", "allowed_tools")), "tool_choice.type")


def _json_schema(body: dict) -> dict | None:
    text = body.get("text") or {}
    if not isinstance(text, dict):
        raise Invalid("Invalid type for 'text': expected an object.", "text")
    fmt = text.get("format") or {}
    if fmt.get("type") == "json_object":
        return {}
    if fmt.get("type") == "json_schema":
        return fmt.get("schema") or {}
    return None


def ask_of(body: dict, knobs: dict) -> Ask:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("Missing required parameter: 'model'.", "model")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise Invalid("Invalid type for 'instructions': expected a string.", "instructions")
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise Invalid("Invalid 'max_output_tokens': expected a positive integer.", "max_output_tokens")
    items = _input_items(body)
    texts = ([instructions] if instructions else []) + _item_texts(items)
    lenient = bool(knobs.get("lenient_tools"))
    tools = _tools(body, lenient)
    return Ask(texts=texts, tools=tools, tool_choice=_tool_choice(body.get("tool_choice"), tools, lenient),
               after_tool=items[-1].get("type") in TOOL_RESULTS, json_schema=_json_schema(body), max_tokens=limit)


class Output:
    """One answer's output items, with the ids the stream and the final response share."""

    def __init__(self, body: dict, a: Answer, no_usage: bool) -> None:
        self.body, self.a, self.no_usage = body, a, no_usage
        self.uid = uuid.uuid4().hex
        self.id = f"resp_{self.uid}"
        self.created_at = int(time.time())

    def reasoning(self) -> dict:
        item = {"id": f"rs_{self.uid}", "type": "reasoning", "summary": []}
        if (self.body.get("reasoning") or {}).get("summary"):
            item["summary"] = [{"type": "summary_text", "text": SUMMARY}]
        if "reasoning.encrypted_content" in (self.body.get("include") or ()):
            item["encrypted_content"] = base64.b64encode(f"mock-reasoning:{self.uid}".encode()).decode()
        return item

    def part(self, text: str) -> dict:
        if self.a.refusal:
            return {"type": "refusal", "refusal": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def main(self, done: bool) -> dict:
        """The message or tool call, whole (`done`) or as the stream first adds it."""
        a, status = self.a, "completed" if done else "in_progress"
        if a.tool_input is not None:
            return {"id": f"ctc_{self.uid}", "type": "custom_tool_call", "status": status,
                    "call_id": f"call_{self.uid}", "name": a.tool_name, "input": a.tool_input if done else ""}
        if a.tool_name:
            return {"id": f"fc_{self.uid}", "type": "function_call", "status": status, "call_id": f"call_{self.uid}",
                    "name": a.tool_name, "arguments": "".join(a.tool_pieces) if done else ""}
        if done and a.finish == "length":
            status = "incomplete"
        return {"id": f"msg_{self.uid}", "type": "message", "status": status, "role": "assistant",
                "content": [self.part(a.text)] if done else []}

    def items(self) -> list[dict]:
        return ([self.reasoning()] if self.a.reasoning_tokens else []) + [self.main(True)]

    def response(self, status: str, output: list[dict], usage: dict | None, error: dict | None = None) -> dict:
        body = self.body
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None, "background": False,
            "error": error, "incomplete_details": incomplete, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": body.get("max_tool_calls"),
            "model": body["model"], "output": output, "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
            "previous_response_id": body.get("previous_response_id"), "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
            "safety_identifier": body.get("safety_identifier"), "service_tier": body.get("service_tier") or "default",
            "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [], "top_logprobs": body.get("top_logprobs", 0),
            "top_p": body.get("top_p", 1.0), "truncation": body.get("truncation") or "disabled", "usage": usage,
            "user": body.get("user"), "metadata": body.get("metadata") or {},
        }

    def final(self) -> dict:
        """The finished response: completed, or incomplete when max_output_tokens cut the answer."""
        status = "incomplete" if self.a.finish == "length" else "completed"
        return self.response(status, self.items(), None if self.no_usage else _usage(self.a))


def _usage(a: Answer) -> dict:
    output = a.completion_tokens + a.reasoning_tokens
    count_served(a.prompt_tokens, output)
    return {"input_tokens": a.prompt_tokens, "input_tokens_details": {"cached_tokens": a.cached_tokens},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": a.reasoning_tokens},
            "total_tokens": a.prompt_tokens + output}


async def create(req: Request) -> None:
    try:
        a = answer(ask_of(req.body, req.knobs), req.knobs)
    except Invalid as exc:
        await send_json(req.send, 400, invalid(str(exc), exc.param))
        return
    out = Output(req.body, a, bool(req.knobs.get("no_usage")))
    if req.body.get("stream"):
        await send_stream(req, _numbered(req, out, _events(out)))
        return
    await send_json(req.send, 200, out.final())


def _reasoning_events(out: Output, index: int):
    item = out.reasoning()
    yield "response.output_item.added", {"output_index": index, "item": {**item, "summary": []}}, False
    for s, summary in enumerate(item["summary"]):
        where = {"item_id": item["id"], "output_index": index, "summary_index": s}
        yield "response.reasoning_summary_part.added", {**where, "part": {"type": "summary_text", "text": ""}}, False
        for piece in pieces_of(summary["text"]):
            yield "response.reasoning_summary_text.delta", {**where, "delta": piece}, False
        yield "response.reasoning_summary_text.done", {**where, "text": summary["text"]}, False
        yield "response.reasoning_summary_part.done", {**where, "part": summary}, False
    yield "response.output_item.done", {"output_index": index, "item": item}, False


def _main_events(out: Output, index: int):
    """The message's or the tool call's events; its pieces are the stream's content frames."""
    a, item = out.a, out.main(True)
    where = {"item_id": item["id"], "output_index": index}
    yield "response.output_item.added", {"output_index": index, "item": out.main(False)}, False
    if item["type"] in ("function_call", "custom_tool_call"):
        kind, field = (("function_call_arguments", "arguments") if item["type"] == "function_call"
                       else ("custom_tool_call_input", "input"))
        for piece in a.tool_pieces:
            yield f"response.{kind}.delta", {**where, "delta": piece}, True
        yield f"response.{kind}.done", {**where, field: item[field]}, False
    else:
        where["content_index"] = 0
        yield "response.content_part.added", {**where, "part": out.part("")}, False
        kind = "refusal" if a.refusal else "output_text"
        extra = {} if a.refusal else {"logprobs": []}
        for piece in a.pieces:
            yield f"response.{kind}.delta", {**where, "delta": piece, **extra}, True
        yield f"response.{kind}.done", {**where, ("refusal" if a.refusal else "text"): a.text, **extra}, False
        yield "response.content_part.done", {**where, "part": item["content"][0]}, False
    yield "response.output_item.done", {"output_index": index, "item": item}, False


def _events(out: Output):
    """(type, fields, is_content) for every event but the failures the knobs inject."""
    start = out.response("in_progress", [], None)
    yield "response.created", {"response": start}, False
    yield "response.in_progress", {"response": start}, False
    if out.a.reasoning_tokens:
        yield from _reasoning_events(out, 0)
    yield from _main_events(out, 1 if out.a.reasoning_tokens else 0)
    final = out.final()  # only now: a stream cut short reports no usage
    yield f"response.{final['status']}", {"response": final}, False


def _numbered(req: Request, out: Output, events):
    """The events as SSE frames numbered from 0, with error_after's `error` event or
    fail_after's response.failed where the knob puts it, before that content frame."""
    error_after, fail_after = req.knobs.get("error_after"), req.knobs.get("fail_after")
    number, sent = 0, 0
    for kind, fields, is_content in events:
        if is_content and error_after is not None and sent >= error_after:
            yield _event("error", {"code": "server_error", "message": req.error_message, "param": None}, number), False
            return
        if is_content and fail_after is not None and sent >= fail_after:
            error = {"code": "server_error", "message": req.error_message}
            yield _event("response.failed", {"response": out.response("failed", [], None, error)}, number), False
            return
        yield _event(kind, fields, number), is_content
        number += 1
        sent += is_content


def _event(kind: str, fields: dict, number: int) -> bytes:
    return sse({"type": kind, **fields, "sequence_number": number}, kind)


async def azure(req: Request) -> None:
    """/openai/responses needs an api-version; /openai/v1/responses (Azure's v1 API) does not."""
    if not req.path.startswith("/openai/v1/") and not req.query.get("api-version"):
        await send_json(req.send, 404, {"error": {"code": "404", "message": "Resource not found"}})
        return
    await create(req)

