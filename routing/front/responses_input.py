"""A Responses API request read and checked, and turned into the gateway's chat form.

`read(body)` checks the Responses request (a 400 naming the `param` for what is
wrong, or for what the gateway does not offer, such as background mode);
`to_chat(request, items)` turns it, with its whole conversation as input items
(the stored history before the request's own input), into the OpenAI-shaped
chat request every adapter sends. What the chat form cannot carry (a built-in
tool such as web_search, an item of a built-in tool's call) is a 400 there, on
the deployments served through it; native Responses deployments take the
request as it is (routing/front/responses.py).
"""

from dataclasses import dataclass, field

import orjson
from django.conf import settings

from gateway_project.lib import errors

from .validation import take_prompt

# Fields of the request, by what the gateway does with them (docs/responses.md).
FIELDS = frozenset({
    "model", "input", "instructions", "previous_response_id", "store", "stream", "stream_options", "tools",
    "tool_choice", "parallel_tool_calls", "max_output_tokens", "max_tool_calls", "temperature", "top_p", "text",
    "reasoning", "truncation", "metadata", "include", "user", "safety_identifier", "prompt_cache_key",
    "service_tier", "top_logprobs", "background", "prompt_cache_retention", "client_metadata", "prompt",
})
# Request fields of features the gateway does not offer: a 400 naming them, whatever the deployment.
NOT_OFFERED = {
    "background": "background responses are not offered by this gateway; send the request without it",
    "conversation": "the Conversations API is not offered by this gateway; use previous_response_id",
    "context_management": "context management is not offered by this gateway",
}
INCLUDABLE = frozenset({
    "reasoning.encrypted_content", "message.output_text.logprobs", "message.input_image.image_url",
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "code_interpreter_call.outputs", "computer_call_output.output.image_url",
})
ROLES = frozenset({"user", "assistant", "system", "developer"})
EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})


def bad(param: str, message: str, code: str = "invalid_value") -> errors.GatewayError:
    return errors.bad_request(message, param=param, code=code)


def unsupported(param: str, what: str) -> errors.GatewayError:
    return bad(param, f"The '{param}' parameter is not supported: {what}.", "unsupported_parameter")


@dataclass(slots=True)
class Request:
    """A checked Responses request: the body as the client sent it, and what the gateway reads off it."""

    body: dict
    input: list[dict]  # the request's own input items (a string input is one user message)
    include: frozenset[str] = frozenset()
    summary: bool = False  # reasoning summaries asked for
    obfuscate: bool = False
    store: bool = True
    history: list[dict] = field(default_factory=list)  # the stored conversation before `input`
    references: dict[str, dict] = field(default_factory=dict)  # stored items the input refers to, by id
    native_only: bool = False  # the chat form cannot carry it: only native deployments serve it
    prompt: dict | None = None  # the prompt template it names (routing/prompts/, docs/templates.md)
    targets: tuple = ()  # the route's deployments, whose context windows truncation "auto" fits
    edited: bool = False  # a stage changed the items in place: a native request is made from them

    @property
    def items(self) -> list[dict]:
        return self.history + self.input


def _optional(body: dict, name: str, kinds: tuple, check=None, hint: str = "") -> None:
    value = body.get(name)
    if value is None:
        return
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds) or (check and not check(value)):
        raise bad(name, f"Invalid value for '{name}': {hint}.")


