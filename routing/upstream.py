"""Calling upstream deployments: one pooled client per process, fallback in order.

aiohttp rather than httpx's own transport: on these machines httpx costs about
2.5 ms of CPU per proxied call against 0.2-0.5 ms for aiohttp (DESIGN.md).
"""

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import orjson
from django.conf import settings

from gateway_project.lib import metrics
from gateway_project.lib.settings_cache import conf
from providers import adapters, netguard
from providers.adapters.base import StreamEvent, UpstreamError, UpstreamRequest
from providers.targets import Target

from . import breakers, stats

_sessions: dict[bool, aiohttp.ClientSession] = {}
# Request bodies shorter than this are copied to their exact size before they are sent (see `_try`).
COMPACT_BELOW = 65536


def session(allow_private_network: bool = False) -> aiohttp.ClientSession:
    """The pooled client: one for providers that may only reach public addresses
    (its resolver refuses private ones, see providers/netguard.py), one for those
    staff allowed onto private networks."""
    existing = _sessions.get(allow_private_network)
    if existing is None or existing.closed:
        existing = _sessions[allow_private_network] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.GATEWAY_UPSTREAM_POOL_SIZE, limit_per_host=0, ttl_dns_cache=300,
                resolver=None if allow_private_network else netguard.PublicOnlyResolver(),
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
    return existing


async def close() -> None:
    for existing in _sessions.values():
        if not existing.closed:
            await existing.close()


@dataclass(slots=True)
class Attempt:
    target: Target
    response: aiohttp.ClientResponse
    attempts: int
    started: float
    first_chunk: bytes = b""
    hedge_loser: Target | None = None
    released: bool = False
    deadline: "ReadDeadline | None" = None

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self.deadline is not None:
                self.deadline.watched.discard(self.deadline)
            self.response.release()
            stats.finished(self.target.deployment_id)


class ReadDeadline:
    """A stream's read timeout (`sock_read`) kept by the relay instead of by aiohttp.

    aiohttp cancels and re-arms a timer on every network read: at 10,000 open streams, 40,000
    timers a second, 4% of the worker's CPU. A relay that reads the body itself takes the
    timeout over (`read_deadline`): it sets `waiting_since` when it starts waiting for a read and
    clears it (inf) when the read came, and one watchdog per event loop looks over the open
    streams every WATCH_TICK seconds and fails a stream whose upstream was silent for longer than
    its timeout with the error aiohttp's timer raises (`upstream_stream_cut` in the stream). A
    stall is noticed up to WATCH_TICK seconds later than aiohttp would; the time the relay spends
    sending to a slow client is not counted as the upstream's silence."""

    __slots__ = ("content", "timeout", "waiting_since", "watched")

    def __init__(self, content: aiohttp.StreamReader, timeout: float, watched: set) -> None:
        self.content, self.timeout, self.waiting_since, self.watched = content, timeout, math.inf, watched


WATCH_TICK = 0.5
# Per event loop: the streams whose read timeout the relay keeps, and the watchdog looking over them.
_watched: dict[asyncio.AbstractEventLoop, set[ReadDeadline]] = {}
_watchdogs: set[asyncio.Task] = set()


def read_deadline(attempt: Attempt) -> ReadDeadline | None:
    """Take the stream's read timeout over from aiohttp; the caller sets `.last` after each read.
    None when there is none to take (no timeout, or the body is read whole already)."""
    connection = getattr(attempt.response, "connection", None)  # a replay or a test's stand-in has none
    protocol = connection.protocol if connection is not None else None
    if protocol is None or not protocol.read_timeout:
        return None
    loop = asyncio.get_running_loop()
    watched = _watched.get(loop)
    if watched is None:
        watched = _watched[loop] = set()
        watchdog = loop.create_task(_watch(loop, watched))
        _watchdogs.add(watchdog)  # held: the loop keeps only a weak reference to a task
        watchdog.add_done_callback(_watchdogs.discard)
    deadline = ReadDeadline(attempt.response.content, protocol.read_timeout, watched)
    # The timer armed by the last read still runs (and fires if no read comes); the next read
    # cancels it and, with no timeout left, arms none.
    protocol.read_timeout = None
    attempt.deadline = deadline
    watched.add(deadline)
    return deadline


async def _watch(loop: asyncio.AbstractEventLoop, watched: set[ReadDeadline]) -> None:
    try:
        while watched:
            await asyncio.sleep(WATCH_TICK)
            now = time.monotonic()
            for deadline in [d for d in watched if now - d.waiting_since > d.timeout]:
                watched.discard(deadline)
                deadline.content.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))
    finally:
        del _watched[loop]


