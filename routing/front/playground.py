"""The admin's playground: chat with any model a key may use, from the browser.

A conversation of several turns, a prompt template of the key's tenant with its variables, tools
defined as JSON schema; in compare mode the page sends the same conversation to two to four models
or routes at once (one call each, side by side as they stream).

The page lists the keys the signed-in user may use (staff: all; a tenant's
owners and admins: the tenant's; members: their own) and, for each, the models
and routes that key may call. A call goes through the API's own view,
`chat.chat_completions`, so it is authenticated as that key, limited,
routed, retried, streamed and billed to the key's tenant exactly like a
client's call; only the key's secret is not needed, since the user proved who
they are by signing in (secrets are never stored, so it could not be).

The answer comes back as the API's own SSE stream (or JSON), followed by one
`event: gateway` line with what the call cost: its usage event (deployment,
attempts, tokens, cost, latency, time to first token), as recorded.
"""

import orjson
from asgiref.sync import sync_to_async
from django.contrib import admin
from django.http import HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse

from gateway_project.lib import errors
from keys.auth import info_for
from keys.models import ApiKey
from routing import table
from routing.prompts.models import PromptTemplate
from tenants.scoping import scope_for

from . import chat, validation

# What the page shows of the usage event.
SHOWN = ("request_id", "provider_name", "deployment_id", "upstream_model", "route", "strategy", "attempts",
         "prompt_tokens", "completion_tokens", "total_tokens", "tokens_estimated", "cost_usd", "latency_ms",
         "ttft_ms", "status", "public_model", "prompt_template", "prompt_version", "variant")


def usable_keys(user):
    """The active keys `user` may call with: what the key admin shows them, less revoked and expired keys."""
    return scope_for(user).visible(ApiKey.objects.active().select_related("tenant")).order_by("tenant__name", "name")


def _choices(user) -> list[dict]:
    routing_table = table.load()
    keys = list(usable_keys(user))
    templates = _templates({key.tenant_id for key in keys})
    choices = []
    for key in keys:
        info = info_for(key)
        models = [name for name, _, _ in routing_table.models_for(key.tenant_id)
                  if info.may_use(name) and _chats(routing_table, key.tenant_id, name)]
        choices.append({"id": key.id, "label": f"{key.tenant.name} / {key.name} ({key.prefix}…)", "models": models,
                        "default_model": info.default_model, "templates": templates.get(key.tenant_id, [])})
    return choices


def _templates(tenant_ids: set[int]) -> dict[int, list[dict]]:
    """Each tenant's templates as the page offers them: versions (newest first) with their variables, labels."""
    found: dict[int, list[dict]] = {}
    rows = PromptTemplate.objects.filter(tenant_id__in=tenant_ids).prefetch_related("versions", "labels__version")
    for template in rows.order_by("name"):
        versions = [{"number": v.number, "variables": v.variables, "model": v.model, "note": v.note}
                    for v in sorted(template.versions.all(), key=lambda v: -v.number)]
        if versions:
            found.setdefault(template.tenant_id, []).append({
                "name": template.name, "versions": versions,
                "labels": {label.name: label.version.number for label in template.labels.all()}})
    return found


def _chats(routing_table, tenant_id: int, name: str) -> bool:
    """Whether `name` (a model or a route) reaches a chat deployment: embedding models are not offered."""
    spec = routing_table.route_for(tenant_id, name)
    return spec is not None and any(t.mode == "chat" for t in spec.targets)


def page(request):
    context = {
        **admin.site.each_context(request),
        "title": "Playground",
        "choices": _choices(request.user),
    }
    return TemplateResponse(request, "admin/playground.html", context)


def _error(status: int, message: str, param: str | None = None) -> HttpResponse:
    return errors.GatewayError(status, message, param=param, code="playground_error" if status != 404 else
                               "key_not_found").response()


def _usable(user, key_id: int):
    """The key as the hot path sees it, if `user` may call with it (active keys only); else None."""
    row = usable_keys(user).filter(id=key_id).first()
    return info_for(row) if row is not None else None


def _chat_body(form: dict) -> dict:
    """The chat request the form describes (checked by the API's own view, like a client's)."""
    body = {"model": form.get("model"), "messages": form.get("messages"), "stream": bool(form.get("stream"))}
    for name in ("temperature", "max_tokens", "tools", "tool_choice"):
        if form.get(name) not in (None, "", []):
            body[name] = form[name]
    if form.get("prompt") is not None:
        body[validation.PROMPT_FIELD] = form["prompt"]
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}
    return body


def _summary(call) -> bytes:
    event = call.recorded or {}
    return orjson.dumps({name: event.get(name) for name in SHOWN})


async def call(request) -> HttpResponse:
    """POST {key, model, messages, temperature, max_tokens, tools, tool_choice, prompt, stream}: the API's answer,
    then the call's usage."""
    user = await request.auser()
    if not (user.is_active and user.is_staff):
        return _error(403, "Sign in to the admin to use the playground.")
    if request.method != "POST":
        return _error(405, "Use POST.")
    try:
        form = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return _error(400, "The body must be JSON.")
    if not isinstance(form, dict) or not isinstance(form.get("key"), int):
        return _error(400, "Pick a key.", param="key")
    info = await sync_to_async(_usable)(user, form["key"])
    if info is None:
        return _error(404, "No such key, or you may not use it.", param="key")

    request.gateway_key = info
    request._body = orjson.dumps(_chat_body(form))
    response = await chat.chat_completions(request)
    gateway_call = request.gateway_call
    if not isinstance(response, StreamingHttpResponse):
        if response.status_code != 200:
            return response
        body = b'{"response":' + response.content + b',"gateway":' + _summary(gateway_call) + b"}"
        out = HttpResponse(body, content_type="application/json")
    else:
        async def relay():
            async for chunk in response.streaming_content:
                yield chunk
            # The stream settled and recorded the call before ending.
            yield b"event: gateway\ndata: " + _summary(gateway_call) + b"\n\n"

        out = StreamingHttpResponse(relay(), content_type="text/event-stream")
        out["cache-control"] = "no-cache"
    for name, value in response.items():
        if name.lower().startswith(("x-gateway-", "x-request-id", "x-ratelimit-")):
            out[name] = value
    return out