def read(body: dict) -> Request:
    """Check a Responses request; the 400s name the parameter at fault."""
    body = dict(body)  # the prompt reference is the gateway's: a native deployment never gets it
    prompt = take_prompt(body, "prompt")
    model = body.get("model")
    if not isinstance(model, str) or not (model or prompt is not None):
        raise bad("model", "You must provide a model parameter.", "missing_required_parameter")
    for name, why in NOT_OFFERED.items():
        if body.get(name) is not None and body[name] is not False:  # 0 == False, but 0 is no boolean
            raise unsupported(name, why)
    for name in body:
        if name not in FIELDS and name not in NOT_OFFERED:
            raise bad(name, f"Unknown parameter: '{name}'.", "unknown_parameter")
    _optional(body, "instructions", (str,), hint="expected a string")
    _optional(body, "previous_response_id", (str,), lambda v: bool(v), "expected a response id")
    for name in ("store", "stream", "parallel_tool_calls"):
        _optional(body, name, (bool,), hint="expected a boolean")
    cap = settings.GATEWAY_MAX_OUTPUT_TOKENS
    _optional(body, "max_output_tokens", (int,), lambda v: 16 <= v <= cap, f"expected an integer from 16 to {cap}")
    _optional(body, "max_tool_calls", (int,), lambda v: v >= 1, "expected a positive integer")
    _optional(body, "temperature", (int, float), lambda v: 0 <= v <= 2, "expected a number from 0 to 2")
    _optional(body, "top_p", (int, float), lambda v: 0 <= v <= 1, "expected a number from 0 to 1")
    _optional(body, "top_logprobs", (int,), lambda v: 0 <= v <= 20, "expected an integer from 0 to 20")
    _optional(body, "truncation", (str,), lambda v: v in ("auto", "disabled"), "expected 'auto' or 'disabled'")
    for name in ("user", "safety_identifier", "prompt_cache_key", "service_tier"):
        _optional(body, name, (str,), hint="expected a string")
    _optional(body, "prompt_cache_retention", (str,), lambda v: v in ("in_memory", "24h"),
              "expected 'in_memory' or '24h'")
    _metadata(body.get("metadata"))
    _optional(body, "client_metadata", (dict,), hint="expected an object of strings")
    options = body.get("stream_options")
    _optional(body, "stream_options", (dict,), lambda v: set(v) <= {"include_obfuscation"} and isinstance(
        v.get("include_obfuscation", True), bool), "expected {'include_obfuscation': boolean}")
    include = body.get("include")
    include = [] if include is None else include
    if not isinstance(include, list) or not all(isinstance(v, str) for v in include):
        raise bad("include", "Invalid value for 'include': expected an array of strings.")
    for i, value in enumerate(include):
        if value not in INCLUDABLE:
            raise bad(f"include[{i}]", f"Invalid value for 'include': '{value}' is not one of "
                      + ", ".join(sorted(INCLUDABLE)) + ".")
    reasoning = body.get("reasoning")
    _optional(body, "reasoning", (dict,), hint="expected an object")
    if reasoning:
        if reasoning.get("effort") is not None and not (isinstance(reasoning["effort"], str)
                                                        and reasoning["effort"] in EFFORTS):
            raise bad("reasoning.effort", "Invalid value for 'reasoning.effort': expected one of "
                      + ", ".join(sorted(EFFORTS)) + ".")
        for name in ("summary", "generate_summary"):
            if reasoning.get(name) not in (None, "auto", "concise", "detailed"):
                raise bad(f"reasoning.{name}", f"Invalid value for 'reasoning.{name}': expected auto, concise "
                          "or detailed.")
    _text(body.get("text"))
    _check_tools(body)
    return Request(body=body, input=_input(body.get("input")), include=frozenset(include), prompt=prompt,
                   summary=bool(reasoning and (reasoning.get("summary") or reasoning.get("generate_summary"))),
                   obfuscate=bool(options and options.get("include_obfuscation")),
                   store=body.get("store") is not False)


def _metadata(metadata) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16 or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items()):
        raise bad("metadata", "Invalid value for 'metadata': at most 16 string pairs, keys up to 64 characters "
                  "and values up to 512.")


def _text(text) -> None:
    if text is None:
        return
    if not isinstance(text, dict) or not set(text) <= {"format", "verbosity"}:
        raise bad("text", "Invalid value for 'text': expected {'format': ..., 'verbosity': ...}.")
    if text.get("verbosity") not in (None, "low", "medium", "high"):
        raise bad("text.verbosity", "Invalid value for 'text.verbosity': expected low, medium or high.")
    fmt = text.get("format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise bad("text.format", "Invalid value for 'text.format': expected {'type': 'text' | 'json_object' | "
                  "'json_schema'}.")
    if kind == "json_schema" and (not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict)):
        raise bad("text.format", "A json_schema format needs a 'name' and a 'schema' object.",
                  "missing_required_parameter")


def _check_tools(body: dict) -> None:
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or len(tools) > 128):
        raise bad("tools", "Invalid value for 'tools': expected an array of at most 128 tools.")
    for i, tool in enumerate(tools or ()):  # tool_choice is checked below even without tools
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise bad(f"tools[{i}]", "Each tool is an object with a 'type'.")
        parameters = tool.get("parameters")
        if tool["type"] == "function" and (not isinstance(tool.get("name"), str) or not tool["name"] or not (
                parameters is None or isinstance(parameters, dict))):
            raise bad(f"tools[{i}]", "A function tool needs a 'name' and 'parameters' (a JSON Schema object).")
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto", "required"):
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise bad("tool_choice", "Invalid value for 'tool_choice': expected none, auto, required or an object.")


