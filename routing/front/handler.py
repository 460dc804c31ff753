"""The ASGI handler for the API: Django's, minus what the API does not need.

The admin keeps Django's full handler and middleware. The API gets a lean one:
no middleware (each sync middleware is a thread hop per request), no
request_started/finished signals (their receivers manage database
connections, which the API's ORM pool manages itself), oversized bodies refused
before they are read, and an OpenAI-shaped answer for every path.

What Django's SecurityMiddleware does for the admin, it does here for the API,
in the API's way: every answer says `X-Content-Type-Options: nosniff`, and with
HTTPS=true a request that came over plain HTTP is refused, not redirected
(a redirect would have the client send its key in the clear once more).
"""

import asyncio
import io
import logging
import tempfile
import uuid
from contextlib import aclosing

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler
from django.urls import Resolver404, get_resolver

from gateway_project.lib import errors, metrics
from gateway_project.lib.request_ids import request_id_from

from .messages import error_response as anthropic_error
from .relay import RelayResponse

log = logging.getLogger(__name__)


def _count_refused(status: int) -> None:
    """Requests answered before any endpoint saw them still count in gateway_requests_total."""
    metrics.count_call(("none", "", "", "", str(status), "client_error"), 0, 0, 0, 0.0)


async def not_found(request):
    _count_refused(404)
    response = errors.GatewayError(
        404, f"Unknown request URL: {request.method} {request.path}.", code="unknown_url"
    ).response()
    response["x-request-id"] = request_id_from(request.headers)
    return response


def https_required(request):
    """The answer to a plain-HTTP request when HTTPS=true: a refusal in the caller's shape."""
    _count_refused(403)
    error = errors.GatewayError(
        403, "This gateway serves its API over HTTPS only: call it at https://. The API key this request "
        "sent travelled unencrypted; ask your gateway admin to rotate it.", type="permission_error",
        code="https_required")
    response = anthropic_error(error) if request.path.startswith("/v1/messages") else error.response()
    response["x-request-id"] = request_id_from(request.headers)
    return response


class ApiHandler(ASGIHandler):
    def __init__(self) -> None:
        base.BaseHandler.__init__(self)
        self.resolver = get_resolver(settings.API_URLCONF)
        self.max_body = settings.GATEWAY_MAX_REQUEST_BYTES
        self.https_only = settings.HTTPS
        # The API's paths with no argument in them, matched once: Django's resolver walks every
        # pattern with a regular expression on each request.
        self.matches: dict[str, object] = {}

    async def __call__(self, scope, receive, send) -> None:
        # Django's opens a ThreadSensitiveContext per request, for what a view runs through
        # sync_to_async; the API runs no sync code in its requests (a cache miss goes to the ORM
        # pool, gateway_project/lib/orm_thread.py), and gateway_project.asgi sends it HTTP only.
        await self.handle(scope, receive, send)

    def resolve(self, path: str):
        """The path's view and arguments (Resolver404 for none)."""
        match = self.matches.get(path)
        if match is None:
            match = self.resolver.resolve(path)
            if not match.args and not match.kwargs and len(self.matches) < 256:
                self.matches[path] = match
        return match

    async def handle(self, scope, receive, send) -> None:
        try:
            body_file = await self.read_limited_body(scope, receive)
        except RequestAborted:
            return
        except errors.GatewayError as error:
            _count_refused(error.status)
            response = error.response()
            response["x-request-id"] = f"req_{uuid.uuid4().hex}"
            await self.send_response(response, send)
            return
        try:
            request = self.request_class(scope, body_file)
        except UnicodeDecodeError:
            _count_refused(400)
            response = errors.bad_request("The request URL is not valid UTF-8.").response()
            response["x-request-id"] = f"req_{uuid.uuid4().hex}"
            await self.send_response(response, send)
            return
        if self.https_only and not request.is_secure():  # BEHIND_TLS_PROXY: the proxy's X-Forwarded-Proto
            await self.send_response(https_required(request), send)
            body_file.close()
            return
        try:
            request.resolver_match = self.resolve(request.path_info)  # path arguments, for the view
            view = request.resolver_match.func
        except Resolver404:
            view = not_found
        # What a view leaves for after its answer is sent (routing/front/endpoint.py `finish`).
        request.after_response = []
        # The view runs in this task; one task beside it waits for the client to hang up and then
        # cancels the view, which records what the call owes. One task per call fewer than a task
        # each (and asyncio.wait's futures): an open stream holds less, and 10,000 hold 10,000 less.
        task = asyncio.current_task()
        watch = _HangUp(task)
        listener = asyncio.create_task(watch.listen(self, receive))
        try:
            await self.respond(view, request, send)
        except asyncio.CancelledError:
            if not watch.hung_up:
                raise  # the server's own cancellation, not the client's hang-up
        finally:
            watch.responding = False
            listener.cancel()
        if watch.hung_up:
            task.uncancel()
        body_file.close()
        for work in request.after_response:
            try:
                await work()
            except Exception:  # the answer is gone: what failed after it is the operator's to see
                log.exception("%s: failed after the answer was sent", request.path)

    async def respond(self, view, request, send) -> None:
        response = await view(request)
        try:
            await self.send_response(response, send)
        except asyncio.CancelledError:
            pass

    async def send_response(self, response, send) -> None:
        # No browser may read an answer (which may echo a client's text) as HTML or script.
        response.headers["X-Content-Type-Options"] = "nosniff"
        if not isinstance(response, RelayResponse):
            content = None if response.streaming or response.cookies else response.content
            if content is None or len(content) > self.chunk_size:
                await super().send_response(response, send)
                return
            # A JSON answer (every API answer but a stream): its headers and its body in one message
            # each, without Django's per-header type checks and chunking, which change nothing here.
            headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return
        # A relayed stream (no cookies, bytes only): each part in one message, as it comes.
        headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        async with aclosing(response.parts) as parts:
            async for part in parts:
                if part:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def read_limited_body(self, scope, receive):
        # A file upload (/v1/files) may be as large as FILES_MAX_BYTES, with room for its form fields.
        limit = max(self.max_body, settings.FILES_MAX_BYTES + 65536) if scope.get("path") == "/v1/files" else self.max_body
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise errors.too_large(limit)
        return await self.read_body(_counting(receive, limit))

    async def read_body(self, receive):
        """Django's, but a body that came in one message (every JSON call) is read from memory as it
        came, with no spooled temporary file around it; a longer upload spools as in Django."""
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        if not message.get("more_body", False):
            return io.BytesIO(message.get("body", b""))
        body_file = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")
        body_file.write(message.get("body", b""))
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                body_file.close()
                raise RequestAborted()
            body_file.write(message.get("body", b""))
        body_file.seek(0)
        return body_file


class _HangUp:
    """Cancels the call's task when its client hangs up while the answer is still being made or sent."""

    __slots__ = ("task", "responding", "hung_up")

    def __init__(self, task: asyncio.Task) -> None:
        self.task, self.responding, self.hung_up = task, True, False

    async def listen(self, handler: ASGIHandler, receive) -> None:
        try:
            await handler.listen_for_disconnect(receive)
        except RequestAborted:
            # Only while the task is inside `respond`: the cancellation then lands there, and
            # never in the work the handler runs after the answer (the settlement among it).
            if self.responding:
                self.hung_up = True
                self.task.cancel()


def _counting(receive, limit: int):
    """Wrap receive so that a body growing past `limit` is refused mid-upload."""
    size = 0

    async def counted():
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise errors.too_large(limit)
        return message

    return counted
