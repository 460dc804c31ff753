"""A mock LLM provider speaking OpenAI's wire format, for tests, the demo and benchmarks.

A bare ASGI app (no framework: benchmarks measure the gateway against it, so
it must cost little). Endpoints: POST /v1/chat/completions (JSON and SSE),
POST /v1/embeddings (float and base64), GET /v1/models, plus GET /_mock/stats
(requests served per path) and POST /_mock/reset.

Knobs, each optional; later sources override earlier ones:
  1. server defaults: `--latency-ms` etc. or MOCK_LATENCY_MS, MOCK_CHUNKS, ...
  2. a path prefix on the base URL: /knobs/latency_ms=50,error=503/v1/...
  3. request headers: x-mock-latency-ms: 50, x-mock-error: 503, ...
  4. a directive in the last user message: [[mock chunks=5 cut_after=2]]
Knob names:
  latency_ms      delay before the response starts
  chunks          content chunks (= completion tokens) in an answer (default 20)
  chunk_delay_ms  delay between stream chunks
  error           answer with this HTTP status and an OpenAI error body
  retry_after     Retry-After seconds sent with error=429 (default 1)
  cut_after       stream: break the connection after this many content chunks
                  (0: right after the headers, before any data)
  no_usage        1: never report usage, even when asked
  hang            1: never answer

    python -m providers.mock_upstream --port 8001
"""

import argparse
import asyncio
import base64
import hashlib
import math
import os
import re
import struct
import time
from collections import Counter

import orjson

KNOBS = ("latency_ms", "chunks", "chunk_delay_ms", "error", "retry_after", "cut_after", "no_usage", "hang")
DEFAULTS: dict[str, int] = {"chunks": 20, "retry_after": 1}
REQUIRED_KEY: str | None = None
MODELS = ("mock-gpt", "mock-gpt-large", "mock-embed")
WORDS = ("mock", "reply", "from", "the", "gateway", "test", "upstream", "with", "some", "words")
_DIRECTIVE = re.compile(rb"\[\[mock ([^\]]*)\]\]")

stats: Counter = Counter()

ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_value", "Mock upstream rejected the request."),
    401: ("invalid_request_error", "invalid_api_key",
          "Incorrect API key provided: sk-prov***456. You can find your API key at the mock dashboard."),
    403: ("permission_error", "forbidden", "Mock upstream forbids this."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached for requests."),
}


class Abort(Exception):
    """Raised mid-stream to make the server drop the connection (cut_after)."""


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _parse_pairs(text: str, sep: str) -> dict[str, int]:
    knobs = {}
    for pair in text.split(sep):
        name, _, value = pair.partition("=")
        if name.strip() in KNOBS:
            knobs[name.strip()] = _int(value)
    return knobs


def _knobs(path: str, headers: list, body: dict | None) -> dict[str, int]:
    knobs = dict(DEFAULTS)
    if path.startswith("/knobs/"):
        knobs.update(_parse_pairs(path.split("/", 3)[2], ","))
    for name, value in headers:
        if name.startswith(b"x-mock-"):
            knob = name[7:].decode().replace("-", "_")
            if knob in KNOBS:
                knobs[knob] = _int(value.decode())
    if body:
        text = _last_user_text(body).encode()
        if match := _DIRECTIVE.search(text):
            knobs.update(_parse_pairs(match.group(1).decode(), " "))
    return knobs


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def prompt_tokens(messages: list) -> int:
    """Deterministic: words in every message plus 3 per message."""
    return sum(3 + len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))


def _error_body(status: int) -> bytes:
    kind, code, message = ERROR_TYPES.get(status, ("server_error", "server_error", "The mock upstream failed."))
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


async def _send(send, status: int, body: bytes, content_type: bytes = b"application/json", extra=()) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Abort
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _invalid(message: str, param: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                   "code": "invalid_value"}})


def _completion_words(knobs: dict, body: dict) -> list[str]:
    count = max(0, knobs["chunks"])
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < count:
        count = limit
    return [WORDS[i % len(WORDS)] for i in range(count)]


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


async def chat(body: dict, knobs: dict, send) -> None:
    messages = body.get("messages")
    if not isinstance(body.get("model"), str) or not isinstance(messages, list) or not messages:
        await _send(send, 400, _invalid("'model' and a non-empty 'messages' are required.", "messages"))
        return
    words = _completion_words(knobs, body)
    truncated = len(words) < max(0, knobs["chunks"])
    finish = "length" if truncated else "stop"
    prompt = prompt_tokens(messages)
    cid = f"chatcmpl-mock{int(time.time() * 1e6)}"
    created = int(time.time())
    model = body["model"]
    if not body.get("stream"):
        text = " ".join(words)
        answer = {
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
        }
        if not knobs.get("no_usage"):
            answer["usage"] = _usage(prompt, len(words))
        await _send(send, 200, orjson.dumps(answer))
        return
    await _stream(send, body, knobs, words, finish, prompt, cid, created, model)