def _input(value) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise bad("input", "Invalid value for 'input': expected a string or an array of input items.")
    if len(value) > settings.GATEWAY_MAX_MESSAGES:
        raise bad("input", f"Too many input items: at most {settings.GATEWAY_MAX_MESSAGES} per request.",
                  "too_many_messages")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise bad(f"input[{i}]", "Each input item is an object.")
        kind = item["type"] if item.get("type") is not None else "message" if "role" in item else None
        role = item.get("role")
        if kind == "message" and not (isinstance(role, str) and role in ROLES
                                      and isinstance(item.get("content"), (str, list))):
            raise bad(f"input[{i}]", "A message item needs a 'role' of user, assistant, system or developer and "
                      "a 'content' string or array of parts.")
        if kind in ("function_call_output", "function_call") and not isinstance(item.get("call_id"), str):
            raise bad(f"input[{i}].call_id", f"A {kind} item needs a 'call_id'.", "missing_required_parameter")
        if kind == "function_call" and not (isinstance(item.get("name"), str)
                                            and isinstance(item.get("arguments"), str)):
            raise bad(f"input[{i}]", "A function_call item needs a 'name' and its 'arguments' (a JSON string).",
                      "missing_required_parameter")
        if kind == "function_call_output" and not isinstance(item.get("output"), (str, list)):
            raise bad(f"input[{i}].output", "A function_call_output item needs an 'output' string or array of parts.",
                      "missing_required_parameter")
        if kind == "item_reference" and not isinstance(item.get("id"), str):
            raise bad(f"input[{i}].id", "An item_reference needs the 'id' of a stored item.",
                      "missing_required_parameter")
        if kind == "reasoning" and not _reasoning_ok(item):
            raise bad(f"input[{i}]", "A reasoning item's 'summary' is an array of {'type': 'summary_text', 'text': "
                      "string} parts and its 'encrypted_content' a string.")
        if not isinstance(kind, str):
            raise bad(f"input[{i}].type", "Each input item needs a 'type'.", "missing_required_parameter")
        items.append(item if item.get("type") is not None else {**item, "type": kind})
    return items


def _reasoning_ok(item: dict) -> bool:
    summary, encrypted = item.get("summary"), item.get("encrypted_content")
    return (summary is None or isinstance(summary, list) and all(
        isinstance(s, dict) and isinstance(s.get("text"), str) for s in summary)) and (
        encrypted is None or isinstance(encrypted, str))


# --- the chat form ------------------------------------------------------------------

class NotInChatForm(errors.GatewayError):
    """What the chat form cannot carry: only deployments that speak the Responses API natively can serve it."""


def chat_unsupported(param: str, what: str) -> NotInChatForm:
    return NotInChatForm(400, f"The '{param}' parameter is not supported: {what} cannot be served by this model's "
                              "deployments, which do not speak the Responses API natively.",
                         param=param, code="unsupported_parameter")


