"""OpenAI's Files and Batches APIs at /v1/files and /v1/batches, per tenant.

Another tenant's file or batch is the same 404 as one that does not exist. These
calls are not billed (the batch's lines are, each as its own call), so they
record no usage event.
"""

import orjson
from django.http import HttpResponse
from django.http.multipartparser import MultiPartParserError

from gateway_project.lib import errors
from gateway_project.lib.orm_thread import run_orm
from routing.front.endpoint import endpoint
from routing.front.pipeline import json_response, key_of

from . import files, notify, runner, tasks
from .models import Batch, File

WINDOWS = ("24h",)


def _listing(rows: list[dict], limit: int) -> dict:
    page = rows[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(rows) > limit}


def _limit(request, default: int = 20, most: int = 100) -> int:
    raw = request.GET.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise errors.bad_request(f"Invalid 'limit': {raw!r}. Expected an integer from 1 to {most}.", param="limit")
    return int(raw)


def _query(request, name: str) -> str:
    """A query parameter ("" when absent); NUL, which PostgreSQL refuses in text, is a 400."""
    value = request.GET.get(name) or ""
    if "\x00" in value:
        raise errors.bad_request(f"Invalid '{name}': NUL characters are not allowed.", param=name, code="invalid_value")
    return value


def _file_of(tenant_id: int, file_id: str) -> File:
    row = File.objects.filter(tenant_id=tenant_id, pk=file_id).first() if "\x00" not in file_id else None
    if row is None:
        raise errors.GatewayError(404, f"No such File object: {file_id}", param="id", code="file_not_found")
    return row


def _batch_of(tenant_id: int, batch_id: str) -> Batch:
    row = Batch.objects.filter(tenant_id=tenant_id, pk=batch_id).first() if "\x00" not in batch_id else None
    if row is None:
        raise errors.GatewayError(404, f"No batch found with id '{batch_id}'.", param="id", code="batch_not_found")
    return row


# --- files ----------------------------------------------------------------------

