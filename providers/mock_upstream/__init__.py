"""A mock LLM provider speaking every supported provider's wire format, for
tests, the demo and benchmarks.

Endpoints, JSON and streaming alike (each module follows its provider's
published API reference):
  OpenAI        POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/moderations, /v1/responses;
                GET /v1/models
  Azure OpenAI  POST /openai/deployments/{name}/chat/completions|completions|embeddings?api-version=...,
                /openai/responses?api-version=..., /openai/v1/responses; GET /openai/models
  Anthropic     POST /v1/messages, /v1/messages/count_tokens; GET /v1/models (with an anthropic-version header)
  Gemini        POST /v1beta/models/{model}:generateContent|streamGenerateContent|batchEmbedContents|embedContent;
                GET /v1beta/models
  Cohere        POST /v2/chat, /v2/embed; GET /v1/models
  Ollama        POST /api/chat, /api/embed; GET /api/tags
  Hugging Face  POST /v1/chat/completions (TGI's dialect), /embed (TEI); GET /info
A path may start with a provider kind (/anthropic/v1/models, /huggingface/v1/chat/completions,
/cohere/v1/models, /azure/openai/v1/responses) to pick that format where paths are shared; OpenAI's
is the default. Plus GET /_mock/stats (requests served per path, tokens reported in usage blocks),
GET /_mock/last (the last request's body, path with query, and headers but the credentials), POST /_mock/reset, and POST /_mock/knobs with a JSON object
of knobs that every request then gets, over every source below ({} clears them; tool_args may be
the object itself): a provider that starts failing or hanging mid-test.

Knobs, each optional; later sources override earlier ones:
  1. server defaults: `--latency-ms` etc. or MOCK_LATENCY_MS, MOCK_CHUNKS, ...
  2. a path prefix on the base URL: /knobs/latency_ms=50,error=503/v1/...
  3. request headers: x-mock-latency-ms: 50, x-mock-error: 503, ...
  4. a directive in the last user message's own text (not a tool result's):
     [[mock chunks=5 cut_after=2]]; directive(**knobs) writes one for a test
Knob names (values are integers unless said otherwise):
  latency_ms        delay before the response starts
  chunks            content chunks (= completion tokens) in an answer (default 20)
  chunk_delay_ms    delay between stream chunks
  error             answer with this HTTP status and the format's own error body
  retry_after       Retry-After seconds sent with error=429 (default 1)
  cut_after         stream: break the connection after this many content chunks
                    (0: right after the headers, before any data)
  no_usage          1: never report usage, even when asked (Anthropic always reports it)
  hang              1: never answer
  cached_tokens     report this many of the prompt tokens as read from the provider's cache
  cache_write_tokens     report this many of the prompt tokens as written to the cache for
                    5 minutes (Anthropic's cache_creation; OpenAI-compatible answers carry them
                    in prompt_tokens_details.cache_write_tokens, as OpenRouter does; the other
                    formats have no such count)
  cache_write_1h_tokens  the same, written for 1 hour (Anthropic's ephemeral_1h_input_tokens)
                    A prompt counted shorter than its cached and written tokens together is
                    counted as long as them.
  reasoning_tokens  report this many reasoning tokens besides the visible output; when the
                    request asks for reasoning, also answer with that many words of it in
                    the format's own reasoning fields, signed where the provider signs
                    (the Responses API also adds a reasoning output item)
  error_after       stream: after this many content chunks, send the format's own
                    mid-stream error event (Responses: an `error` event) and end the stream
  fail_after        Responses stream: after this many content chunks, response.failed, then the end
  echo_key          error bodies and mid-stream error events echo the key the request
                    carried: form N of server.echo_forms (the header whole, other
                    cases, partial runs, base64 in a Basic header, percent-, JSON-,
                    HTML-escaped, hex), or every form for a larger N (echo_key=99)
  tool              text: call the offered tool of this name (a 400 when none is)
  tool_args         base64url of a JSON object: the call's arguments, verbatim
  tool_input        base64url of text: a Responses custom tool call's input
  say               base64url of text: the model answers with exactly this text, streamed in
                    pieces of 4 characters (so a test's finding is split across chunks)
  refusal           1: the model refuses (a refusal in OpenAI's chat and Responses
                    formats, plain text in the others)
  lenient_tools     1: the Responses API accepts and ignores tools it cannot run
                    (web_search, local_shell, namespace, ...) instead of a 400
A knob the mock cannot follow (tool_args that are not base64url JSON, say) gets a
400 in the format's error shape.
The model answers in words, or, when the request offers tools (and the last
message is not a tool result), calls the `tool` knob's, the forced or the first
tool with `tool_args` or arguments made from its schema; with a JSON response
format it answers with an object made from the schema. So a test scripts an
agent: the first turn calls the tool, the turn after its result answers in words.

    python -m providers.mock_upstream --port 8001
"""

