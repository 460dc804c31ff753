"""Calling upstream deployments: one pooled client per process, fallback in order.

aiohttp rather than httpx's own transport: on these machines httpx costs about
2.5 ms of CPU per proxied call against 0.2-0.5 ms for aiohttp (DESIGN.md).
"""

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import orjson
from django.conf import settings

from providers import adapters
from providers.adapters.base import StreamEvent, UpstreamError, UpstreamRequest

from .table import Target

_session: aiohttp.ClientSession | None = None


def session() -> aiohttp.ClientSession:
    global _session
    if _session is None or _session.closed:
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.GATEWAY_UPSTREAM_POOL_SIZE, limit_per_host=0, ttl_dns_cache=300
            ),
            timeout=aiohttp.ClientTimeout(
                total=settings.GATEWAY_UPSTREAM_TOTAL_TIMEOUT,
                sock_connect=settings.GATEWAY_UPSTREAM_CONNECT_TIMEOUT,
                sock_read=settings.GATEWAY_UPSTREAM_READ_TIMEOUT,
            ),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
            # Upstreams must not set cookies that leak between tenants.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
    return _session


async def close() -> None:
    if _session is not None and not _session.closed:
        await _session.close()


@dataclass(slots=True)
class Attempt:
    target: Target
    response: aiohttp.ClientResponse
    attempts: int
    started: float


BuildRequest = Callable[[object, Target], UpstreamRequest]


async def open_call(targets: list[Target], build: BuildRequest) -> Attempt:
    """POST to the first target that accepts the call; fall back on retryable failures.

    Returns with the response headers read and the body unread, so that a stream
    can be relayed as it arrives. Nothing has reached the client yet, which is
    what makes falling back safe.
    """
    last_error: UpstreamError | None = None
    for attempt, target in enumerate(targets, start=1):
        adapter = adapters.for_kind(target.kind)
        request = build(adapter, target)
        started = time.perf_counter()
        try:
            response = await session().request(request.method, request.url, data=request.body,
                                               headers=request.headers)
        except TimeoutError:
            last_error = UpstreamError(
                504, f"Provider '{target.provider_name}' did not answer in time.",
                retryable=True, code="upstream_timeout",
            )
            continue
        except aiohttp.ClientError:
            last_error = UpstreamError(
                502, f"Could not reach provider '{target.provider_name}'.", retryable=True
            )
            continue
        if response.status >= 400:
            try:
                body = await response.read()
            except (TimeoutError, aiohttp.ClientError):
                body = b""
            response.release()
            last_error = adapter.map_error(target, response.status, body, response.headers)
            if not last_error.retryable:
                raise last_error
            continue
        return Attempt(target, response, attempt, started)
    assert last_error is not None, "open_call needs at least one target"
    raise last_error


async def read_json(attempt: Attempt, allow_list: bool = False) -> tuple[bytes, dict | list]:
    try:
        body = await attempt.response.read()
    except TimeoutError as exc:
        raise UpstreamError(504, f"Provider '{attempt.target.provider_name}' timed out mid-response.",
                            retryable=False, code="upstream_timeout") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(502, f"Provider '{attempt.target.provider_name}' broke off its response.",
                            retryable=False) from exc
    finally:
        attempt.response.release()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(502, f"Provider '{attempt.target.provider_name}' sent a malformed response.",
                            retryable=False) from exc
    if not isinstance(data, dict) and not (allow_list and isinstance(data, list)):
        raise UpstreamError(502, f"Provider '{attempt.target.provider_name}' sent a malformed response.",
                            retryable=False)
    return body, data


async def stream_events(attempt: Attempt, translate: Callable[[bytes], StreamEvent]) -> AsyncIterator[StreamEvent]:
    """The upstream stream's events, translated, as they arrive (never buffered whole)."""
    framing = adapters.for_kind(attempt.target.kind).STREAM_FRAMING
    payloads = _ndjson_lines(attempt) if framing == "ndjson" else _sse_data(attempt)
    async for data in payloads:
        try:
            yield translate(data)
        except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError) as exc:
            raise UpstreamError(502, f"Provider '{attempt.target.provider_name}' sent a malformed stream event.",
                                retryable=False, code="upstream_error") from exc


async def _sse_data(attempt: Attempt) -> AsyncIterator[bytes]:
    buffer = b""
    async for chunk in attempt.response.content.iter_any():
        buffer += chunk
        if b"\r\n" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        while (end := buffer.find(b"\n\n")) != -1:
            block, buffer = buffer[:end], buffer[end + 2 :]
            data = _data_of(block)
            if data is not None:
                yield data


async def _ndjson_lines(attempt: Attempt) -> AsyncIterator[bytes]:
    buffer = b""
    async for chunk in attempt.response.content.iter_any():
        buffer += chunk
        while (end := buffer.find(b"\n")) != -1:
            line, buffer = buffer[:end].strip(), buffer[end + 1 :]
            if line:
                yield line
    if buffer.strip():
        yield buffer.strip()


def _data_of(block: bytes) -> bytes | None:
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]
    lines = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None