BuildRequest = Callable[[object, Target], UpstreamRequest]


class RetryBudget:
    """Retries allowed per process: RETRY_BUDGET_RATIO of recent calls plus a floor,
    over a ten-second window, so that an outage is not multiplied by retries."""

    def __init__(self) -> None:
        self.calls: deque[float] = deque()
        self.retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        for window in (self.calls, self.retries):
            while window and window[0] < now - 10:
                window.popleft()

    def call(self) -> None:
        self.calls.append(time.monotonic())

    def allow_retry(self) -> bool:
        now = time.monotonic()
        self._trim(now)
        if len(self.retries) >= conf.RETRY_BUDGET_FLOOR + conf.RETRY_BUDGET_RATIO * len(self.calls):
            return False
        self.retries.append(now)
        return True


budget = RetryBudget()


def _timeout(target: Target) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=target.total_timeout or conf.GATEWAY_UPSTREAM_TOTAL_TIMEOUT,
        sock_connect=target.connect_timeout or conf.GATEWAY_UPSTREAM_CONNECT_TIMEOUT,
        sock_read=target.first_byte_timeout or conf.GATEWAY_UPSTREAM_READ_TIMEOUT,
    )


async def _try(target: Target, build: BuildRequest, stream: bool, attempt_no: int) -> Attempt:
    """One call to one deployment, up to its headers (and, for a stream, its first bytes)."""
    if target.misconfigured:
        raise UpstreamError(502, f"Provider '{target.provider_name}' is misconfigured. {target.misconfigured}",
                            retryable=True, code="upstream_misconfigured")
    adapter = adapters.for_kind(target.kind)
    request = build(adapter, target)
    private = target.allow_private_network
    if not private and not netguard.literal_allowed(_host(request.url)):
        raise _refused(target)
    body = request.body
    if type(body) is bytes and len(body) < COMPACT_BELOW:
        # orjson's output keeps its 4 KiB working buffer, and aiohttp holds the body as long as the
        # response: an exact-size copy is 4 KiB less per open stream (docs/benchmarks.md).
        body = bytes(memoryview(body))
    started = time.perf_counter()
    stats.started(target.deployment_id)
    try:
        # Never a redirect: it could lead anywhere, private networks included.
        response = await session(private).request(request.method, request.url, data=body,
                                                  headers=request.headers, timeout=_timeout(target),
                                                  allow_redirects=False)
    except TimeoutError:
        stats.finished(target.deployment_id)
        raise UpstreamError(504, f"Provider '{target.provider_name}' did not answer in time.",
                            retryable=True, code="upstream_timeout") from None
    except aiohttp.ClientError as exc:
        stats.finished(target.deployment_id)
        if isinstance(getattr(exc, "os_error", None), netguard.UnsafeAddress):
            raise _refused(target) from None
        raise UpstreamError(502, f"Could not reach provider '{target.provider_name}'.", retryable=True) from None
    attempt = Attempt(target, response, attempt_no, started)
    if response.status >= 300:  # redirects are not followed: they count as failures
        try:
            body = await response.read()
        except (TimeoutError, aiohttp.ClientError):
            body = b""
        attempt.release()
        raise adapter.map_error(target, response.status, body, response.headers)
    if stream:
        # Nothing has reached the client yet: a stream that breaks before its
        # first bytes can still be retried elsewhere.
        try:
            attempt.first_chunk = await response.content.readany()
        except (TimeoutError, aiohttp.ClientError):
            attempt.first_chunk = b""
        if not attempt.first_chunk:
            attempt.release()
            raise UpstreamError(502, f"Provider '{target.provider_name}' ended the stream before any data.",
                                retryable=True, code="upstream_stream_cut")
    return attempt


def _host(url: str) -> str:
    rest = url.split("://", 1)[-1]
    authority = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if authority.startswith("["):
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def _refused(target: Target) -> UpstreamError:
    return UpstreamError(502, f"Provider '{target.provider_name}' points at a private or reserved network address, "
                              "which this provider may not call. " + netguard.HOW_TO_ALLOW, retryable=True, code="upstream_address_refused")


def _schedule(targets: list[Target], max_attempts: int) -> list[Target]:
    """The targets in order, cycled when there are fewer than max_attempts."""
    return [targets[i % len(targets)] for i in range(max(max_attempts, 1))] if targets else []


