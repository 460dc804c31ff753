"""The mock's ASGI app: knobs, routing to the format modules, and sending.

A bare ASGI app (no framework: benchmarks measure the gateway against it, so
it must cost little).
"""

import asyncio
import base64
import re
from collections import Counter
from dataclasses import dataclass
from urllib.parse import parse_qs

import orjson

KNOBS = ("latency_ms", "chunks", "chunk_delay_ms", "error", "retry_after", "cut_after", "no_usage", "hang",
         "cached_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens", "error_after", "fail_after", "echo_key", "refusal", "lenient_tools")
# Knobs with text values: a tool's name, a call's arguments (base64url of a JSON object) and a
# custom tool's input (base64url of the text), encoded so that a directive holds them on one line.
TEXT_KNOBS = ("tool", "tool_args", "tool_input", "say")
DEFAULTS: dict[str, int] = {"chunks": 20, "retry_after": 1}
SETTINGS: dict[str, str | None] = {"required_key": None}
# Knobs every request gets, over every other source, set at run time (POST /_mock/knobs):
# a provider that starts failing or hanging in the middle of a test.
FORCED: dict[str, object] = {}
# OpenAI's is the default format and has no prefix: Azure's paths begin with /openai.
FLAVOURS = ("azure", "anthropic", "gemini", "cohere", "ollama", "huggingface")
_DIRECTIVE = re.compile(rb"\[\[mock ([^\]]*)\]\]")

stats: Counter = Counter()
# Tokens reported to clients in usage blocks, so tests can prove billing matches what was served.
served_tokens: Counter = Counter()


def count_served(prompt: int, completion: int) -> None:
    """Add one answer's reported usage (every input token; every output token, reasoning included) to
    served_tokens, when the usage block that reports it is sent."""
    served_tokens["prompt"] += prompt
    served_tokens["completion"] += completion
# The last request body the mock parsed (GET /_mock/last), so tests can see what the gateway sent.
last_body: list = []


class Abort(Exception):
    """Raised mid-stream to make the server drop the connection (cut_after)."""


class KnobError(ValueError):
    """A knob the mock cannot follow (tool_args that are not base64url JSON, a tool
    that was not offered): the request gets a 400 in its format's error shape."""


