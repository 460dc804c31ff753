"""Parsing and checking request bodies, with errors a client can act on.

Only what the gateway itself relies on is checked strictly; the upstream
validates the rest and its 400s are passed on.
"""

import orjson
from django.conf import settings

from gateway_project.lib import errors
from gateway_project.lib.json_depth import too_deep
from gateway_project.lib.settings_cache import conf

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# The gateway's extension field naming a prompt template on chat completions and Anthropic messages
# (the Responses API has its own, `prompt`): {"id", "version"?, "variables"?} (docs/templates.md).
PROMPT_FIELD = "gateway_prompt"


def json_body(request) -> dict:
    # The API handler refuses oversized bodies before they are read (asgi.py).
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise errors.bad_request(
            "We could not parse the JSON body of your request. Send valid JSON.", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise errors.bad_request("The request body must be a JSON object.", code="invalid_json")
    if too_deep(body, request.body):  # orjson would read it, then fail to forward it: a 500
        limit = conf.GATEWAY_MAX_JSON_DEPTH
        raise errors.bad_request(f"The JSON body nests objects and arrays more than {limit} levels deep, "
                                 f"the most this gateway accepts.", code="json_too_deep")
    return body


def _model(body: dict, prompted: bool = False) -> str:
    model = body.get("model")
    if prompted and model == "":
        return model  # the template's default model, found by its stage
    if not isinstance(model, str) or not model:
        raise errors.bad_request("You must provide a model parameter.", param="model", code="missing_required_parameter")
    return model


def take_prompt(body: dict, param: str) -> dict | None:
    """The prompt template reference at `param`, checked and taken out of the body (it is the gateway's
    to expand, never the upstream's); None when the request names none. A request naming one may leave
    out its model (the template's default) and its messages (the template's)."""
    ref = body.pop(param, None)
    if ref is None:
        return None
    if not isinstance(ref, dict) or not isinstance(ref.get("id"), str) or not ref["id"]:
        raise errors.bad_request(f"Invalid '{param}': expected {{'id': template name, 'version'?, 'variables'?}}.",
                                 param=param, code="invalid_value")
    unknown = sorted(set(ref) - {"id", "version", "variables"})
    if unknown:
        raise errors.bad_request(f"Unknown parameter: '{param}.{unknown[0]}'.", param=f"{param}.{unknown[0]}",
                                 code="unknown_parameter")
    version = ref.get("version")
    if version is not None and not (isinstance(version, str) and version) and not _is_int(version):
        raise errors.bad_request(f"Invalid '{param}.version': a version number or a label.",
                                 param=f"{param}.version", code="invalid_value")
    values = ref.get("variables")
    if values is not None and (not isinstance(values, dict) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values.values())):
        raise errors.bad_request(f"Invalid '{param}.variables': an object of strings (or numbers).",
                                 param=f"{param}.variables", code="invalid_value")
    body.setdefault("model", "")
    return {"id": ref["id"], "version": None if version is None else str(version),
            "variables": {name: str(value) for name, value in (values or {}).items()}, "param": param}


def _optional(body: dict, name: str, kinds: tuple, check=None, hint: str = "") -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds) or (check and not check(value)):
        raise errors.bad_request(f"Invalid value for '{name}'{': ' + hint if hint else ''}.", param=name,
                                 code="invalid_value")


def _invalid(param: str, message: str) -> errors.GatewayError:
    return errors.bad_request(f"Invalid '{param}': {message}.", param=param, code="invalid_value")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _content(where: str, content) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _invalid(where, "expected a string or an array of content parts")
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _invalid(at, "each content part is an object with a 'type'")
        kind = part["type"]
        if kind in ("text", "refusal") and not isinstance(part.get(kind), str):
            raise _invalid(at, f"a {kind} part needs a '{kind}' string")
        if kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str) or not image["url"]:
                raise _invalid(at, "an image_url part needs 'image_url': {'url': ...}")
            if image.get("detail") not in (None, "auto", "low", "high"):
                raise _invalid(at, "'detail' is one of auto, low, high")
        elif kind not in ("text", "refusal", "input_audio", "file"):
            raise _invalid(at, f"unknown content part type '{kind}'")


def _tool_calls(where: str, calls) -> None:
    if calls is None:
        return
    if not isinstance(calls, list):
        raise _invalid(where, "expected an array of tool calls")
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(call.get("id") if isinstance(call, dict) else None, str) or not isinstance(function, dict)
                or call.get("type", "function") != "function"
                or not isinstance(function.get("name"), str) or not isinstance(function.get("arguments"), str)):
            raise _invalid(f"{where}[{j}]", "a tool call is {'id', 'type': 'function', "
                           "'function': {'name', 'arguments' (a JSON string)}}")