def _backoff(retry_no: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the upstream's Retry-After."""
    ceiling = min(settings.RETRY_BACKOFF_MAX, settings.RETRY_BACKOFF_BASE * 2 ** (retry_no - 1))
    return max(random.uniform(0, ceiling), retry_after or 0)  # noqa: S311  # nosec B311: retry jitter, not security


def _outcome(target: Target, error: UpstreamError | None, started: float = 0.0) -> None:
    if error is None:
        breakers.record(target.deployment_id, True)
        stats.observe_latency(target.deployment_id, (time.perf_counter() - started) * 1000)
    elif error.retryable:  # a request the client got wrong says nothing about the deployment
        breakers.record(target.deployment_id, False, retry_after=error.retry_after if error.status == 429 else None,
                        reason=error.message[:100])


async def open_call(targets: list[Target], build: BuildRequest, *, stream: bool = False, max_attempts: int = 3,
                    deadline_seconds: float = 120.0, hedge_after_ms: int | None = None,
                    log: list | None = None) -> Attempt:
    """Call the first target that answers; retry and fall back on retryable failures.

    Returns with the response headers read (and a stream's first bytes) and the
    body otherwise unread. Nothing has reached the client yet, which is what
    makes retrying and falling back safe. Each attempt is noted in `log`, when
    given, for the trace.
    """
    if not targets:
        raise UpstreamError(503, "Every deployment for this model is failing; try again shortly.",
                            retryable=False, code="no_healthy_deployment", type="server_error")
    budget.call()
    deadline = time.monotonic() + deadline_seconds
    schedule, tried, last_error = _schedule(targets, max_attempts), set(), None
    i = 0
    while i < len(schedule):
        target = schedule[i]
        if i > 0:
            if not budget.allow_retry():
                break
            if target.deployment_id in tried:
                delay = _backoff(i, last_error.retry_after if last_error else None)
                if time.monotonic() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
            metrics.inc("gateway_retries_total" if target.deployment_id in tried else "gateway_fallbacks_total",
                        target.provider_name)
        remaining = deadline - time.monotonic()
        hedge = hedge_after_ms and i + 1 < len(schedule) and schedule[i + 1] != target
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the attempt as a task of its own.
            async with asyncio.timeout(remaining):
                if hedge:
                    attempt = await _hedged(target, schedule[i + 1], build, stream, i + 1, hedge_after_ms / 1000, log)
                    i += 1
                else:
                    attempt = await _attempt_with_outcome(target, build, stream, i + 1, log)
        except UpstreamError as error:
            tried.add(target.deployment_id)
            last_error = error
            if not error.retryable:
                raise
            i += 2 if hedge else 1
            continue
        except TimeoutError:
            last_error = UpstreamError(504, "No deployment answered within the route's deadline.",
                                       retryable=False, code="upstream_timeout")
            break
        return attempt
    raise last_error


async def _hedged(first: Target, second: Target, build, stream: bool, attempt_no: int, after: float,
                  log: list | None) -> Attempt:
    """Call `first`; if it has not answered within `after` seconds, call `second` too. First answer wins."""
    tasks = {asyncio.create_task(_attempt_with_outcome(first, build, stream, attempt_no, log))}
    done, _ = await asyncio.wait(tasks, timeout=after)
    if done:
        return tasks.pop().result()
    metrics.inc("gateway_hedges_total", second.provider_name)
    tasks.add(asyncio.create_task(_attempt_with_outcome(second, build, stream, attempt_no + 1, log)))
    last_error: UpstreamError | None = None
    while tasks:
        done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is None:
                winner = task.result()
                for loser in tasks:
                    loser.cancel()
                winner.hedge_loser = second if winner.target is first else first
                return winner
            last_error = task.exception()
    raise last_error


def _outcome_label(error: UpstreamError) -> str:
    if error.status == 429:
        return "rate_limited"
    if error.code == "upstream_timeout":
        return "timeout"
    return "server_error" if error.status >= 500 else "client_error"


async def _attempt_with_outcome(target: Target, build, stream: bool, attempt_no: int, log: list | None) -> Attempt:
    started = time.perf_counter()
    try:
        attempt = await _try(target, build, stream, attempt_no)
    except UpstreamError as error:
        _outcome(target, error)
        metrics.inc("gateway_upstream_attempts_total", target.provider_name, _outcome_label(error))
        if log is not None:
            log.append((target, started, time.perf_counter(), error))
        raise
    except asyncio.CancelledError:  # a hedge the other call won
        metrics.inc("gateway_upstream_attempts_total", target.provider_name, "cancelled")
        if log is not None:
            log.append((target, started, time.perf_counter(), asyncio.CancelledError("hedge lost")))
        raise
    _outcome(target, None, attempt.started)
    metrics.inc("gateway_upstream_attempts_total", target.provider_name, "ok")
    if log is not None:
        log.append((target, started, time.perf_counter(), None))
    return attempt


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
        attempt.release()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(502, f"Provider '{attempt.target.provider_name}' sent a malformed response.",
                            retryable=False) from exc
    if not isinstance(data, dict) and not (allow_list and isinstance(data, list)):
        raise UpstreamError(502, f"Provider '{attempt.target.provider_name}' sent a malformed response.",
                            retryable=False)
    return body, data


# What an adapter raises when an upstream's body has the wrong shape.
MALFORMED = (AttributeError, TypeError, KeyError, ValueError, IndexError)


def decode(target: Target, translate: Callable, *args):
    """Run an adapter's translation of an upstream answer; a body of the wrong
    shape is the provider's fault (502), never the gateway's (500)."""
    try:
        return translate(*args)
    except MALFORMED as exc:
        raise UpstreamError(502, f"Provider '{target.provider_name}' sent an answer the gateway could not read.",
                            retryable=False, code="upstream_bad_response") from exc


async def stream_events(attempt: Attempt, translate: Callable[[bytes], StreamEvent]) -> AsyncIterator[list[StreamEvent]]:
    """The upstream stream's events, translated, as they arrive (never buffered whole): one list
    per network read, so events that arrived together are relayed in one write, as a bare relay would."""
    framing = adapters.for_kind(attempt.target.kind).STREAM_FRAMING
    batches = _ndjson_lines(attempt) if framing == "ndjson" else _sse_data(attempt)
    async for payloads in batches:
        events, failure = translated(attempt, translate, payloads)
        if events:
            yield events  # what came before a malformed or error event is relayed first
        if failure is not None:
            raise failure


def translated(attempt: Attempt, translate: Callable[[bytes], StreamEvent],
               payloads: list[bytes]) -> tuple[list[StreamEvent], UpstreamError | None]:
    """The events of one read's payloads, up to the first malformed or error event (then its error)."""
    events = []
    for data in payloads:
        try:
            events.append(translate(data))
        except MALFORMED as exc:
            failure = UpstreamError(502, f"Provider '{attempt.target.provider_name}' sent a malformed stream "
                                         "event.", retryable=False, code="upstream_error")
            failure.__cause__ = exc
            return events, failure
        except UpstreamError as exc:  # the upstream's own error event
            return events, exc
    return events, None


class SSEBuffer:
    """The data of each complete SSE event, as network reads bring them in."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = b""  # the start of an event the next read ends

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self.pending + chunk
        # find, not `in`: bytes' `in` raises and formats a TypeError inside CPython before it searches.
        if buffer.find(b"\r\n") != -1:
            buffer = buffer.replace(b"\r\n", b"\n")
        payloads, start = [], 0
        while (end := buffer.find(b"\n\n", start)) != -1:  # each event sliced out once, not the rest after it
            if buffer.startswith(b"data: ", start) and buffer.find(b"\n", start, end) == -1:
                payloads.append(buffer[start + 6:end])  # one data line: _data_of's first case
            elif (data := _data_of(buffer[start:end])) is not None:
                payloads.append(data)
            start = end + 2
        self.pending = buffer[start:] if start else buffer
        return payloads


async def _sse_data(attempt: Attempt) -> AsyncIterator[list[bytes]]:
    """The data of each complete SSE event, a list per network read (empty reads skipped)."""
    sse = SSEBuffer()
    async for chunk in reads(attempt):
        if payloads := sse.feed(chunk):
            yield payloads


async def _ndjson_lines(attempt: Attempt) -> AsyncIterator[list[bytes]]:
    """Each non-blank line, a list per network read (and the unterminated last line at the end)."""
    buffer = b""
    async for chunk in reads(attempt):
        buffer += chunk
        lines = []
        while (end := buffer.find(b"\n")) != -1:
            line, buffer = buffer[:end].strip(), buffer[end + 1 :]
            if line:
                lines.append(line)
        if lines:
            yield lines
    if buffer.strip():
        yield [buffer.strip()]


async def reads(attempt: Attempt) -> AsyncIterator[bytes]:
    """The stream's bytes as each network read brought them, the first read (made before the answer
    was chosen) first."""
    if attempt.first_chunk:
        yield attempt.first_chunk
    async for chunk in attempt.response.content.iter_any():
        yield chunk


def _data_of(block: bytes) -> bytes | None:
    if block.startswith(b"data: ") and block.find(b"\n") == -1:
        return block[6:]
    lines = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None