@dataclass
class Request:
    method: str
    path: str  # without the knobs and flavour prefixes
    flavour: str
    headers: dict[bytes, bytes]
    query: dict[str, list[str]]
    body: dict
    knobs: dict
    send: object
    match: re.Match | None = None
    # The format's mid-stream error event, when the error_after knob asks for one.
    error_event: bytes = b""
    # Its message, for a format that numbers its events and so builds the event itself.
    error_message: str = ""

    def header(self, name: str) -> str:
        return self.headers.get(name.encode(), b"").decode()


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _decoded(value: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError as exc:
        raise KnobError(f"{value!r} is not base64url") from exc


def _tool_args(value) -> dict:
    if isinstance(value, dict):  # POST /_mock/knobs may give the object itself
        return value
    try:
        args = orjson.loads(_decoded(str(value)))
    except orjson.JSONDecodeError as exc:
        raise KnobError("tool_args is not the base64url of JSON") from exc
    if not isinstance(args, dict):
        raise KnobError("tool_args is not the base64url of a JSON object")
    return args


def knob_value(name: str, value):
    """A knob's value as the format modules read it: an int, a tool name, the
    tool_args object or the tool_input text."""
    if name == "tool_args":
        return _tool_args(value)
    if name in ("tool_input", "say"):
        try:
            return _decoded(str(value)).decode()
        except UnicodeDecodeError as exc:
            raise KnobError(f"{name} is not the base64url of UTF-8 text") from exc
    return str(value) if name == "tool" else _int(value)


def _parse_pairs(text: str, sep: str) -> dict[str, str]:
    knobs = {}
    for pair in text.split(sep):
        name, _, value = pair.partition("=")
        if name.strip() in KNOBS or name.strip() in TEXT_KNOBS:
            knobs[name.strip()] = value
    return knobs


def knobs_for(prefix_knobs: dict, headers: dict, user_text: str) -> dict:
    raw = {**DEFAULTS, **prefix_knobs}
    for name, value in headers.items():
        if name.startswith(b"x-mock-"):
            knob = name[7:].decode().replace("-", "_")
            if knob in KNOBS or knob in TEXT_KNOBS:
                raw[knob] = value.decode()
    if match := _DIRECTIVE.search(user_text.encode()):
        raw.update(_parse_pairs(match.group(1).decode(), " "))
    raw.update(FORCED)
    return {name: knob_value(name, value) for name, value in raw.items()}


def directive(**knobs) -> str:
    """The `[[mock ...]]` directive setting `knobs`, for a test's prompt: tool_args
    may be a dict and tool_input plain text (both are base64url-encoded here),
    True is 1.

        directive(tool="exec_command", tool_args={"cmd": "echo hi"}, chunks=5)
    """
    pairs = []
    for name, value in knobs.items():
        if name not in KNOBS and name not in TEXT_KNOBS:
            raise ValueError(f"unknown mock knob {name!r}")
        if name == "tool_args" and isinstance(value, dict):
            value = base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")
        elif name in ("tool_input", "say"):
            value = base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")
        pairs.append(f"{name}={int(value) if isinstance(value, bool) else value}")
    return "[[mock " + " ".join(pairs) + "]]"


def split_path(path: str) -> tuple[dict, str | None, str]:
    """(knobs from a /knobs/... prefix, flavour from a /<kind> prefix, the rest)."""
    knobs = {}
    if path.startswith("/knobs/"):
        parts = path.split("/", 3)
        knobs = _parse_pairs(parts[2], ",")
        path = "/" + (parts[3] if len(parts) > 3 else "")
    parts = path.split("/", 2)
    if len(parts) > 1 and parts[1] in FLAVOURS:
        return knobs, parts[1], "/" + (parts[2] if len(parts) > 2 else "")
    return knobs, None, path


async def send_json(send, status: int, value, extra=()) -> None:
    body = value if isinstance(value, bytes) else orjson.dumps(value)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_stream(req: Request, frames, content_type: bytes = b"text/event-stream") -> None:
    """Send (bytes, is_content) frames: a delay before each content frame, and
    the connection dropped before content frame number `cut_after` + 1 (with
    cut_after=0, before any data at all)."""
    await req.send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")]})
    delay = req.knobs.get("chunk_delay_ms", 0) / 1000
    cut_after = req.knobs.get("cut_after")
    if cut_after == 0:
        raise Abort  # before any data: the client sees headers, then a dropped connection
    error_after = req.knobs.get("error_after") if req.error_event else None
    sent = 0
    for frame, is_content in frames:
        if is_content:
            if cut_after is not None and sent >= cut_after:
                raise Abort
            if error_after is not None and sent >= error_after:
                # As providers fail mid-answer: their error event, then the end of the stream.
                await req.send({"type": "http.response.body", "body": req.error_event, "more_body": False})
                return
            if delay:
                await asyncio.sleep(delay)
            sent += 1
        await req.send({"type": "http.response.body", "body": frame, "more_body": True})
    await req.send({"type": "http.response.body", "body": b"", "more_body": False})


def echo_forms(key: str) -> list[str]:
    """The key as a careless upstream echoes it: the header whole, other letter cases, partial
    runs, base64 (alone, url-safe, in a Basic header, at another alignment), percent-, JSON-
    and HTML-escaped, hex."""
    raw = key.encode()
    return [
        f"Authorization: Bearer {key}", key.upper(), key.lower(), key[3:], key[len(key) // 4:len(key) // 4 + 12],
        base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "Basic " + base64.b64encode(b"user:" + raw).decode(), base64.b64encode(b"ab:" + raw).decode(),
        "".join(f"%{b:02X}" for b in raw), "".join(f"\\u{ord(c):04x}" for c in key),
        "".join(f"&#{ord(c)};" for c in key), raw.hex(),
    ]


def echoed_key(key: str, which: int) -> str:
    """An error message echoing the key (the echo_key knob): form number `which` of
    echo_forms (1-based), or all of them for any larger number."""
    forms = echo_forms(key)
    shown = [forms[which - 1]] if which <= len(forms) else forms
    return "Invalid credentials: " + " | ".join(shown)


def sse(data, event: str | None = None) -> bytes:
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    return (b"event: " + event.encode() + b"\n" if event else b"") + b"data: " + payload + b"\n\n"


async def read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Abort
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def query_of(scope) -> dict[str, list[str]]:
    return parse_qs(scope.get("query_string", b"").decode())
