"""OpenAI and OpenAI-compatible servers: the gateway's own wire format, so
requests pass through with the model renamed and responses are relayed as is."""

import functools

import orjson

from . import redact
from .base import StreamEvent, UpstreamError, UpstreamRequest, Usage, mapped_error, stream_error, upstream_message

STREAM_FRAMING = "sse"
EMBEDDINGS = True
# The gateway's own fields on assistant messages in the history (base.py): OpenAI refuses
# message fields it does not know, and takes no reasoning back.
REASONING_FIELDS = ("reasoning_content", "reasoning_signature")


def headers(target, request_id: str) -> dict[str, str]:
    result = {"content-type": "application/json", "x-request-id": request_id}
    if target.api_key:
        result["authorization"] = f"Bearer {target.api_key}"
    result.update(target.extra_headers)
    return result


def without_reasoning(messages):
    """`messages` without the gateway's reasoning fields; the same list when none carries them,
    which is the common case and costs no copy."""
    if not isinstance(messages, list) or not any(
            isinstance(m, dict) and ("reasoning_content" in m or "reasoning_signature" in m) for m in messages):
        return messages
    return [{k: v for k, v in m.items() if k not in REASONING_FIELDS} if isinstance(m, dict) else m
            for m in messages]


def chat_payload(target, body: dict) -> bytes:
    payload = dict(body)
    payload["model"] = target.upstream_model
    if "messages" in payload:
        payload["messages"] = without_reasoning(payload["messages"])
    if payload.get("stream"):
        # Always ask for usage so the call can be billed; the relay strips the
        # usage chunk again when the client did not ask for it.
        options = dict(payload.get("stream_options") or {})
        options["include_usage"] = True
        payload["stream_options"] = options
    return orjson.dumps(payload)


def plain_payload(target, body: dict) -> bytes:
    payload = dict(body)
    payload["model"] = target.upstream_model
    return orjson.dumps(payload)


def chat_request(target, body: dict, request_id: str) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/chat/completions", headers(target, request_id),
                           chat_payload(target, body))


def completions_request(target, body: dict, request_id: str) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/completions", headers(target, request_id),
                           chat_payload(target, body))


def embeddings_request(target, body: dict, request_id: str) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/embeddings", headers(target, request_id), plain_payload(target, body))


def moderations_request(target, body: dict, request_id: str) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/moderations", headers(target, request_id), plain_payload(target, body))


def chat_response(target, body: dict, data: dict) -> None:
    _refuse_error_body(target, data)
    return None  # already OpenAI's shape: relayed as is


def embeddings_response(target, body: dict, data: dict) -> None:
    _refuse_error_body(target, data)
    return None


def _refuse_error_body(target, data) -> None:
    # Some OpenAI-compatible servers answer 200 with an error body; relayed as is,
    # it would carry whatever the server echoed (the key included).
    if isinstance(data, dict) and data.get("error") and "choices" not in data and "data" not in data:
        detail = redact.clean_or_withheld(upstream_message(orjson.dumps(data)), redact.secrets_of(target), 200)
        raise UpstreamError(502, f"Provider '{target.provider_name}' answered with an error: {detail}",
                            retryable=False, code="upstream_error")


def parse_usage(response: dict) -> Usage | None:
    """OpenAI's usage block as Usage. Besides OpenAI's own fields it reads what OpenAI-compatible
    servers report of prompt caching: prompt_tokens_details.cache_write_tokens (OpenRouter, and
    this gateway's own answers) and DeepSeek's prompt_cache_hit_tokens."""
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt_details = usage.get("prompt_tokens_details")
    prompt_details = prompt_details if isinstance(prompt_details, dict) else {}
    completion_details = usage.get("completion_tokens_details")
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=int(prompt_details.get("cached_tokens") or usage.get("prompt_cache_hit_tokens") or 0),
        cache_write_tokens=int(prompt_details.get("cache_write_tokens") or 0),
        reasoning_tokens=(int(completion_details.get("reasoning_tokens") or 0)
                          if isinstance(completion_details, dict) else 0),
    )


def stream_event(data: bytes, want_usage: bool, target) -> StreamEvent:
    # data.find(...) rather than `... in data`: bytes' `in` first tries its operand as an integer, and
    # CPython raises (and formats) a TypeError inside it before searching, on every test: twice the cost
    # of the search, several times per chunk.
    if data == b"[DONE]":
        return StreamEvent(forward=data, done=True)
    find = data.find
    if find(b'"error"') != -1:
        # Possibly the upstream's error event: never relayed as is (it may echo the key).
        _raise_stream_error(target, data)
    # Parsing every chunk costs more than the relay itself; only the chunks that
    # can carry usage are parsed.
    if find(b'"usage"') != -1 and find(b'"usage":null') == -1:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return StreamEvent(forward=data)
        usage = parse_usage(chunk)
        if usage is not None:
            usage_only = not chunk.get("choices")
            forward = data if (want_usage or not usage_only) else None
            return StreamEvent(forward=forward, usage=usage, has_content=not usage_only)
    if find(b'"choices":[]') != -1:
        # Azure opens with a chunk of prompt filter results and no choices; OpenAI
        # clients expect every chunk but the usage one to carry a choice.
        return StreamEvent(forward=None)
    return StreamEvent(forward=data, has_content=_has_content(data))


