"""Relaying a stream: upstream events, translated, written to the client as they are read.

The relay writes what one upstream read brought in one write, keeps the
call's in-flight entry checkpointed (so a worker killed mid-stream still bills
what it relayed), carries errors after the headers inside the stream, and
records the call's usage however the stream ends: finished, cut, or the client
gone.
"""

import asyncio
import logging
import math
import time

import aiohttp
import orjson
from django.http import StreamingHttpResponse

from gateway_project.lib import errors, metrics
from gateway_project.lib.settings_cache import conf
from providers.adapters.base import StreamEvent, UpstreamError, without_secrets
from routing import upstream
from usage import inflight

from . import observe, stages
from .call import Call

log = logging.getLogger(__name__)


class RelayResponse(StreamingHttpResponse):
    """A relayed stream. The API's handler sends `parts` as they come (routing/front/handler.py),
    where Django's would pass each through three more layers (its bytes mapping, its async
    iterator, its chunking): a cost per chunk that 10,000 open streams pay 40,000 times a second.
    Any other handler serves it as the StreamingHttpResponse it is."""

    def __init__(self, parts, **kwargs) -> None:
        super().__init__(parts, **kwargs)
        self.parts = parts  # an async generator of bytes


class OpenAIStream:
    """Writes stream events as OpenAI's SSE: pass-through payloads verbatim,
    translated chunks serialised, and `[DONE]` at the end."""

    def feed(self, event: StreamEvent) -> bytes:
        if event.forward is not None:
            return b"data: " + event.forward + b"\n\n"
        out = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in event.chunks or ())
        return out + b"data: [DONE]\n\n" if event.done and event.chunks is not None else out

    def error(self, error: errors.GatewayError) -> bytes:
        # OpenAI's SDKs raise an error found in the stream.
        return b"data: " + error.body() + b"\n\n"


async def record_and_finish(call: Call) -> None:
    await call.settle_and_record()
    observe.finished(call)


def _checkpoint(call: Call, verbatim: bool = False) -> None:
    """Write the stream's in-flight entry, so that a worker killed mid-stream still bills what it relayed:
    after the first chunk, then at most every USAGE_INFLIGHT_CHECKPOINT seconds (usage/inflight.py)."""
    if call.inflight is None:
        call.inflight = inflight.entries_key(call.key.tenant_id) if conf.REDIS_URL else ""
    if not call.inflight:
        call.checkpoint_due = math.inf
        return
    last = call.checkpointing
    if last is not None and last.done() and not last.cancelled() and call.inflight in (last.result() or ()):
        call.checkpoint_due = math.inf  # Redis is unreachable: not retried mid-stream
        return
    call.checkpoint_due = time.monotonic() + conf.USAGE_INFLIGHT_CHECKPOINT
    if last is None or last.done():
        # Queued, written at the end of this turn with the other streams' (the relay never waits on
        # Redis: a paused Redis would stall every stream). An exact-size copy: orjson's output keeps
        # a 4-8 KiB buffer while the write waits for Redis.
        # A verbatim stream (no output stage may change its event mid-way) renews only its counts.
        event = call.checkpoint_entry() if verbatim else call.checkpoint_whole()
        call.checkpointing = inflight.checkpoint_soon(call.inflight, call.request_id, event)


async def write_checkpoint(call: Call, event: bytes) -> None:
    """A call's first in-flight entry, beside the upstream call (routing/front/pipeline.py)."""
    if not await inflight.checkpoint(call.inflight, call.request_id, event):
        call.checkpoint_due = math.inf  # Redis is unreachable: not retried mid-stream
    if call.checkpointing is asyncio.current_task():
        call.checkpointing = None  # landed: an open stream keeps no finished task (a failure stays, for the log)


def relay_stream(call: Call, attempt: upstream.Attempt, translate, writer) -> StreamingHttpResponse:
    """Relay the upstream stream event by event through `writer`; record usage when it ends, however it ends."""
    return _relay(call, attempt, _translated(call, attempt, translate, writer), writer)


def relay_verbatim(call: Call, attempt: upstream.Attempt, translate, verbatim_read, held=None) -> StreamingHttpResponse:
    """Relay an OpenAI-format stream to an OpenAI-format client: each read that `verbatim_read` (the
    adapter's) passes goes out as it came, searched only for how many of its events carry content; the
    others (an event cut across reads, the usage chunk, `[DONE]`, an error) go event by event, as
    `relay_stream` writes them. The bytes the client gets are the same. `held` is the output stage's
    filter of the reads (stages.verbatim_reads: the guardrails' checks), None when no stage applies;
    only then does the in-flight entry renew its counts alone (no stage changes the event mid-way)."""
    if held is None:
        return _relay(call, attempt, _verbatim(call, attempt, translate, verbatim_read), OpenAIStream(), verbatim=True)
    return _relay(call, attempt, _verbatim_held(call, attempt, translate, verbatim_read, held), OpenAIStream())


def _written(call: Call, events: list[StreamEvent], writer) -> tuple[bytes, bool]:
    """One read's events as the client's bytes, and whether the stream ended with them."""
    out, finished = [], False
    for event in events:
        if event.usage is not None:
            call.usage = event.usage
        if event.has_content:
            call.first_token()
            call.delivered_chunks += 1
        out.append(writer.feed(event))
        finished = finished or event.done
    return b"".join(out), finished


