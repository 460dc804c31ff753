"""Stored responses as OpenAI serves them: GET and DELETE /v1/responses/{id}, GET .../input_items.

The records live in usage.responses_store. Another tenant's id, an expired or deleted one, and
one whose model the key may not use are all the same 404, so nobody learns what exists
elsewhere. Background responses (streaming a stored response, cancelling one) are not offered:
those are a clear 400. These calls are not billed, so they record no usage event.
"""

import orjson

from gateway_project.lib import errors
from usage import responses_store

from .endpoint import endpoint
from .pipeline import json_response, key_of

NO_BACKGROUND = "this gateway does not run background responses (background=true)"


def not_found(response_id: str) -> errors.GatewayError:
    return errors.GatewayError(404, f"Response with id '{response_id}' not found.")


def _refuse_unknown(request, known: tuple[str, ...]) -> None:
    for name in request.GET:
        if name not in known:
            raise errors.bad_request(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")


async def _visible(request) -> tuple[object, dict, str]:
    key = await key_of(request)
    response_id = request.resolver_match.kwargs["response_id"]
    record = await responses_store.load(key, response_id)
    if record is None:
        raise not_found(response_id)
    return key, record, response_id


@endpoint("responses.retrieve", "GET")
async def retrieve(request, call):
    _refuse_unknown(request, ("include", "include[]", "include_obfuscation", "stream", "starting_after"))
    if request.GET.get("stream", "false").lower() not in ("false", "0"):
        raise errors.bad_request(f"A stored response cannot be streamed again: {NO_BACKGROUND}.", param="stream")
    if "starting_after" in request.GET:
        raise errors.bad_request(f"starting_after applies to streaming a stored response: {NO_BACKGROUND}.",
                                 param="starting_after")
    _, record, _ = await _visible(request)
    # `include` asks for fields as the response was made: the object is returned as it was stored.
    return json_response(orjson.dumps(record["response"]))


@endpoint("responses.delete", "DELETE")
async def delete(request, call):
    _refuse_unknown(request, ())
    key, _, response_id = await _visible(request)
    if not await responses_store.delete(key, response_id):
        raise not_found(response_id)
    return json_response(orjson.dumps({"id": response_id, "object": "response", "deleted": True}))


async def response(request):
    """GET or DELETE /v1/responses/{id} (each through the endpoint wrapper, which answers 405 otherwise)."""
    return await (delete if request.method == "DELETE" else retrieve)(request)


def _limit(request) -> int:
    raw = request.GET.get("limit", "20")
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise errors.bad_request(f"Invalid 'limit': {raw!r}. Expected an integer from 1 to 100.", param="limit")
    return limit


@endpoint("responses.input_items", "GET")
async def input_items(request, call):
    _refuse_unknown(request, ("after", "before", "limit", "order", "include", "include[]"))
    limit = _limit(request)
    order = request.GET.get("order", "desc")
    if order not in ("asc", "desc"):
        raise errors.bad_request(f"Invalid 'order': {order!r}. Expected 'asc' or 'desc'.", param="order")
    key, _, response_id = await _visible(request)
    listing = await responses_store.input_items(key, response_id, after=request.GET.get("after"),
                                                before=request.GET.get("before"), limit=limit, order=order)
    if listing is None:
        raise not_found(response_id)
    return json_response(orjson.dumps(listing))


@endpoint("responses.cancel", "POST")
async def cancel(request, call):
    await _visible(request)
    raise errors.bad_request(f"Cannot cancel a synchronous response: {NO_BACKGROUND}.", param="background")