async def _stream(send, body, knobs, words, finish, prompt, cid, created, model) -> None:
    want_usage = bool((body.get("stream_options") or {}).get("include_usage")) and not knobs.get("no_usage")
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock"}
    if want_usage:
        base["usage"] = None

    def event(delta: dict, finish_reason=None) -> bytes:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})

    async def emit(data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    delay = knobs.get("chunk_delay_ms", 0) / 1000
    cut_after = knobs.get("cut_after")
    if cut_after == 0:
        raise Abort
    await emit(event({"role": "assistant", "content": "", "refusal": None}))
    for i, word in enumerate(words):
        if cut_after is not None and i >= cut_after:
            raise Abort
        if delay:
            await asyncio.sleep(delay)
        await emit(event({"content": word if i == 0 else " " + word}))
    await emit(event({}, finish))
    if want_usage:
        await emit(b"data: " + orjson.dumps({**base, "choices": [], "usage": _usage(prompt, len(words))}) + b"\n\n")
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def _vector(seed: bytes, dims: int) -> list[float]:
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        digest = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        out.extend(b / 127.5 - 1.0 for b in digest)
        counter += 1
    out = out[:dims]
    norm = math.sqrt(sum(v * v for v in out)) or 1.0
    return [v / norm for v in out]


def _embedding_inputs(value) -> list | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [value]
        if all(isinstance(v, (str, list)) for v in value):
            return value
    return None


async def embeddings(body: dict, knobs: dict, send) -> None:
    inputs = _embedding_inputs(body.get("input"))
    if not isinstance(body.get("model"), str) or inputs is None:
        await _send(send, 400, _invalid("'model' and a non-empty 'input' are required.", "input"))
        return
    dims = body.get("dimensions") or 1536
    as_base64 = body.get("encoding_format") == "base64"
    data, tokens = [], 0
    for index, item in enumerate(inputs):
        vector = _vector(orjson.dumps(item), dims)
        tokens += len(item) if isinstance(item, list) else max(1, len(item.split()))
        embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    answer = {"object": "list", "data": data, "model": body["model"]}
    if not knobs.get("no_usage"):
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    await _send(send, 200, orjson.dumps(answer))


_MODELS_BODY = orjson.dumps({"object": "list", "data": [
    {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "mock"} for m in MODELS]})


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    try:
        await _handle(scope, path, receive, send)
    except Abort:
        # Propagating makes uvicorn drop the connection mid-body: the client
        # sees a truncated chunked response, as when a provider's stream breaks.
        raise


async def _handle(scope, path: str, receive, send) -> None:
    if path == "/_mock/stats":
        await _send(send, 200, orjson.dumps({"requests": dict(stats)}))
        return
    if path == "/_mock/reset":
        stats.clear()
        await _send(send, 200, b"{}")
        return
    stats[path] += 1
    endpoint = path.split("/v1/", 1)[1] if "/v1/" in path else ""
    raw = await _read_body(receive) if scope["method"] == "POST" else b""
    body = None
    if raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await _send(send, 400, _invalid("We could not parse the JSON body of your request.", None))
            return
        if not isinstance(body, dict):
            await _send(send, 400, _invalid("The body must be a JSON object.", None))
            return
    knobs = _knobs(path, scope["headers"], body)
    if REQUIRED_KEY is not None:
        auth = dict(scope["headers"]).get(b"authorization", b"")
        if auth != b"Bearer " + REQUIRED_KEY.encode():
            await _send(send, 401, _error_body(401))
            return
    if knobs.get("hang"):
        await asyncio.sleep(3600)
    if knobs.get("latency_ms"):
        await asyncio.sleep(knobs["latency_ms"] / 1000)
    if knobs.get("error"):
        status = knobs["error"]
        extra = [(b"retry-after", str(knobs.get("retry_after", 1)).encode())] if status == 429 else []
        await _send(send, status, _error_body(status), extra=extra)
        return
    if endpoint == "models" and scope["method"] == "GET":
        await _send(send, 200, _MODELS_BODY)
    elif endpoint == "chat/completions" and scope["method"] == "POST":
        await chat(body or {}, knobs, send)
    elif endpoint == "embeddings" and scope["method"] == "POST":
        await embeddings(body or {}, knobs, send)
    else:
        await _send(send, 404, orjson.dumps({"error": {"message": f"Unknown request URL: {path}",
                                                        "type": "invalid_request_error", "param": None,
                                                        "code": "unknown_url"}}))


def configure(**defaults) -> None:
    for name, value in defaults.items():
        if value is not None:
            DEFAULTS[name] = int(value)


def serve(host: str = "127.0.0.1", port: int = 8001, log_level: str = "warning") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, loop="uvloop", http="httptools",
                lifespan="off", access_log=False)


def main(argv=None) -> None:
    global REQUIRED_KEY
    parser = argparse.ArgumentParser(description="Mock OpenAI-compatible upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--require-key")
    for knob in ("latency_ms", "chunks", "chunk_delay_ms"):
        parser.add_argument(f"--{knob.replace('_', '-')}", type=int,
                            default=os.environ.get(f"MOCK_{knob.upper()}"))
    opts = parser.parse_args(argv)
    configure(latency_ms=opts.latency_ms, chunks=opts.chunks, chunk_delay_ms=opts.chunk_delay_ms)
    REQUIRED_KEY = opts.require_key
    serve(opts.host, opts.port)


if __name__ == "__main__":
    main()
