"""The OpenAI-compatible API: the hot path.

Each endpoint reads top to bottom: parse, authenticate, authorize, admit,
route, call, account, respond. `endpoint` wraps them with the parts every
call shares: the request id, errors in OpenAI's shape, and the usage event.
"""

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import yaml
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from gateway_project import metrics
from keys import throttle
from keys.auth import authenticate, key_from_headers
from providers.adapters import for_kind
from providers.adapters.base import StreamEvent, UpstreamError, without_secrets
from usage import inflight, limits, recorder

from . import anthropic_front, completions_front, errors, estimates, observe, strategies, table, upstream, validation
from .call import Call, client_request_id

log = logging.getLogger(__name__)


def endpoint(name: str, method: str, error_shape: Callable[[errors.GatewayError], HttpResponse] | None = None):
    """Wrap a handler with the request id, errors in one shape (OpenAI's unless
    `error_shape` says otherwise) and the call's one usage event."""

    def decorate(handler):
        @csrf_exempt
        @functools.wraps(handler)
        async def view(request):
            call = request.gateway_call = Call(endpoint=name, client_request_id=client_request_id(request.headers))
            observe.started(call, request.headers)
            try:
                if request.method != method:
                    raise errors.GatewayError(405, f"Use {method} for this endpoint.", code="method_not_allowed")
                response = await handler(request, call)
            except errors.GatewayError as error:
                call.failed(error)
                response = error_shape(error) if error_shape else error.response()
            except DatabaseError as exc:
                # Only a cache miss reaches the database; what was cached keeps serving (docs/security.md).
                log.warning("request %s: database unreachable (%s)", call.request_id, exc)
                error = errors.database_unavailable()
                call.failed(error)
                response = error_shape(error) if error_shape else error.response()
            except asyncio.CancelledError:
                # The client hung up before the answer: record what the call cost so far, then stop.
                if call.key is not None and not call.recorded_by_stream:
                    call.client_left()
                    await asyncio.shield(_record_and_finish(call))
                raise
            except Exception:
                log.exception("request %s failed inside the gateway", call.request_id)
                error = errors.internal_error()
                call.failed(error)
                response = error_shape(error) if error_shape else error.response()
            response["x-request-id"] = call.response_id
            if call.admission is not None:
                for name_, value in call.admission.headers.items():
                    response[name_] = value
            if not call.recorded_by_stream:
                if call.key is not None:
                    await call.settle_and_record()
                observe.finished(call)
            return response

        return view

    return decorate


async def _key(request):
    if (info := getattr(request, "gateway_key", None)) is not None:
        return info  # the admin's playground: the user signed in and may use this key
    try:
        return await authenticate(key_from_headers(request.headers))
    except errors.GatewayError:
        await throttle.failed_attempt(request.META.get("REMOTE_ADDR", ""))
        raise


async def _authenticate(request, call: Call) -> None:
    call.key = await _key(request)
    if call.model == "default" and call.key.default_model:
        call.model = call.key.default_model  # the key's default route, else its tenant's


async def _admit(call: Call, estimate, targets) -> None:
    """Check every limit and reserve the estimate; raises 429 when refused.

    With Redis, an admitted call also gets its in-flight entry (usage/inflight.py):
    should this worker die before the call is recorded, the reaper bills its
    prompt as an interrupted call. The admission script writes it; with no limit
    to check, it is written beside the upstream call.
    """
    started = time.perf_counter()
    call.planned = targets[0] if targets else None
    entry = _inflight_entry(call, call.planned) if settings.REDIS_URL and call.planned else None
    try:
        call.admission = await limits.admit(call.key.tenant_id, call.key.id, call.model,
                                            lambda: estimate(call.body, targets, call.estimated_prompt()), entry)
    except errors.GatewayError:
        call.inflight = None  # refused: no entry was written
        raise
    finally:
        call.admit_span = (started, time.perf_counter())
    if entry is None:
        return
    if call.admission is None:
        _, _, event = entry()
        call.checkpointing = asyncio.ensure_future(_write_checkpoint(call, event))
    elif call.admission.engine != "redis":
        call.inflight = None  # Redis is unreachable: the offline policy admitted it, with no entry


def _inflight_entry(call: Call, target):
    """The call's in-flight entry as it stands before the upstream answers (prompt only, at
    `target`'s prices), for the admission script to write."""

    def entry() -> tuple[str, str, bytes]:
        call.inflight = inflight.entries_key()
        return call.inflight, call.request_id, orjson.dumps(call.interrupted_event(target))

    return entry


def _json(body: bytes) -> HttpResponse:
    response = HttpResponse(body, content_type="application/json")
    response["content-length"] = str(len(body))
    return response


def _upstream_headers(response: HttpResponse, call: Call) -> HttpResponse:
    target = call.target
    response["x-gateway-provider"] = target.provider_name
    response["x-gateway-model"] = target.upstream_model
    response["x-gateway-deployment"] = str(target.deployment_id)
    response["x-gateway-route"] = call.route
    response["x-gateway-strategy"] = call.strategy
    response["x-gateway-attempts"] = str(call.attempts)
    return response