def _part(part, param: str) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text", "refusal"):
        name = "refusal" if kind == "refusal" else "text"
        if not isinstance(part.get(name), str):
            raise bad(param, f"A {kind} part needs its '{name}' as a string.")
        return {"type": "text", "text": part[name]}
    if kind == "input_image":
        if part.get("file_id"):
            raise chat_unsupported(f"{param}.file_id", "images by file id")
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise bad(param, "An input_image part needs an 'image_url'.", "missing_required_parameter")
        image = {"url": url}
        if part.get("detail") in ("low", "high"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if not part.get("file_data"):
            raise chat_unsupported(param, "files other than inline file_data")
        return {"type": "file", "file": {"file_data": part["file_data"], "filename": part.get("filename") or "file"}}
    raise bad(param, f"Unknown content part type '{kind}'.")


def _content(content, param: str):
    if isinstance(content, str):
        return content
    parts = [_part(part, f"{param}[{j}]") for j, part in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output_text(value, param: str):
    """A function_call_output's output: a string, or parts (text and images)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _content(value, param)
    return orjson.dumps(value).decode()


def messages(request: Request, references: dict[str, dict]) -> list[dict]:
    """The conversation as chat messages: instructions first, then every item in order."""
    result = [{"role": "system", "content": request.body["instructions"]}] if request.body.get("instructions") else []
    reasoning: dict | None = None
    offset = len(request.history)
    for i, item in enumerate(request.items):
        param = f"input[{i - offset}]" if i >= offset else "previous_response_id"
        kind = item.get("type")
        if kind == "item_reference":
            item = references.get(item["id"])
            if item is None:
                raise bad(f"{param}.id", f"Item with id '{request.items[i]['id']}' not found.")
            kind = item.get("type")
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            message = {"role": role, "content": _content(item["content"], f"{param}.content")}
            if role == "assistant":
                message["content"] = _text_of(message["content"])
                _take_reasoning(message, reasoning)
                reasoning = None
            result.append(message)
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item.get("name") or "", "arguments": item.get("arguments") or "{}"}}
            last = result[-1] if result else None
            if last is not None and last["role"] == "assistant" and reasoning is None:
                last.setdefault("tool_calls", []).append(call)
            else:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
                _take_reasoning(message, reasoning)
                reasoning = None
                result.append(message)
        elif kind == "function_call_output":
            result.append({"role": "tool", "tool_call_id": item["call_id"],
                           "content": _output_text(item.get("output"), f"{param}.output")})
        elif kind == "reasoning":
            reasoning = item
        else:
            raise chat_unsupported(f"{param}.type", f"input items of type '{kind}'")
    return result


def _text_of(content) -> str:
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def _take_reasoning(message: dict, item: dict | None) -> None:
    """Earlier reasoning goes back with the assistant turn it led to (the adapters send it on where the
    provider takes it back: Anthropic's thinking blocks, Gemini's thought signatures)."""
    if item is None:
        return
    text = "".join(s.get("text", "") for s in item.get("summary") or () if isinstance(s, dict))
    if text:
        message["reasoning_content"] = text
    if item.get("encrypted_content"):
        message["reasoning_signature"] = item["encrypted_content"]


def _flat(tools) -> list[dict]:
    """Function tools with those of namespaces (a group of function tools under one name) among them."""
    flat = []
    for tool in tools:
        if tool["type"] == "namespace" and isinstance(tool.get("tools"), list):
            flat += [t for t in tool["tools"] if isinstance(t, dict)]
        else:
            flat.append(tool)
    return flat


def _chat_tools(body: dict, result: dict) -> None:
    tools = []
    for i, tool in enumerate(_flat(body.get("tools") or ())):
        if tool.get("type") != "function":
            raise chat_unsupported(f"tools[{i}].type", f"'{tool.get('type')}' tools")
        if not isinstance(tool.get("name"), str) or not tool["name"] or not isinstance(tool.get("parameters") or {}, dict):
            raise bad(f"tools[{i}]", "A function tool needs a 'name' and 'parameters' (a JSON Schema object).")
        function = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
        if tool.get("description"):
            function["description"] = tool["description"]
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        tools.append({"type": "function", "function": function})
    if tools:
        result["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if choice["type"] != "function" or not isinstance(choice.get("name"), str):
            raise chat_unsupported("tool_choice", f"a tool_choice of type '{choice['type']}'")
        choice = {"type": "function", "function": {"name": choice["name"]}}
    if choice is not None and tools:
        result["tool_choice"] = choice


def _format(body: dict, result: dict) -> None:
    text = body.get("text") or {}
    fmt = text.get("format") or {}
    if fmt.get("type") == "json_object":
        result["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        spec = {"name": fmt["name"], "schema": fmt["schema"]}
        for name in ("strict", "description"):
            if fmt.get(name) is not None:
                spec[name] = fmt[name]
        result["response_format"] = {"type": "json_schema", "json_schema": spec}
    if text.get("verbosity") is not None:
        result["verbosity"] = text["verbosity"]


# Passed to the chat form under the same name.
SAME = ("temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier", "prompt_cache_key",
        "service_tier", "prompt_cache_retention")


def to_chat(request: Request, references: dict[str, dict]) -> dict:
    """The gateway's chat request for a Responses request and its conversation."""
    body = request.body
    result = {"model": body["model"], "messages": messages(request, references)}
    if not result["messages"] and request.prompt is None:
        raise bad("input", "The request has no input: send 'input', or 'previous_response_id' with it.",
                  "missing_required_parameter")
    for name in SAME:
        if body.get(name) is not None:
            result[name] = body[name]
    if body.get("max_output_tokens") is not None:
        result["max_completion_tokens"] = body["max_output_tokens"]
    if (body.get("reasoning") or {}).get("effort") is not None:
        result["reasoning_effort"] = body["reasoning"]["effort"]
    if body.get("top_logprobs") or "message.output_text.logprobs" in request.include:
        result["logprobs"] = True
        if body.get("top_logprobs"):
            result["top_logprobs"] = body["top_logprobs"]
    _chat_tools(body, result)
    _format(body, result)
    if body.get("stream"):
        result["stream"] = True
        result["stream_options"] = {"include_usage": True}
    return result