@endpoint("files.create", "POST")
async def file_create(request, call):
    key = await key_of(request)
    if not request.content_type.startswith("multipart/form-data"):
        raise errors.bad_request("Upload the file as multipart/form-data with 'file' and 'purpose'.", param="file")
    try:
        form, uploads = request.POST, request.FILES
    except MultiPartParserError as exc:
        raise errors.bad_request(f"The multipart body could not be read: {exc}", param="file") from None
    if unknown := sorted((set(form) - {"purpose"}) | (set(uploads) - {"file"})):
        raise errors.bad_request(f"Unrecognized request argument supplied: {unknown[0]}. Send 'file' and 'purpose'.",
                                 param=unknown[0], code="unknown_parameter")
    purpose = form.get("purpose")
    upload = uploads.get("file")
    if purpose not in ("batch", "user_data"):
        raise errors.bad_request("Invalid 'purpose': this gateway takes 'batch' (or 'user_data') files.",
                                 param="purpose", code="invalid_value")
    if upload is None:
        raise errors.bad_request("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    row = await run_orm(files.upload, key.tenant_id, upload.name or "upload.jsonl", purpose, upload.read())
    return json_response(orjson.dumps(row.as_openai()))


async def _file_list(request, call):
    key = await key_of(request)
    limit = _limit(request, 10000, 10000)
    if request.GET.get("order", "desc") not in ("asc", "desc"):
        raise errors.bad_request("Invalid 'order': expected 'asc' or 'desc'.", param="order", code="invalid_value")
    order = "created_at" if request.GET.get("order") == "asc" else "-created_at"

    def rows():
        qs = File.objects.filter(tenant_id=key.tenant_id).order_by(order)
        if purpose := _query(request, "purpose"):
            qs = qs.filter(purpose=purpose)
        return [r.as_openai() for r in qs[:limit + 1]]

    return json_response(orjson.dumps(_listing(await run_orm(rows), limit)))


files_list = endpoint("files.list", "GET")(_file_list)


async def files_root(request):
    return await (file_create if request.method == "POST" else files_list)(request)


@endpoint("files.retrieve", "GET")
async def _file_retrieve(request, call):
    key = await key_of(request)
    row = await run_orm(_file_of, key.tenant_id, request.resolver_match.kwargs["file_id"])
    return json_response(orjson.dumps(row.as_openai()))


@endpoint("files.delete", "DELETE")
async def _file_delete(request, call):
    key = await key_of(request)
    file_id = request.resolver_match.kwargs["file_id"]

    def remove():
        row = _file_of(key.tenant_id, file_id)
        if row.batches.exclude(status__in=("completed", "failed", "expired", "cancelled")).exists():
            raise errors.bad_request("This file is the input of a batch still running; cancel it first.",
                                     param="id", code="file_in_use")
        if row.batches.exists():
            raise errors.bad_request("This file is the input of a batch; it is kept with the batch.",
                                     param="id", code="file_in_use")
        files.delete(row)

    await run_orm(remove)
    return json_response(orjson.dumps({"id": file_id, "object": "file", "deleted": True}))


async def file_one(request):
    return await (_file_delete if request.method == "DELETE" else _file_retrieve)(request)


@endpoint("files.content", "GET")
async def file_content(request, call):
    key = await key_of(request)

    def read():
        return files.content(_file_of(key.tenant_id, request.resolver_match.kwargs["file_id"]))

    return HttpResponse(await run_orm(read), content_type="application/jsonl")


# --- batches --------------------------------------------------------------------

FIELDS = ("input_file_id", "endpoint", "completion_window", "metadata")


def _metadata(metadata):
    """OpenAI's metadata: at most 16 string values, keys of at most 64 characters, values of 512."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > 16 or not all(
            isinstance(v, str) and len(k) <= 64 and len(v) <= 512 and "\x00" not in k + v
            for k, v in metadata.items()):
        raise errors.bad_request("Invalid 'metadata': expected an object of at most 16 string values (keys up to 64 "
                                 "characters, values up to 512).", param="metadata", code="invalid_value")
    return metadata


def _create_batch(key, body: dict) -> Batch:
    if unknown := sorted(set(body) - set(FIELDS)):
        raise errors.bad_request(f"Unrecognized request argument supplied: {unknown[0]}. This gateway takes "
                                 f"{', '.join(FIELDS)}.", param=unknown[0], code="unknown_parameter")
    endpoint_ = body.get("endpoint")
    if not isinstance(endpoint_, str) or endpoint_ not in runner.FRONTS or endpoint_ == "/v1/messages":  # that one: /v1/messages/batches
        raise errors.bad_request(f"Invalid 'endpoint': expected one of {', '.join(list(runner.FRONTS)[:4])}.",
                                 param="endpoint", code="invalid_value")
    if body.get("completion_window") not in WINDOWS:
        raise errors.bad_request("Invalid 'completion_window': only '24h' is supported.",
                                 param="completion_window", code="invalid_value")
    metadata = _metadata(body.get("metadata"))
    notify.check_request(key.tenant_id, metadata)
    input_id = body.get("input_file_id")
    if not isinstance(input_id, str):
        raise errors.bad_request("Missing required parameter: 'input_file_id'.", param="input_file_id",
                                 code="missing_required_parameter")
    input_file = _file_of(key.tenant_id, input_id)
    if input_file.purpose != "batch":
        raise errors.bad_request(f"File {input_id} was not uploaded for purpose 'batch'.", param="input_file_id",
                                 code="invalid_value")
    return runner.create(key, input_file, endpoint_, body["completion_window"], metadata)


@endpoint("batches.create", "POST")
async def _batch_create(request, call):
    key = await key_of(request)
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise errors.bad_request("We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise errors.bad_request("The request body must be a JSON object.", code="invalid_json")
    batch = await run_orm(_create_batch, key, body)
    await run_orm(tasks.run_batch.delay, batch.id)  # off the event loop: embedded mode runs it eagerly
    return json_response(orjson.dumps(batch.as_openai()))


@endpoint("batches.list", "GET")
async def _batch_list(request, call):
    key = await key_of(request)
    limit = _limit(request)
    after = _query(request, "after")

    def rows():
        qs = Batch.objects.filter(tenant_id=key.tenant_id).order_by("-created_at", "-id")
        if after and (anchor := qs.filter(pk=after).first()):
            qs = qs.filter(created_at__lt=anchor.created_at)
        return [b.as_openai() for b in qs[:limit + 1]]

    return json_response(orjson.dumps(_listing(await run_orm(rows), limit)))


async def batches_root(request):
    return await (_batch_create if request.method == "POST" else _batch_list)(request)


@endpoint("batches.retrieve", "GET")
async def batch_one(request, call):
    key = await key_of(request)
    batch = await run_orm(_batch_of, key.tenant_id, request.resolver_match.kwargs["batch_id"])
    return json_response(orjson.dumps(batch.as_openai()))


@endpoint("batches.cancel", "POST")
async def batch_cancel(request, call):
    key = await key_of(request)

    def cancel():
        return runner.cancel(_batch_of(key.tenant_id, request.resolver_match.kwargs["batch_id"]))

    batch = await run_orm(cancel)
    if batch.status == "cancelling":
        await run_orm(tasks.run_batch.delay, batch.id)  # a worker writes the files of what was done
    return json_response(orjson.dumps(batch.as_openai()))