def _message(i: int, message) -> None:
    where = f"messages[{i}]"
    role = message.get("role") if isinstance(message, dict) else None
    if not isinstance(role, str) or role not in CHAT_ROLES:  # a dict or list role is unhashable
        raise errors.bad_request(
            f"Invalid message at {where}: each message needs a 'role' of " + ", ".join(sorted(CHAT_ROLES)) + ".",
            param=where, code="invalid_value",
        )
    _content(f"{where}.content", message.get("content"))
    _tool_calls(f"{where}.tool_calls", message.get("tool_calls"))
    for name in ("name", "tool_call_id"):
        if message.get(name) is not None and not isinstance(message[name], str):
            raise _invalid(f"{where}.{name}", "expected a string")
    if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise errors.bad_request(f"Missing 'tool_call_id' at {where}: a tool message answers a tool call.",
                                 param=f"{where}.tool_call_id", code="missing_required_parameter")


def _tools(body: dict) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools", "expected an array of tools")
        for j, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if (not isinstance(function, dict) or tool.get("type", "function") != "function"
                    or not isinstance(function.get("name"), str) or not function["name"]
                    or not isinstance(function.get("parameters", {}), dict)
                    or not isinstance(function.get("description", ""), str)):
                raise _invalid(f"tools[{j}]", "a tool is {'type': 'function', 'function': {'name', "
                               "'description'?, 'parameters'? (a JSON Schema object)}}")
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto", "required"):
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    if (not isinstance(function, dict) or choice.get("type", "function") != "function"
            or not isinstance(function.get("name"), str)):
        raise _invalid("tool_choice", "expected none, auto, required or {'type': 'function', 'function': {'name'}}")


def _response_format(body: dict) -> None:
    value = body.get("response_format")
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise _invalid("response_format", "expected {'type': 'text' | 'json_object' | 'json_schema'}")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(
                spec.get("schema", {}), dict):
            raise _invalid("response_format", "json_schema needs {'name', 'schema'}")


def chat_body(request) -> dict:
    body = json_body(request)
    request.gateway_call.prompt = take_prompt(body, PROMPT_FIELD)
    return chat(body, prompted=request.gateway_call.prompt is not None)


def chat(body: dict, prompted: bool = False) -> dict:
    """Check an OpenAI chat request (the client's, or one the gateway translated); `prompted`: one naming a
    template, which may leave the model and the messages to it."""
    _model(body, prompted)
    if prompted:
        body.setdefault("messages", [])
    messages = body.get("messages")
    if not isinstance(messages, list) or not (messages or prompted):
        raise errors.bad_request("'messages' must be a non-empty array.", param="messages",
                                 code="missing_required_parameter")
    if len(messages) > conf.GATEWAY_MAX_MESSAGES:
        raise errors.bad_request(f"Too many messages: at most {settings.GATEWAY_MAX_MESSAGES} per request.",
                                 param="messages", code="too_many_messages")
    for i, message in enumerate(messages):
        _message(i, message)
    _tools(body)
    _response_format(body)
    _sampling(body)
    _optional(body, "max_completion_tokens", (int,), lambda v: 1 <= v <= conf.GATEWAY_MAX_OUTPUT_TOKENS,
              f"expected a positive integer up to {settings.GATEWAY_MAX_OUTPUT_TOKENS}")
    if isinstance(body.get("tools"), list) and len(body["tools"]) > 128:
        raise _invalid("tools", "at most 128 tools")
    _optional(body, "logprobs", (bool,), hint="expected a boolean")
    _optional(body, "top_logprobs", (int,), lambda v: 0 <= v <= 20, "expected an integer from 0 to 20")
    _optional(body, "parallel_tool_calls", (bool,), hint="expected a boolean")
    return body


