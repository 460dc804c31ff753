"""Parsing and checking request bodies, with errors a client can act on.

Only what the gateway itself relies on is checked strictly; the upstream
validates the rest and its 400s are passed on.
"""

import orjson

from . import errors

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


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
    return body


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise errors.bad_request("You must provide a model parameter.", param="model", code="missing_required_parameter")
    return model


def _optional(body: dict, name: str, kinds: tuple, check=None, hint: str = "") -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds) or (check and not check(value)):
        raise errors.bad_request(f"Invalid value for '{name}'{': ' + hint if hint else ''}.", param=name,
                                 code="invalid_value")


def chat_body(request) -> dict:
    body = json_body(request)
    _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.bad_request("'messages' must be a non-empty array.", param="messages",
                                 code="missing_required_parameter")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise errors.bad_request(
                f"Invalid message at messages[{i}]: each message needs a 'role' of "
                + ", ".join(sorted(CHAT_ROLES)) + ".",
                param=f"messages[{i}]", code="invalid_value",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise errors.bad_request(f"Invalid content at messages[{i}]: expected a string or an array of parts.",
                                     param=f"messages[{i}].content", code="invalid_value")
    _optional(body, "stream", (bool,), hint="expected a boolean")
    _optional(body, "stream_options", (dict,), hint="expected an object")
    _optional(body, "temperature", (int, float), lambda v: 0 <= v <= 2, "expected a number from 0 to 2")
    _optional(body, "top_p", (int, float), lambda v: 0 <= v <= 1, "expected a number from 0 to 1")
    _optional(body, "n", (int,), lambda v: 1 <= v <= 128, "expected an integer from 1 to 128")
    for name in ("max_tokens", "max_completion_tokens"):
        _optional(body, name, (int,), lambda v: v >= 1, "expected a positive integer")
    return body


def _is_token_list(value) -> bool:
    return bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def embeddings_body(request) -> dict:
    body = json_body(request)
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
    return body


def _positive_int(body: dict, name: str, required: bool = False) -> None:
    value = body.get(name)
    if value is None and not required:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise errors.bad_request(f"'{name}' must be a positive integer.", param=name,
                                 code="missing_required_parameter" if value is None else "invalid_value")


def messages_body(request) -> dict:
    """An Anthropic Messages API request (POST /v1/messages)."""
    body = json_body(request)
    _model(body)
    _positive_int(body, "max_tokens", required=True)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.bad_request("'messages' must be a non-empty array.", param="messages",
                                 code="missing_required_parameter")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant") or not isinstance(
            message.get("content"), (str, list)
        ):
            raise errors.bad_request(f"Invalid message at messages[{i}]: each needs a 'role' of user or assistant "
                                     "and a 'content' string or array of blocks.", param=f"messages[{i}]",
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
    _model(body)
    prompt = body.get("prompt")
    ok = (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and (
        all(isinstance(p, str) for p in prompt) or _is_token_list(prompt)
        or all(isinstance(p, list) and _is_token_list(p) for p in prompt))))
    if not ok:
        raise errors.bad_request("'prompt' must be a string, an array of strings, or token arrays.",
                                 param="prompt", code="invalid_value")
    _optional(body, "stream", (bool,), hint="expected a boolean")
    _optional(body, "stream_options", (dict,), hint="expected an object")
    _optional(body, "temperature", (int, float), lambda v: 0 <= v <= 2, "expected a number from 0 to 2")
    _optional(body, "top_p", (int, float), lambda v: 0 <= v <= 1, "expected a number from 0 to 1")
    _positive_int(body, "max_tokens")
    return body