async def _route(call: Call, mode: str, facts: strategies.Facts):
    """Pick the route and order its targets; None of this touches the network."""
    spec = await table.route_for_key(call.key, call.model, mode)
    count_prompt = call.estimated_prompt if mode == "chat" else lambda: facts.prompt_tokens
    spec, targets = await strategies.plan(spec, facts, call.key.tenant_id, count_prompt)
    call.route, call.strategy = spec.name, spec.strategy
    return spec, targets


async def _call(call: Call, spec, targets, build, stream: bool = False) -> upstream.Attempt:
    call.upstream_started = time.perf_counter()
    try:
        attempt = await upstream.open_call(targets, build, stream=stream, max_attempts=spec.max_attempts,
                                           deadline_seconds=spec.deadline_seconds,
                                           hedge_after_ms=spec.hedge_after_ms, log=call.attempt_log)
    except errors.GatewayError:
        call.upstream_ended = time.perf_counter()
        call.attempts = min(len(targets), spec.max_attempts) or 0
        raise
    call.target, call.attempts, call.answered_started = attempt.target, attempt.attempts, attempt.started
    if attempt.hedge_loser is not None:
        await recorder.record(call.hedge_loser_event(attempt.hedge_loser))
    return attempt


async def _open(request, call: Call, body: dict, mode: str, build, stream: bool = False) -> upstream.Attempt:
    """Authenticate, authorize, route, admit and open the upstream call (the steps every endpoint shares)."""
    call.body, call.model = body, body["model"]
    await _authenticate(request, call)
    if mode == "chat":
        facts = strategies.facts_for_chat(body, len(request.body), request.headers)
    else:
        facts = strategies.Facts(len(request.body), 0, False, False, "", request.headers)
    spec, targets = await _route(call, mode, facts)
    await _admit(call, estimates.chat if mode == "chat" else estimates.embeddings, targets or spec.targets)
    return await _call(call, spec, targets, build, stream=stream)


async def _read_chat(call: Call, attempt: upstream.Attempt, body: dict) -> tuple[bytes, dict, bool]:
    """The upstream's answer as (raw body, OpenAI-shaped completion, whether raw already is that completion)."""
    try:
        raw, data = await upstream.read_json(attempt)
    finally:
        call.upstream_ended = time.perf_counter()
    call.first_token()
    adapter, target = for_kind(attempt.target.kind), attempt.target
    call.usage = upstream.decode(target, adapter.parse_usage, data)
    call.estimate_usage()
    completion = upstream.decode(target, adapter.chat_response, target, body, data)
    return raw, data if completion is None else completion, completion is None


@endpoint("chat.completions", "POST")
async def chat_completions(request, call: Call) -> HttpResponse:
    body = validation.chat_body(request)
    attempt = await _open(request, call, body, "chat",
                          lambda adapter, t: adapter.chat_request(t, body, call.request_id),
                          stream=bool(body.get("stream")))
    if body.get("stream"):
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        translate = for_kind(attempt.target.kind).chat_stream(attempt.target, body, want_usage)
        return _upstream_headers(_relay_stream(call, attempt, translate, OpenAIStream()), call)
    raw, completion, verbatim = await _read_chat(call, attempt, body)
    return _upstream_headers(_json(raw if verbatim else orjson.dumps(completion)), call)


@endpoint("messages", "POST", error_shape=anthropic_front.error_response)
async def messages(request, call: Call) -> HttpResponse:
    """Anthropic's Messages API in front of any provider kind."""
    body = validation.messages_body(request)
    try:
        body = anthropic_front.to_openai(body)
    except upstream.MALFORMED:
        raise errors.bad_request("The request does not follow the Messages API: check the content blocks, "
                                 "tools and system prompt.", code="invalid_value") from None
    # What every adapter relies on holds for the translated request too.
    body = validation.chat(body)
    attempt = await _open(request, call, body, "chat",
                          lambda adapter, t: adapter.chat_request(t, body, call.request_id),
                          stream=bool(body.get("stream")))
    if body.get("stream"):
        translate = for_kind(attempt.target.kind).chat_stream(attempt.target, body, True)
        return _upstream_headers(_relay_stream(call, attempt, translate, anthropic_front.Stream(call.model)), call)
    _, completion, _ = await _read_chat(call, attempt, body)
    message = upstream.decode(attempt.target, anthropic_front.from_openai, completion, call.model)
    return _upstream_headers(_json(orjson.dumps(message)), call)


@endpoint("completions", "POST")
async def completions(request, call: Call) -> HttpResponse:
    """Legacy text completions: native where the upstream has them, through chat elsewhere."""
    body = validation.completions_body(request)
    attempt = await _open(request, call, body, "chat", lambda adapter, t: completions_front.request(
        adapter, t, body, call.request_id), stream=bool(body.get("stream")))
    adapter = for_kind(attempt.target.kind)
    native = completions_front.is_native(adapter)
    chat_body = body if native else completions_front.to_chat(body)
    if body.get("stream"):
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        translate = adapter.chat_stream(attempt.target, chat_body, want_usage)
        writer = OpenAIStream() if native else completions_front.Stream()
        return _upstream_headers(_relay_stream(call, attempt, translate, writer), call)
    raw, completion, verbatim = await _read_chat(call, attempt, chat_body)
    answer = raw if verbatim else orjson.dumps(
        completion if native else upstream.decode(attempt.target, completions_front.from_chat, completion))
    return _upstream_headers(_json(answer), call)


