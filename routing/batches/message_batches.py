"""Anthropic's Message Batches (/v1/messages/batches) on the same machinery as OpenAI's batches.

The requests of a message batch are written as a batch input file of the tenant's (purpose
`batch`, url /v1/messages) and run by the same runner, each line through the Messages front;
this module translates the batch and its results to Anthropic's shapes, errors included.
"""

import orjson
from django.http import HttpResponse

from gateway_project.lib import errors
from gateway_project.lib.orm_thread import run_orm
from routing.front.endpoint import endpoint
from routing.front.messages import error_response
from routing.front.pipeline import json_response, key_of

from . import files, runner, tasks
from .models import Batch, BatchLine

ENDED = ("completed", "failed", "expired", "cancelled")


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def as_anthropic(batch: Batch, request) -> dict:
    done = batch.completed + batch.failed
    left = max(0, batch.total - done)
    ended = batch.status in ENDED
    return {
        "id": batch.id, "type": "message_batch",
        "processing_status": "ended" if ended else "canceling" if batch.status == "cancelling" else "in_progress",
        "request_counts": {"processing": 0 if ended else left, "succeeded": batch.completed, "errored": batch.failed,
                           "canceled": left if batch.status == "cancelled" else 0,
                           "expired": left if batch.status == "expired" else 0},
        "ended_at": _iso(batch.completed_at or batch.cancelled_at or batch.expired_at or batch.failed_at),
        "created_at": _iso(batch.created_at), "expires_at": _iso(batch.expires_at),
        "archived_at": None, "cancel_initiated_at": _iso(batch.cancelling_at),
        "results_url": request.build_absolute_uri(f"/v1/messages/batches/{batch.id}/results") if ended else None,
    }


def _lines(body: dict) -> bytes:
    if unknown := sorted(set(body) - {"requests"}):
        raise errors.bad_request(f"{unknown[0]}: Extra inputs are not permitted")
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise errors.bad_request("requests: a non-empty list of {custom_id, params} is required.", param="requests")
    lines = []
    for n, item in enumerate(requests):
        if not isinstance(item, dict) or not isinstance(item.get("params"), dict):
            raise errors.bad_request(f"requests.{n}: an object with custom_id and params is required.",
                                     param=f"requests.{n}")
        if unknown := sorted(set(item) - {"custom_id", "params"}):
            raise errors.bad_request(f"requests.{n}.{unknown[0]}: Extra inputs are not permitted",
                                     param=f"requests.{n}")
        lines.append(orjson.dumps({"custom_id": item.get("custom_id"), "method": "POST", "url": "/v1/messages",
                                   "body": item["params"]}))
    return b"\n".join(lines)


def _batch_of(tenant_id: int, batch_id: str) -> Batch:
    batch = Batch.objects.filter(tenant_id=tenant_id, pk=batch_id, endpoint="/v1/messages").first() \
        if "\x00" not in batch_id else None
    if batch is None:
        raise errors.GatewayError(404, f"No message batch with id '{batch_id}'.", type="not_found_error")
    return batch


@endpoint("messages.batches.create", "POST", error_response)
async def _create(request, call):
    key = await key_of(request)
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise errors.bad_request("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise errors.bad_request("The request body must be a JSON object.")
    data = _lines(body)

    def create():
        source = files.upload(key.tenant_id, "message_batch.jsonl", "batch", data)
        return runner.create(key, source, "/v1/messages", "24h", None)

    batch = await run_orm(create)
    await run_orm(tasks.run_batch.delay, batch.id)  # off the event loop: embedded mode runs it eagerly
    return json_response(orjson.dumps(as_anthropic(batch, request)))


@endpoint("messages.batches.list", "GET", error_response)
async def _list(request, call):
    key = await key_of(request)

    def rows():
        return [as_anthropic(b, request) for b in Batch.objects.filter(
            tenant_id=key.tenant_id, endpoint="/v1/messages").order_by("-created_at")[:100]]

    data = await run_orm(rows)
    return json_response(orjson.dumps({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                       "last_id": data[-1]["id"] if data else None}))


async def root(request):
    return await (_create if request.method == "POST" else _list)(request)


@endpoint("messages.batches.retrieve", "GET", error_response)
async def retrieve(request, call):
    key = await key_of(request)
    batch = await run_orm(_batch_of, key.tenant_id, request.resolver_match.kwargs["batch_id"])
    return json_response(orjson.dumps(as_anthropic(batch, request)))


@endpoint("messages.batches.cancel", "POST", error_response)
async def cancel(request, call):
    key = await key_of(request)
    batch = await run_orm(lambda: runner.cancel(_batch_of(key.tenant_id, request.resolver_match.kwargs["batch_id"])))
    if batch.status == "cancelling":
        await run_orm(tasks.run_batch.delay, batch.id)
    return json_response(orjson.dumps(as_anthropic(batch, request)))


def _result(line: BatchLine) -> dict:
    response = (line.result or {}).get("response") or {}
    if line.done and line.ok:
        return {"custom_id": line.custom_id, "result": {"type": "succeeded", "message": response["body"]}}
    if line.done:
        return {"custom_id": line.custom_id, "result": {"type": "errored", "error": response.get("body")}}
    return {"custom_id": line.custom_id, "result": {"type": "canceled" if line.batch.status == "cancelled"
                                                    else "expired"}}


@endpoint("messages.batches.results", "GET", error_response)
async def results(request, call):
    key = await key_of(request)

    def read() -> bytes:
        batch = _batch_of(key.tenant_id, request.resolver_match.kwargs["batch_id"])
        if batch.status not in ENDED:
            raise errors.bad_request("The batch is still processing; its results come when it has ended.")
        return b"".join(orjson.dumps(_result(line)) + b"\n"
                        for line in batch.lines.select_related("batch").order_by("number").iterator())

    return HttpResponse(await run_orm(read), content_type="application/x-jsonl")
