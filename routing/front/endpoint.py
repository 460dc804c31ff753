"""The one wrapper every /v1 endpoint shares.

It gives each request its call (request id, metrics, trace), turns every error
into the front's shape (OpenAI's unless the front says otherwise; a traceback
never leaves the process), records what a client that hung up had already cost,
and, for a JSON answer, settles the limits and buffers the one usage event
(a stream does that itself when it ends: routing/front/relay.py).
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

from django.db import DatabaseError
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from gateway_project.lib import errors
from gateway_project.lib.request_ids import client_request_id

from . import observe, relay
from .call import Call
from .pipeline import run

log = logging.getLogger(__name__)

Handler = Callable[[object, Call], Awaitable[HttpResponse]]


def endpoint(name: str, method: str, error_shape: Callable[[errors.GatewayError], HttpResponse] | None = None):
    """Make `handler(request, call)` a view: the call's id, errors in one shape and its one usage event."""
    shape = error_shape or errors.GatewayError.response

    def decorate(handler: Handler):
        @csrf_exempt
        @functools.wraps(handler)
        async def view(request):
            call = request.gateway_call = Call(endpoint=name, client_request_id=client_request_id(request.headers),
                                               request_headers=request.headers)
            observe.started(call, request.headers)
            try:
                if request.method != method:
                    raise errors.GatewayError(405, f"Use {method} for this endpoint.", code="method_not_allowed")
                response = await handler(request, call)
            except errors.GatewayError as error:
                response = _failed(call, error, shape)
            except DatabaseError as exc:
                # Only a cache miss reaches the database; what was cached keeps serving (docs/security.md).
                log.warning("request %s: database unreachable (%s)", call.request_id, exc)
                response = _failed(call, errors.database_unavailable(), shape)
            except asyncio.CancelledError:
                await client_gone(call)
                raise
            except Exception:
                log.exception("request %s failed inside the gateway", call.request_id)
                response = _failed(call, errors.internal_error(), shape)
            return await finish(call, response, getattr(request, "after_response", None))

        return view

    return decorate


async def client_gone(call: Call) -> None:
    """The client hung up before the answer: record what the call cost so far."""
    if call.key is not None and not call.recorded_by_stream:
        call.client_left()
        await asyncio.shield(relay.record_and_finish(call))


async def finish(call: Call, response: HttpResponse, after_response: list | None = None) -> HttpResponse:
    """The call's id and limit headers on its answer; for a JSON answer, its settlement and usage event.

    Given `after_response` (the API's handler sends the answer, then runs what is left there), the
    settlement waits until the client has its answer: the reservation already holds the call's
    estimate, and the handler runs it before the request is over, so a graceful stop still waits
    for it. A call whose settlement also sets what the next call must find (a response cache entry,
    `call.writes`) settles before its answer leaves, as the cache promises (docs/cache.md).
    """
    response["x-request-id"] = call.response_id
    if call.admission is not None:
        for header, value in call.admission.headers.items():
            response[header] = value
    if call.response_headers:
        for header, value in call.response_headers.items():
            response[header] = value
    if not call.recorded_by_stream:
        if after_response is not None and not call.writes:
            after_response.append(functools.partial(account, call))
        else:
            await account(call)
    return response


async def account(call: Call) -> None:
    """Settle the call's limits and buffer its usage event (a call with a key), then count and log it."""
    if call.key is not None:
        await call.settle_and_record()
    observe.finished(call)


def _failed(call: Call, error: errors.GatewayError, shape) -> HttpResponse:
    call.failed(error)
    return shape(error)


def front_view(front):
    """The view serving `front` (a pipeline.Front) through the whole request path."""


    async def handler(request, call: Call) -> HttpResponse:
        return await run(front, request, call)

    handler.__name__ = handler.__qualname__ = front.endpoint.replace(".", "_")
    return endpoint(front.endpoint, front.method, front.error_shape)(handler)