def _sampling(body: dict) -> None:
    """What chat and legacy completions requests share: streaming, sampling, output cap."""
    _optional(body, "stream", (bool,), hint="expected a boolean")
    _optional(body, "stream_options", (dict,), lambda v: isinstance(v.get("include_usage", False), bool),
              "expected an object with a boolean 'include_usage'")
    _optional(body, "temperature", (int, float), lambda v: 0 <= v <= 2, "expected a number from 0 to 2")
    _optional(body, "top_p", (int, float), lambda v: 0 <= v <= 1, "expected a number from 0 to 1")
    _optional(body, "n", (int,), lambda v: 1 <= v <= 128, "expected an integer from 1 to 128")
    cap = conf.GATEWAY_MAX_OUTPUT_TOKENS
    _optional(body, "max_tokens", (int,), lambda v: 1 <= v <= cap, f"expected a positive integer up to {cap}")
    for name in ("frequency_penalty", "presence_penalty"):
        _optional(body, name, (int, float), lambda v: -2 <= v <= 2, "expected a number from -2 to 2")
    _optional(body, "seed", (int,), hint="expected an integer")
    _optional(body, "stop", (str, list), lambda v: isinstance(v, str) or (
        len(v) <= 4 and all(isinstance(s, str) for s in v)), "expected a string or up to 4 strings")
    _optional(body, "user", (str,), hint="expected a string")
    _optional(body, "logit_bias", (dict,), hint="expected an object of token ids to numbers")


def _is_token_list(value) -> bool:
    return bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _no_prompt(body: dict, endpoint: str) -> None:
    """A template names chat messages: an endpoint without them refuses it rather than pass it upstream."""
    if body.get(PROMPT_FIELD) is not None:
        raise errors.bad_request(f"'{PROMPT_FIELD}' is not supported on {endpoint}: prompt templates are for chat "
                                 "completions, messages and responses.", param=PROMPT_FIELD,
                                 code="unsupported_parameter")


def embeddings_body(request) -> dict:
    body = json_body(request)
    _no_prompt(body, "embeddings")
    _model(body)
    value = body.get("input")
    ok = (
        (isinstance(value, str) and value != "")
        or (isinstance(value, list) and value and (
            all(isinstance(v, str) and v != "" for v in value)
            or _is_token_list(value)
            or all(isinstance(v, list) and _is_token_list(v) for v in value)
        ))
    )
    if not ok:
        raise errors.bad_request(
            "'input' must be a non-empty string, an array of non-empty strings, or token arrays.",
            param="input", code="invalid_value",
        )
    _optional(body, "dimensions", (int,), lambda v: v >= 1, "expected a positive integer")
    _optional(body, "encoding_format", (str,), lambda v: v in ("float", "base64"), "expected 'float' or 'base64'")
    _optional(body, "user", (str,), hint="expected a string")
    return body


def _positive_int(body: dict, name: str, required: bool = False) -> None:
    value = body.get(name)
    if value is None and not required:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise errors.bad_request(f"'{name}' must be a positive integer.", param=name,
                                 code="missing_required_parameter" if value is None else "invalid_value")


def messages_body(request, counting: bool = False) -> dict:
    """An Anthropic Messages API request (POST /v1/messages; with `counting`, /v1/messages/count_tokens,
    which takes no max_tokens). Only what the gateway itself reads is checked: an Anthropic deployment
    gets the rest as sent and answers for itself."""
    body = json_body(request)
    prompt = request.gateway_call.prompt = take_prompt(body, PROMPT_FIELD)
    _model(body, prompt is not None)
    _positive_int(body, "max_tokens", required=not counting)
    if prompt is not None:
        body.setdefault("messages", [])
    messages = body.get("messages")
    if not isinstance(messages, list) or not (messages or prompt is not None):
        raise errors.bad_request("'messages' must be a non-empty array.", param="messages",
                                 code="missing_required_parameter")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant", "system") or (
            not isinstance(message.get("content"), (str, list))
        ):
            raise errors.bad_request(f"Invalid message at messages[{i}]: each needs a 'role' of user, assistant or "
                                     "system and a 'content' string or array of blocks.", param=f"messages[{i}]",
                                     code="invalid_value")
    _optional(body, "stream", (bool,), hint="expected a boolean")
    _optional(body, "system", (str, list), hint="expected a string or an array of text blocks")
    _optional(body, "temperature", (int, float), lambda v: 0 <= v <= 1, "expected a number from 0 to 1")
    _optional(body, "top_p", (int, float), lambda v: 0 <= v <= 1, "expected a number from 0 to 1")
    _optional(body, "stop_sequences", (list,), hint="expected an array of strings")
    return body


def completions_body(request) -> dict:
    """A legacy text completions request (POST /v1/completions)."""
    body = json_body(request)
    _no_prompt(body, "legacy completions")
    _model(body)
    prompt = body.get("prompt")
    ok = (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and (
        all(isinstance(p, str) for p in prompt) or _is_token_list(prompt)
        or all(isinstance(p, list) and _is_token_list(p) for p in prompt))))
    if not ok:
        raise errors.bad_request("'prompt' must be a string, an array of strings, or token arrays.",
                                 param="prompt", code="invalid_value")
    _sampling(body)
    return body