async def _translated(call: Call, attempt: upstream.Attempt, translate, writer):
    finished, finishing = False, getattr(writer, "finishing", None)
    async for events in stages.wrap_stream(call, upstream.stream_events(attempt, translate)):
        out, done = _written(call, events, writer)
        finished = finished or done
        if finished and finishing is not None:
            await finishing()  # e.g. a stored response, readable before the client sees the end
            finishing = None
        if out:
            yield out  # one write for what arrived in one read
    if not finished:
        raise _cut_early(attempt)


async def _verbatim(call: Call, attempt: upstream.Attempt, translate, verbatim_read):
    sse, writer, finished = upstream.SSEBuffer(), OpenAIStream(), False
    # readany() itself, not iter_any() or upstream.reads(): two async iterators fewer per chunk.
    content = attempt.response.content
    read = attempt.first_chunk or await content.readany()  # none read yet: a cache hit's replay
    # The read timeout kept here, not by a timer aiohttp re-arms on every read (routing/upstream.py).
    deadline = upstream.read_deadline(attempt)
    while read:
        if not sse.pending and (count := verbatim_read(read)) is not None:
            if count:
                call.first_token()
                call.delivered_chunks += count
            yield read
        else:
            events, failure = upstream.translated(attempt, translate, sse.feed(read))
            out, done = _written(call, events, writer)
            finished = finished or done
            if out:
                yield out
            if failure is not None:
                raise failure
        if deadline is None:
            read = await content.readany()
        else:
            deadline.waiting_since = time.monotonic()
            read = await content.readany()
            deadline.waiting_since = math.inf
    if not finished:
        raise _cut_early(attempt)


async def _verbatim_held(call: Call, attempt: upstream.Attempt, translate, verbatim_read, held):
    """`_verbatim` with an output stage between the reads and the client: `held.read` takes a read that
    may go as it came and says what leaves now (bytes as they are, then events); `held.events` the
    events of any other read."""
    sse, writer, finished = upstream.SSEBuffer(), OpenAIStream(), False
    content = attempt.response.content
    read = attempt.first_chunk or await content.readany()
    try:
        while read:
            failure = None
            if not sse.pending and (count := verbatim_read(read)) is not None \
                    and (kept := await held.read(read)) is not None:
                if count:
                    call.first_token()
                    call.delivered_chunks += count
                out, events = kept
            else:
                events, failure = upstream.translated(attempt, translate, sse.feed(read))
                out, events = await held.events(events)
            if events:
                written, done = _written(call, events, writer)
                out, finished = out + written, finished or done
            if out:
                yield out
            if failure is not None:
                raise failure
            read = await content.readany()
    finally:
        held.close()
    if not finished:
        raise _cut_early(attempt)


def _cut_early(attempt: upstream.Attempt) -> UpstreamError:
    return UpstreamError(502, f"Provider '{attempt.target.provider_name}' ended the stream early.",
                         retryable=False, code="upstream_stream_cut")


def _relay(call: Call, attempt: upstream.Attempt, parts, writer, verbatim: bool = False) -> RelayResponse:
    """The response relaying `parts` (the client's bytes, one part per upstream read): the in-flight
    checkpoint as it goes, errors after the headers inside the stream, and usage recorded however it ends."""
    call.streamed = True
    call.recorded_by_stream = True

    async def relay():
        metrics.gauge_add("gateway_open_streams", 1)
        try:
            async for out in parts:
                yield out
                if time.monotonic() >= call.checkpoint_due:
                    _checkpoint(call, verbatim)
        except (TimeoutError, UpstreamError, aiohttp.ClientError) as exc:
            # Headers are gone already: the error travels in the stream.
            error = exc if isinstance(exc, UpstreamError) else UpstreamError(
                502, f"Provider '{attempt.target.provider_name}' broke off the stream.",
                retryable=False, code="upstream_stream_cut",
            )
            call.status, call.error_type = "stream_cut", error.code
            # The adapters clean upstream text already; this is the last gate before the client.
            yield writer.error(without_secrets(error, attempt.target))
        except errors.GatewayError as error:
            # An output stage refused the answer (a guardrail's block): the stream ends with the refusal.
            call.status, call.error_type = "client_error", error.code or error.type
            yield writer.error(error)
        except (asyncio.CancelledError, GeneratorExit):
            call.status = "client_disconnected"
            raise
        except Exception:
            log.exception("stream %s failed inside the gateway", call.request_id)
            call.status, call.error_type = "upstream_error", "internal_error"
            yield writer.error(errors.internal_error())
        finally:
            attempt.release()
            call.upstream_ended = time.perf_counter()
            metrics.gauge_add("gateway_open_streams", -1)
            call.estimate_usage()
            # Shielded: a client that hangs up cancels this task, and the
            # tokens it already received must still be settled and recorded.
            await asyncio.shield(record_and_finish(call))

    response = RelayResponse(relay(), content_type="text/event-stream")
    response["cache-control"] = "no-cache"
    response["x-accel-buffering"] = "no"
    return response
