"""The contract every provider adapter keeps, and the one error type they raise.

An adapter module provides:
  STREAM_FRAMING                       "sse" or "ndjson": how the upstream frames a stream
  EMBEDDINGS                           whether the kind offers embeddings
  chat_request(target, body, request_id) -> UpstreamRequest
  chat_response(target, body, data) -> dict | None
      the OpenAI chat.completion for the upstream's answer; None when the
      upstream's own body already is one (it is then relayed byte for byte)
  chat_stream(target, body, want_usage) -> (data: bytes) -> StreamEvent
      a translator for one stream, fed each upstream event's payload in order
  embeddings_request(target, body, request_id) -> UpstreamRequest
  embeddings_response(target, body, data) -> dict | None   (as chat_response)
  parse_usage(data: dict) -> Usage | None     from the upstream's own body
  map_error(target, status, body, headers) -> UpstreamError
      its message cleaned of every form of the target's credentials (redact.py);
      a stream translator raises `stream_error` for the upstream's error event,
      never relaying the upstream's own text
  models_request(target) -> UpstreamRequest;  parse_models(data) -> list[str]
and, where the upstream has OpenAI's legacy text completions natively,
  completions_request(target, body, request_id) -> UpstreamRequest
Requests and responses on the gateway's side are always OpenAI-shaped. A
parameter the upstream cannot honour is refused with a 400 naming it.

Reasoning, the same on every kind:
  request  `reasoning_effort`: none, minimal, low, medium, high or xhigh (OpenAI's values).
           Pass-through kinds send it as is; the others translate it (providers.md has the
           table, openai_format.BUDGETS the token budgets); Hugging Face refuses it.
  answer   the assistant message's `reasoning_content` (the thinking text, as DeepSeek and vLLM
           name it) and `reasoning_signature` (opaque: what the provider needs back in a later
           turn, Anthropic's thinking signature or Gemini's thoughtSignature), each left out
           when the provider gave none. Stream deltas carry `reasoning_content` pieces and
           `reasoning_signature` once it is known. Pass-through kinds relay what the upstream
           sends (`reasoning_content`, or `reasoning`, depending on the server).
  history  an assistant message carrying those two fields is sent back as its provider takes
           reasoning (Anthropic a signed thinking block, Gemini the thoughtSignature on its part,
           Cohere and Ollama the text); kinds that take none back, OpenAI's included, get the
           message without them.
Reasoning tokens are counted in Usage.reasoning_tokens as the provider reports them apart
(OpenAI's kinds, Gemini); Anthropic, Cohere and Ollama count thinking in their output tokens
only, so there it is the tokenizer's count of the reasoning text they returned, at most
completion_tokens (openai_format.count_reasoning), and 0 when they returned none.

Usage, the same on every kind (each adapter's parse_usage and stream translator convert to it):
  prompt_tokens          every input token, OpenAI's way: uncached + cache reads + cache writes
  cached_tokens          of those, read from the provider's prompt cache
  cache_write_tokens     of those, written to it (Anthropic's cache_creation_input_tokens)
  cache_write_1h_tokens  of the written ones, those with the 1-hour lifetime (the rest: 5 minutes)
  completion_tokens      every output token, reasoning included
  reasoning_tokens       of those, the reasoning ones (reported, or counted from the reasoning text)
Each class has its own price (providers.targets.Target.usage_cost).
"""

from dataclasses import dataclass

import orjson

from gateway_project.lib.errors import GatewayError

from . import redact

# Above any real call's tokens, below PostgreSQL's bigint and orjson's 64-bit integers.
MAX_TOKENS_COUNTED = 2**53


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes | None
    method: str = "POST"


@dataclass(slots=True)
class Usage:
    # OpenAI's accounting: prompt_tokens include cache reads and writes, completion_tokens
    # include reasoning ones (the module's docstring has the table). Adapters convert to it.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    def __post_init__(self) -> None:
        # A count no provider could mean (1e30 in a JSON answer, made an int by an adapter) is a
        # malformed answer (ValueError: upstream.decode's 502), not a row the ledger cannot hold.
        if max(self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.reasoning_tokens,
               self.cache_write_tokens, self.cache_write_1h_tokens) >= MAX_TOKENS_COUNTED:
            raise ValueError("token count out of range")

    @property
    def input_tokens(self) -> int:
        """The input tokens neither read from nor written to a cache (Anthropic's input_tokens)."""
        return max(0, self.prompt_tokens - self.cached_tokens - self.cache_write_tokens)

    @property
    def cache_write_5m_tokens(self) -> int:
        return max(0, self.cache_write_tokens - self.cache_write_1h_tokens)


