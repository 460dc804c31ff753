"""The /v1 endpoints as async DRF views, for bench/run.py --drf only (docs/architecture.md,
"DRF for /v1, measured"). The gateway never imports this module.

Serve it with GATEWAY_API_URLCONF=bench.drf_front: the same lean API handler,
the same request path (routing/front/pipeline.py `run`), but each endpoint an
`adrf` APIView with DRF's per-request work cut to what the endpoint uses: one
authentication class for gateway keys that sets `request.auth`, the gateway's
exception handler (OpenAI's error shape, Anthropic's for /v1/messages), a fixed
renderer with no content negotiation, no parsers (the fronts read the body as
bytes), no throttles, no permissions beyond the key, no versioning.

DRF 3.18 has no async APIView; adrf's runs `initial()` (authentication
included) through sync_to_async, and an async authenticator from there through
async_to_sync: two thread hops per request that no endpoint needs. This view
awaits the authenticator in the event loop and then runs DRF's own `initial()`,
so what is measured is DRF's work, not the hops.
"""

import asyncio
import inspect
import logging

from adrf.views import APIView
from django.db import DatabaseError
from django.urls import path
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer

from gateway_project.lib import errors
from gateway_project.lib.request_ids import client_request_id
from routing.front import chat, completions, embeddings, endpoint, messages, models, observe
from routing.front.call import Call
from routing.front.pipeline import key_of, run

log = logging.getLogger(__name__)


class GatewayKeyAuthentication(BaseAuthentication):
    """A gateway API key (keys/auth.py) as `request.auth`; 401 otherwise, counted against the address."""

    async def authenticate(self, request):
        return None, await key_of(request._request)


class FixedRenderer(BaseContentNegotiation):
    """No content negotiation: every answer is the endpoint's own JSON or SSE."""

    def select_parser(self, request, parsers):
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def gateway_exception_handler(exc, context):
    """Every error in the front's shape, recorded on the call, as routing/front/endpoint.py does."""
    view = context["view"]
    call = view.request._request.gateway_call
    if isinstance(exc, errors.GatewayError):
        error = exc
    elif isinstance(exc, exceptions.MethodNotAllowed):
        error = errors.GatewayError(405, f"Use {view.method} for this endpoint.", code="method_not_allowed")
    elif isinstance(exc, DatabaseError):
        log.warning("request %s: database unreachable (%s)", call.request_id, exc)
        error = errors.database_unavailable()
    else:
        log.exception("request %s failed inside the gateway", call.request_id, exc_info=exc)
        error = errors.internal_error()
    call.failed(error)
    return (view.error_shape or errors.GatewayError.response)(error)


class GatewayView(APIView):
    endpoint = ""
    method = "POST"
    error_shape = None
    authentication_classes = [GatewayKeyAuthentication]
    permission_classes = []
    throttle_classes = []
    parser_classes = []
    renderer_classes = [JSONRenderer]
    content_negotiation_class = FixedRenderer
    versioning_class = None

    def get_exception_handler(self):
        return gateway_exception_handler

    async def async_dispatch(self, request, *args, **kwargs):
        call = request.gateway_call = Call(endpoint=self.endpoint, client_request_id=client_request_id(request.headers))
        observe.started(call, request.headers)
        try:
            response = await self._dispatch(request, *args, **kwargs)
        except asyncio.CancelledError:
            await endpoint.client_gone(call)
            raise
        return await endpoint.finish(call, response)

    async def _dispatch(self, request, *args, **kwargs):
        """adrf's async_dispatch with the authenticators awaited in the loop (no thread hops)."""
        self.args, self.kwargs = args, kwargs
        request = self.request = self.initialize_request(request, *args, **kwargs)
        self.headers = self.default_response_headers
        try:
            for authenticator in request.authenticators:
                if (found := await authenticator.authenticate(request)) is not None:
                    request.user, request.auth = found
                    request._request.gateway_key = found[1]  # the pipeline's key_of takes it from here
                    break
            else:
                request.user, request.auth = None, None
            self.initial(request, *args, **kwargs)
            handler = getattr(self, request.method.lower(), self.http_method_not_allowed)
            response = await handler(request, *args, **kwargs)
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response


def front_view(front) -> type[GatewayView]:
    """The DRF view serving `front` (a pipeline.Front) through the whole request path."""

    async def handle(self, request):
        call = request._request.gateway_call
        return await run(front, request._request, call)

    name = "".join(part.title() for part in front.endpoint.split(".")) + "View"
    return type(name, (GatewayView,), {"endpoint": front.endpoint, "method": front.method,
                                       "error_shape": staticmethod(front.error_shape) if front.error_shape else None,
                                       front.method.lower(): handle})


def plain_view(endpoint: str, view, *, authenticated: bool = True) -> type[GatewayView]:
    """A GET endpoint whose plain handler (under routing/front/endpoint.py's wrapper) is reused as is."""
    handler = inspect.unwrap(view)

    async def get(self, request):
        return await handler(request._request, request._request.gateway_call)

    return type(endpoint.title() + "View", (GatewayView,), {
        "endpoint": endpoint, "method": "GET", "get": get,
        **({} if authenticated else {"authentication_classes": []})})


urlpatterns = [
    path("v1/chat/completions", front_view(chat.FRONT).as_view()),
    path("v1/messages", front_view(messages.FRONT).as_view()),
    path("v1/completions", front_view(completions.FRONT).as_view()),
    path("v1/embeddings", front_view(embeddings.FRONT).as_view()),
    path("v1/models", plain_view("models", models.models).as_view()),
    path("v1/openapi.json", plain_view("openapi", models.openapi, authenticated=False).as_view()),
]
