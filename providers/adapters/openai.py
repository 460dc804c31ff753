"""OpenAI and OpenAI-compatible servers: the gateway's own wire format, so
requests pass through with the model renamed and responses are relayed as is."""

import orjson

from .base import (
    StreamEvent,
    UpstreamError,
    UpstreamRequest,
    Usage,
    error_for_status,
    retry_after_seconds,
    scrub,
    upstream_message,
)


def _headers(target, request_id: str) -> dict[str, str]:
    headers = {"content-type": "application/json", "x-request-id": request_id}
    if target.api_key:
        headers["authorization"] = f"Bearer {target.api_key}"
    headers.update(target.extra_headers)
    return headers


def chat_request(target, body: dict, request_id: str) -> UpstreamRequest:
    payload = dict(body)
    payload["model"] = target.upstream_model
    if payload.get("stream"):
        # Always ask for usage so the call can be billed; the relay strips the
        # usage chunk again when the client did not ask for it.
        options = dict(payload.get("stream_options") or {})
        options["include_usage"] = True
        payload["stream_options"] = options
    return UpstreamRequest(f"{target.base_url}/chat/completions", _headers(target, request_id), orjson.dumps(payload))


def embeddings_request(target, body: dict, request_id: str) -> UpstreamRequest:
    payload = dict(body)
    payload["model"] = target.upstream_model
    return UpstreamRequest(f"{target.base_url}/embeddings", _headers(target, request_id), orjson.dumps(payload))


def parse_usage(response: dict) -> Usage | None:
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
    )


def stream_event(data: bytes, want_usage: bool) -> StreamEvent:
    if data == b"[DONE]":
        return StreamEvent(forward=data, done=True)
    # Parsing every chunk costs more than the relay itself; only the chunks that
    # can carry usage are parsed.
    if b'"usage"' in data and b'"usage":null' not in data:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return StreamEvent(forward=data)
        usage = parse_usage(chunk)
        if usage is not None:
            usage_only = not chunk.get("choices")
            forward = data if (want_usage or not usage_only) else None
            return StreamEvent(forward=forward, usage=usage, has_content=not usage_only)
    return StreamEvent(forward=data, has_content=b'"content":"' in data and b'"content":""' not in data)


def map_error(target, status: int, body: bytes, headers) -> UpstreamError:
    message = scrub(upstream_message(body), target.api_key)
    return error_for_status(target.provider_name, status, message, retry_after_seconds(headers))