def chat_stream(target, body: dict, want_usage: bool):
    return functools.partial(stream_event, want_usage=want_usage, target=target)


def _has_content(data: bytes) -> bool:
    # Chat chunks carry "content", legacy completion chunks "text"; reasoning servers send
    # "reasoning_content" (DeepSeek, vLLM) or "reasoning" before the answer. (find, not `in`: see stream_event.)
    find = data.find
    return ((find(b'"content":"') != -1 and find(b'"content":""') == -1) or find(b'"tool_calls":[') != -1
            or (find(b'"text":"') != -1 and find(b'"text":""') == -1)
            or (find(b'"reasoning_content":"') != -1 and find(b'"reasoning_content":""') == -1)
            or (find(b'"reasoning":"') != -1 and find(b'"reasoning":""') == -1))


def verbatim_read(read: bytes) -> int | None:
    """For one network read of an OpenAI stream, whether it can go to an OpenAI client byte for byte,
    as `stream_event` would have written it event by event: the number of its events with content,
    or None when it must go event by event (an event cut across reads, other SSE fields, an error,
    usage, a chunk with no choice, `[DONE]`). Only a read's bytes are searched, none parsed: JSON
    holds no raw newline, so its newlines are the events' ends."""
    if not (read.startswith(b"data: {") and read.endswith(b"\n\n")) or b'"error"' in read \
            or b'"choices":[]' in read:
        return None
    events = read.count(b"\n\n")
    if read.count(b"\n") != 2 * events or (events > 1 and read.count(b"\n\ndata: {") != events - 1):
        return None
    if b'"usage"' in read and read.count(b'"usage"') != read.count(b'"usage":null'):
        return None
    if events == 1:
        return 1 if _has_content(read) else 0
    return sum(1 for data in read.split(b"\n\n", events - 1) if _has_content(data))


def _raise_stream_error(target, data: bytes) -> None:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if isinstance(chunk, dict) and chunk.get("error") and not chunk.get("choices"):
        raise stream_error(target, upstream_message(data))


# --- the Responses API, for deployments that speak it natively (routing/front/responses.py) ---

def responses_request(target, body: dict, request_id: str) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/responses", headers(target, request_id), plain_payload(target, body))


def responses_usage(response: dict) -> Usage | None:
    """Usage of a Responses API answer (input_tokens include cached ones, output_tokens reasoning ones)."""
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None
    cached = usage.get("input_tokens_details")
    reasoning = usage.get("output_tokens_details")
    return Usage(prompt_tokens=int(usage.get("input_tokens") or 0), completion_tokens=int(usage.get("output_tokens") or 0),
                 cached_tokens=int(cached.get("cached_tokens") or 0) if isinstance(cached, dict) else 0,
                 reasoning_tokens=int(reasoning.get("reasoning_tokens") or 0) if isinstance(reasoning, dict) else 0)


_RESPONSES_END = (b'"type":"response.completed"', b'"type":"response.incomplete"', b'"type":"response.failed"')
_RESPONSES_CONTENT = (b'"type":"response.output_text.delta"', b'"type":"response.function_call_arguments.delta"',
                      b'"type":"response.refusal.delta"', b'"type":"response.reasoning_summary_text.delta"',
                      b'"type":"response.custom_tool_call_input.delta"')


def responses_event(data: bytes, target) -> StreamEvent:
    """One event of a native Responses stream, relayed as it is; its last event parsed for the usage."""
    if b'"type":"error"' in data:
        raise stream_error(target, upstream_message(data))
    if any(end in data for end in _RESPONSES_END):
        event = orjson.loads(data)
        return StreamEvent(forward=data, usage=responses_usage(event.get("response") or {}), done=True,
                           chunks=[event])
    return StreamEvent(forward=data, has_content=any(kind in data for kind in _RESPONSES_CONTENT))


def responses_stream(target):
    return functools.partial(responses_event, target=target)


def models_request(target) -> UpstreamRequest:
    return UpstreamRequest(f"{target.base_url}/models", headers(target, "connection-test"), None, method="GET")


def parse_models(data: dict) -> list[str]:
    return [m["id"] for m in data.get("data") or () if isinstance(m, dict) and "id" in m]


map_error = mapped_error