import argparse
import asyncio
import os
import re

import orjson

from . import anthropic, cohere, gemini, huggingface, ollama, openai, responses
from .server import (
    DEFAULTS,
    FORCED,
    KNOBS,
    SETTINGS,
    TEXT_KNOBS,
    KnobError,
    Request,
    directive,
    echoed_key,
    knob_value,
    knobs_for,
    last_body,
    query_of,
    read_body,
    send_json,
    served_tokens,
    split_path,
    stats,
)

__all__ = ["app", "configure", "serve", "main", "stats", "directive", "DEFAULTS"]

# (flavour, method, path pattern, handler, the format module)
ROUTES = [
    ("openai", "POST", r"/v1/chat/completions", openai.chat, openai),
    ("openai", "POST", r"/v1/completions", openai.completions, openai),
    ("openai", "POST", r"/v1/embeddings", openai.embeddings, openai),
    ("openai", "POST", r"/v1/moderations", openai.moderations, openai),
    ("openai", "GET", r"/v1/models", openai.models, openai),
    ("openai", "POST", r"/v1/responses", responses.create, responses),
    ("azure", "POST", r"/openai/deployments/(?P<deployment>[^/]+)/(?P<operation>chat/completions|completions|embeddings)",
     openai.azure, openai),
    ("azure", "GET", r"/openai/models", openai.azure_models, openai),
    ("azure", "POST", r"/openai(/v1)?/responses", responses.azure, responses),
    ("anthropic", "POST", r"/v1/messages", anthropic.messages, anthropic),
    ("anthropic", "POST", r"/v1/messages/count_tokens", anthropic.count_tokens, anthropic),
    ("anthropic", "GET", r"/v1/models", anthropic.models, anthropic),
    ("gemini", "POST", r"/v1(beta)?/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)",
     gemini.generate, gemini),
    ("gemini", "POST", r"/v1(beta)?/models/(?P<model>[^/:]+):(?P<method>batchEmbedContents|embedContent)",
     gemini.embed, gemini),
    ("gemini", "GET", r"/v1(beta)?/models", gemini.models, gemini),
    ("cohere", "POST", r"/v2/chat", cohere.chat, cohere),
    ("cohere", "POST", r"/v2/embed", cohere.embed, cohere),
    ("cohere", "GET", r"/v1/models", cohere.models, cohere),
    ("ollama", "POST", r"/api/chat", ollama.chat, ollama),
    ("ollama", "POST", r"/api/embed", ollama.embed, ollama),
    ("ollama", "GET", r"/api/tags", ollama.tags, ollama),
    ("huggingface", "POST", r"/v1/chat/completions", huggingface.chat, huggingface),
    ("huggingface", "POST", r"/embed", huggingface.embed, huggingface),
    ("huggingface", "GET", r"/info", huggingface.info, huggingface),
]
CREDENTIAL_HEADERS = (b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key")
last_request: dict = {}
_COMPILED = [(f, m, re.compile(p + "$"), h, mod) for f, m, p, h, mod in ROUTES]


def _route(method: str, path: str, flavour: str | None, headers: dict):
    if flavour is None and path == "/v1/models" and b"anthropic-version" in headers:
        flavour = "anthropic"
    for route_flavour, route_method, pattern, handler, module in _COMPILED:
        if route_method != method or (flavour is not None and route_flavour != flavour):
            continue
        if match := pattern.match(path):
            return route_flavour, handler, module, match
    return None


def _key(flavour: str, headers: dict, query: dict) -> str:
    if flavour == "azure":
        return headers.get(b"api-key", b"").decode()
    if flavour == "anthropic":
        return headers.get(b"x-api-key", b"").decode()
    if flavour == "gemini":
        return headers.get(b"x-goog-api-key", b"").decode() or (query.get("key") or [""])[0]
    return headers.get(b"authorization", b"").decode().removeprefix("Bearer ")


def _echo(key: str, knobs: dict) -> str | None:
    return echoed_key(key, knobs["echo_key"]) if knobs.get("echo_key") else None


async def _error(send, module, status: int, key: str, knobs: dict) -> None:
    body = module.error_body(status, key, _echo(key, knobs))
    extra = [(b"retry-after", str(knobs.get("retry_after", 1)).encode())] if status == 429 else []
    await send_json(send, status, body, extra=extra)


async def _not_found(send, path: str) -> None:
    await send_json(send, 404, {"error": {"message": f"Unknown request URL: {path}", "type": "invalid_request_error",
                                          "param": None, "code": "unknown_url"}})


async def _parse(receive, scope, send) -> dict | None:
    raw = await read_body(receive) if scope["method"] == "POST" else b""
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        await send_json(send, 400, openai.invalid("We could not parse the JSON body of your request.", None))
        return None
    if not isinstance(body, dict):
        await send_json(send, 400, openai.invalid("The body must be a JSON object.", None))
        return None
    return body


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    # An Abort propagates on purpose: uvicorn then drops the connection
    # mid-body, as when a provider's stream breaks.
    await _handle(scope, scope["path"], receive, send)


async def _handle(scope, path: str, receive, send) -> None:
    if path == "/_mock/stats":
        await send_json(send, 200, {"requests": dict(stats), "tokens": dict(served_tokens)})
        return
    if path == "/_mock/last":
        await send_json(send, 200, {"body": last_body[0] if last_body else None,
                                    "path": last_request.get("path"), "headers": last_request.get("headers")})
        return
    if path == "/_mock/reset":
        stats.clear()
        served_tokens.clear()
        await send_json(send, 200, b"{}")
        return
    if path == "/_mock/knobs":
        await _force(receive, send)
        return
    stats[path] += 1
    prefix_knobs, flavour, rest = split_path(path)
    headers = dict(scope["headers"])
    route = _route(scope["method"], rest, flavour, headers)
    body = await _parse(receive, scope, send)
    if body is None:
        return
    last_body[:] = [body]
    last_request.update(path=path + (f"?{scope['query_string'].decode()}" if scope.get("query_string") else ""),
                        headers={k.decode(): v.decode(errors="replace") for k, v in headers.items()
                                 if k not in CREDENTIAL_HEADERS})
    if route is None:
        await _not_found(send, path)
        return
    route_flavour, handler, module, match = route
    query = query_of(scope)
    key = _key(route_flavour, headers, query)
    try:
        knobs = knobs_for(prefix_knobs, headers, module.user_text(body) if body else "")
    except KnobError as exc:
        await send_json(send, 400, module.error_body(400, key, f"Mock knob: {exc}"))
        return
    if SETTINGS["required_key"] is not None and key != SETTINGS["required_key"]:
        await _error(send, module, 401, key, knobs)
        return
    if knobs.get("hang"):
        await asyncio.sleep(3600)
    if knobs.get("latency_ms"):
        await asyncio.sleep(knobs["latency_ms"] / 1000)
    if knobs.get("error"):
        await _error(send, module, knobs["error"], key, knobs)
        return
    error_event, error_message = b"", _echo(key, knobs) or "The server had an error processing your request."
    if knobs.get("error_after") is not None and hasattr(module, "stream_error"):
        error_event = module.stream_error(error_message)
    try:
        await handler(Request(scope["method"], rest, route_flavour, headers, query, body, knobs, send, match,
                              error_event, error_message))
    except KnobError as exc:  # raised by answers.answer, before the handler sends anything
        await send_json(send, 400, module.error_body(400, key, f"Mock knob: {exc}"))


async def _force(receive, send) -> None:
    forced = {name: value for name, value in orjson.loads(await read_body(receive) or b"{}").items()
              if name in KNOBS or name in TEXT_KNOBS}
    try:
        for name, value in forced.items():
            knob_value(name, value)
    except KnobError as exc:
        await send_json(send, 400, openai.invalid(f"Mock knob: {exc}", None))
        return
    FORCED.clear()
    FORCED.update(forced)
    await send_json(send, 200, FORCED)


def configure(require_key: str | None = None, **defaults) -> None:
    SETTINGS["required_key"] = require_key
    for name, value in defaults.items():
        if value is not None:
            DEFAULTS[name] = int(value)


def serve(host: str = "127.0.0.1", port: int = 8001, log_level: str = "warning", server: str = "uvicorn") -> None:
    if server == "granian":
        # Cheaper per chunk than uvicorn's Python protocol: bench/run.py's 10,000 slow streams are
        # 40,000 chunks a second, on the cores the gateway measured beside it needs.
        from granian.constants import HTTPModes, Interfaces, Loops
        from granian.server import Server

        Server("providers.mock_upstream:app", address=host, port=port, interface=Interfaces.ASGINL,
               loop=Loops.uvloop, http=HTTPModes.http1, websockets=False, backlog=4096, backpressure=65_536,
               log_level=log_level).serve()
        return
    import uvicorn  # only the server needs it; the mock's app is imported by tests too

    uvicorn.run(app, host=host, port=port, log_level=log_level, loop="uvloop", http="httptools",
                lifespan="off", access_log=False, backlog=4096)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Mock LLM upstream speaking every supported provider's format")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--require-key")
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    for knob in ("latency_ms", "chunks", "chunk_delay_ms"):
        parser.add_argument(f"--{knob.replace('_', '-')}", type=int,
                            default=os.environ.get(f"MOCK_{knob.upper()}"))
    opts = parser.parse_args(argv)
    configure(require_key=opts.require_key, latency_ms=opts.latency_ms, chunks=opts.chunks,
              chunk_delay_ms=opts.chunk_delay_ms)
    serve(opts.host, opts.port, server=opts.server)