@dataclass(slots=True)
class StreamEvent:
    # The upstream's OpenAI-shaped `data:` payload, relayed verbatim (pass-through
    # adapters), or None to drop it.
    forward: bytes | None
    usage: Usage | None = None
    has_content: bool = False
    done: bool = False
    # Translating adapters give OpenAI chunk objects instead of `forward`.
    chunks: list[dict] | None = None

    def chunk_objects(self) -> list[dict]:
        """The event's OpenAI chunks as objects, a pass-through payload parsed (for a front that rewrites them)."""
        if self.forward is not None:
            return [] if self.forward == b"[DONE]" else [orjson.loads(self.forward)]
        return self.chunks or []


class UpstreamError(GatewayError):
    """An upstream call failed. `retryable` says whether another attempt could help."""

    def __init__(self, status: int, message: str, *, retryable: bool, retry_after: float | None = None,
                 code: str = "upstream_error", type: str = "upstream_error") -> None:
        headers = {"retry-after": str(max(1, round(retry_after)))} if retry_after else None
        super().__init__(status, message, type=type, code=code, headers=headers)
        self.retryable = retryable
        self.retry_after = retry_after


def request_headers(target, request_id: str, *, key_header: str = "authorization", key_prefix: str = "Bearer ",
                    id_header: str = "x-request-id", more: dict[str, str] | None = None) -> dict[str, str]:
    """An upstream call's headers: JSON, the call's id, the provider key in the header its API reads
    (none without a key), then the provider's own extra headers, which may override any of them."""
    headers = {"content-type": "application/json", **(more or {}), id_header: request_id}
    if target.api_key:
        headers[key_header] = key_prefix + target.api_key
    headers.update(target.extra_headers)
    return headers


def stream_error(target, text: str, status: int | str = "mid-stream") -> UpstreamError:
    """What the client gets for an error event inside an upstream's stream, the key never in it."""
    detail = redact.clean_or_withheld(text, redact.secrets_of(target), status)
    return UpstreamError(502, f"Provider '{target.provider_name}' failed mid-stream: {detail}",
                         retryable=False, code="upstream_error")


def without_secrets(error: GatewayError, target) -> GatewayError:
    """`error` itself, or a copy with its message withheld should it hold one of target's secrets.
    For the choke points (the stream relay), behind the adapters' own scrubbing."""
    if not redact.holds(error.message, redact.secrets_of(target)):
        return error
    return UpstreamError(error.status, f"Provider '{target.provider_name}' failed: "
                                       f"{redact.withheld(error.status)}", retryable=False, code=error.code)


def upstream_message(body: bytes) -> str:
    """The human message out of an upstream error body, whatever its shape."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace").strip()
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)
        return str(err)
    return str(data)


def retry_after_seconds(headers) -> float | None:
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def error_for_status(provider: str, status: int, message: str, retry_after: float | None) -> UpstreamError:
    """Map an upstream HTTP failure to what the client sees, the same for every provider.

    Only the request's own faults (400, 413, 422) reach the client as such;
    the provider refusing the gateway's key or not knowing its model is the
    gateway's configuration at fault, so those are 502s another deployment
    may not share (retryable).
    """
    if status in (400, 413, 422):
        # The request itself is at fault: another provider would refuse it too.
        return UpstreamError(400 if status == 422 else status,
                             f"Provider '{provider}' rejected the request: {message}",
                             retryable=False, code="upstream_bad_request", type="invalid_request_error")
    if status == 401:
        return UpstreamError(502, f"Provider '{provider}' rejected the gateway's credentials.",
                             retryable=True, code="upstream_auth_failed")
    if status == 403:
        return UpstreamError(502, f"Provider '{provider}' refused the gateway access: {message}",
                             retryable=True, code="upstream_forbidden")
    if status == 404:
        return UpstreamError(502, f"Provider '{provider}' does not know the model or endpoint: {message}",
                             retryable=True, code="upstream_not_found")
    if status == 429:
        return UpstreamError(429, f"Provider '{provider}' is rate limiting requests; retry later.",
                             retryable=True, retry_after=retry_after, code="upstream_rate_limited",
                             type="rate_limit_error")
    return UpstreamError(502, f"Provider '{provider}' failed with status {status}: {message}",
                         retryable=True, code="upstream_error")


def mapped_error(target, status: int, body: bytes, headers) -> UpstreamError:
    """map_error for every kind whose error bodies `upstream_message` can read."""
    message = redact.clean_or_withheld(upstream_message(body), redact.secrets_of(target), status)
    return error_for_status(target.provider_name, status, message, retry_after_seconds(headers))