@endpoint("embeddings", "POST")
async def embeddings(request, call: Call) -> HttpResponse:
    body = validation.embeddings_body(request)
    attempt = await _open(request, call, body, "embedding",
                          lambda adapter, t: adapter.embeddings_request(t, body, call.request_id))
    try:
        raw, data = await upstream.read_json(attempt, allow_list=True)
    finally:
        call.upstream_ended = time.perf_counter()
    adapter, target = for_kind(attempt.target.kind), attempt.target
    call.usage = upstream.decode(target, adapter.parse_usage, data)
    call.estimate_usage()
    answer = upstream.decode(target, adapter.embeddings_response, target, body, data)
    if answer is not None and "usage" not in answer:
        # The upstream reported no tokens: answer with the gateway's estimate.
        answer["usage"] = {"prompt_tokens": call.usage.prompt_tokens, "total_tokens": call.usage.prompt_tokens}
    return _upstream_headers(_json(raw if answer is None else orjson.dumps(answer)), call)


@endpoint("models", "GET")
async def models(request, call: Call) -> HttpResponse:
    key = await _key(request)
    routing_table = await table.current()
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": owner}
        for name, created, owner in routing_table.models_for(key.tenant_id)
        if key.may_use(name)
    ]
    return _json(orjson.dumps({"object": "list", "data": data}))


@functools.cache
def _schema() -> bytes:
    return orjson.dumps(yaml.safe_load((Path(__file__).parent / "openapi.yaml").read_text()))


@endpoint("openapi", "GET")
async def openapi(request, call: Call) -> HttpResponse:
    """This API's OpenAPI schema (routing/openapi.yaml): public, like /api/schema/."""
    return _json(_schema())


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


async def _record_and_finish(call: Call) -> None:
    await call.settle_and_record()
    observe.finished(call)


def _checkpoint(call: Call) -> None:
    """Write the stream's in-flight entry, so that a worker killed mid-stream still bills what it relayed:
    after the first chunk, then at most every USAGE_INFLIGHT_CHECKPOINT seconds (usage/inflight.py)."""
    if call.inflight is None:
        call.inflight = inflight.entries_key() if settings.REDIS_URL else ""
    if not call.inflight:
        call.checkpoint_due = math.inf
        return
    call.checkpoint_due = time.monotonic() + settings.USAGE_INFLIGHT_CHECKPOINT
    if call.checkpointing is None or call.checkpointing.done():
        # In the background: the relay never waits on Redis (a paused Redis would stall every stream).
        call.checkpointing = asyncio.ensure_future(_write_checkpoint(call, orjson.dumps(call.interrupted_event())))


async def _write_checkpoint(call: Call, event: bytes) -> None:
    if not await inflight.checkpoint(call.inflight, call.request_id, event):
        call.checkpoint_due = math.inf  # Redis is unreachable: not retried mid-stream


def _relay_stream(call: Call, attempt: upstream.Attempt, translate, writer) -> StreamingHttpResponse:
    """Relay the upstream stream event by event through `writer`; record usage when it ends, however it ends."""
    call.streamed = True
    call.recorded_by_stream = True

    async def relay():
        finished = False
        metrics.gauge_add("gateway_open_streams", 1)
        try:
            async for events in upstream.stream_events(attempt, translate):
                out = []
                for event in events:
                    if event.usage is not None:
                        call.usage = event.usage
                    if event.has_content:
                        call.first_token()
                        call.delivered_chunks += 1
                    out.append(writer.feed(event))
                    finished = finished or event.done
                if out := b"".join(out):
                    yield out  # one write for what arrived in one read
                if time.monotonic() >= call.checkpoint_due:
                    _checkpoint(call)
            if not finished:
                raise UpstreamError(502, f"Provider '{attempt.target.provider_name}' ended the stream early.",
                                    retryable=False, code="upstream_stream_cut")
        except (TimeoutError, UpstreamError, aiohttp.ClientError) as exc:
            # Headers are gone already: the error travels in the stream.
            error = exc if isinstance(exc, UpstreamError) else UpstreamError(
                502, f"Provider '{attempt.target.provider_name}' broke off the stream.",
                retryable=False, code="upstream_stream_cut",
            )
            call.status, call.error_type = "stream_cut", error.code
            # The adapters clean upstream text already; this is the last gate before the client.
            yield writer.error(without_secrets(error, attempt.target))
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
            await asyncio.shield(_record_and_finish(call))

    response = StreamingHttpResponse(relay(), content_type="text/event-stream")
    response["cache-control"] = "no-cache"
    response["x-accel-buffering"] = "no"
    return response
