"""An Anthropic Messages request in the gateway's chat form, for deployments of every kind but Anthropic's.

What has a counterpart is translated: system prompts and system turns become system messages, in
place; thinking (enabled with a budget, adaptive with output_config.effort) becomes reasoning_effort;
earlier thinking blocks become the assistant message's reasoning_content and reasoning_signature;
images, text documents, tools and tool results their chat-form shapes. What has none is ignored
(cache_control, context_management, container, mcp_servers, service_tier, top_k, redacted_thinking
blocks): docs/messages.md has the table. A content block or tool the chat form cannot carry at all
(a PDF, a server tool) is refused with a 400 naming it. Anthropic deployments get the request as
sent instead (messages.py).
"""

import orjson

from gateway_project.lib import errors
from providers.adapters.openai_format import BUDGETS

# output_config.effort to reasoning_effort (Anthropic's "max" is beyond OpenAI's scale: its top).
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
ADAPTIVE_EFFORT = "high"  # Anthropic's default effort for adaptive thinking


def unsupported(param: str, detail: str = "") -> errors.GatewayError:
    return errors.bad_request(f"The '{param}' parameter is not supported by this gateway for non-Anthropic "
                              f"deployments{': ' + detail if detail else ''}.", param=param,
                              code="unsupported_parameter")


def _text_of(content) -> str:
    """The text of a system prompt or system turn: a string, or text blocks joined as paragraphs."""
    if isinstance(content, str):
        return content
    return "\n\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type", "text") == "text")


def _image_url(block: dict, param: str) -> dict:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = source.get("url", "")
    else:
        raise unsupported(param, f"image sources of type '{source.get('type')}'")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: dict, param: str) -> dict:
    """A document the chat form can carry: plain text (a title, when given, heads it)."""
    source = block.get("source") or {}
    if source.get("type") == "text":
        text = source.get("data", "")
    elif source.get("type") == "content" and isinstance(source.get("content"), list):
        text = _text_of(source["content"])
    else:
        raise unsupported(param, f"documents with a source of type '{source.get('type')}' (only text documents "
                                 "reach other provider kinds)")
    if block.get("title"):
        text = f"{block['title']}\n\n{text}"
    return {"type": "text", "text": text}


def _tool_result_text(block: dict, param: str) -> str:
    content = block.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif part.get("type") == "document":
            texts.append(_document(part, param)["text"])
        else:
            raise unsupported(param, f"tool results holding '{part.get('type')}' blocks")
    return "".join(texts)


def _user(content, param: str) -> list[dict]:
    """One Anthropic user turn: tool results first (as tool messages), then the rest."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results, parts = [], []
    for i, block in enumerate(content):
        kind, at = block.get("type"), f"{param}[{i}]"
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image_url(block, at))
        elif kind == "document":
            parts.append(_document(block, at))
        elif kind == "tool_result":
            text = _tool_result_text(block, at)
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text})
        elif kind not in ("thinking", "redacted_thinking"):
            raise unsupported(at, f"content blocks of type '{kind}'")
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _assistant(content, param: str) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text, calls, thoughts, signature = [], [], [], ""
    for i, block in enumerate(content):
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append({"id": block.get("id", ""), "type": "function", "function": {
                "name": block.get("name", ""), "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind == "thinking":
            thoughts.append(block.get("thinking") or "")
            signature = block.get("signature") or signature
        elif kind != "redacted_thinking":  # encrypted for Anthropic alone: no other kind can read it
            raise unsupported(f"{param}[{i}]", f"content blocks of type '{kind}'")
    message = {"role": "assistant", "content": "".join(text) or None}
    if thoughts and "".join(thoughts):
        message["reasoning_content"] = "".join(thoughts)
    if signature:
        message["reasoning_signature"] = signature
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(body: dict, result: dict) -> None:
    tools = []
    for i, tool in enumerate(body.get("tools") or ()):
        if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
            raise unsupported(f"tools[{i}]", f"server tools ('{tool.get('type')}') run at Anthropic only")
        function = {"name": tool.get("name", ""), "parameters": tool["input_schema"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        tools.append({"type": "function", "function": function})
    if tools:
        result["tools"] = tools
    choice = body.get("tool_choice")
    if choice:
        kind = choice.get("type")
        result["tool_choice"] = ({"type": "function", "function": {"name": choice.get("name", "")}} if kind == "tool"
                                 else {"auto": "auto", "any": "required", "none": "none"}.get(kind, "auto"))
        if choice.get("disable_parallel_tool_use"):
            result["parallel_tool_calls"] = False


def reasoning_effort(body: dict) -> str | None:
    """The reasoning_effort that the request's thinking asks for, None when thinking is off."""
    thinking = body.get("thinking")
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive", "disabled"):
        raise errors.bad_request("'thinking' is {'type': 'enabled', 'budget_tokens': N}, {'type': 'adaptive'} "
                                 "or {'type': 'disabled'}.", param="thinking", code="invalid_value")
    if thinking["type"] == "disabled":
        return None
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise errors.bad_request("'thinking.budget_tokens' must be an integer.", param="thinking.budget_tokens",
                                     code="invalid_value")
        # The largest effort whose budget fits the client's, the least one under all of them.
        return max((e for e, b in BUDGETS.items() if b <= budget), key=BUDGETS.get, default="minimal")
    effort = (body.get("output_config") or {}).get("effort")
    return EFFORTS.get(effort, ADAPTIVE_EFFORT)


def _response_format(body: dict, result: dict) -> None:
    output = body.get("output_format") or (body.get("output_config") or {}).get("format")
    if output:
        result["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": output.get("schema") or {"type": "object"}}}


def _options(body: dict, result: dict) -> None:
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("stop_sequences", "stop")):
        if body.get(ours) is not None:
            result[theirs] = body[ours]
    user = (body.get("metadata") or {}).get("user_id")
    if user:
        result["user"] = user
    if effort := reasoning_effort(body):
        result["reasoning_effort"] = effort
    _response_format(body, result)


def to_openai(body: dict) -> dict:
    """An Anthropic Messages request as the gateway's OpenAI-shaped chat request."""
    system = body.get("system")
    messages = [{"role": "system", "content": _text_of(system)}] if system else []
    for i, message in enumerate(body["messages"]):
        param = f"messages[{i}].content"
        if message["role"] == "system":
            messages.append({"role": "system", "content": _text_of(message["content"])})
        elif message["role"] == "user":
            messages.extend(_user(message["content"], param))
        else:
            messages.append(_assistant(message["content"], param))
    result = {"model": body["model"], "messages": messages}
    if body.get("max_tokens") is not None:  # count_tokens has none
        result["max_tokens"] = body["max_tokens"]
    _options(body, result)
    _tools(body, result)
    if body.get("stream"):
        result["stream"] = True
        result["stream_options"] = {"include_usage": True}
    return result


def omits_thinking(body: dict) -> bool:
    """Whether the client asked for thinking blocks without their text (display "omitted")."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("display") == "omitted"
