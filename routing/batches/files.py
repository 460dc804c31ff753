"""Uploaded files: stored through Django's storage API, JSONL checked line by line on upload."""

import logging
import re

import orjson
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db.models import Sum

from gateway_project.lib import errors

from .models import File

log = logging.getLogger(__name__)

# A JSON \u0000 escape (not an escaped backslash before "u0000"): PostgreSQL's JSON columns refuse NUL.
NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses", "/v1/messages")


def storage():
    return storages["default"]


def check_batch_lines(data: bytes) -> list[dict]:
    """The lines of a batch input file, or a 400 naming the first bad line by its number."""
    lines, seen, url = [], set(), None
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise errors.bad_request(f"Line {number} is not valid JSON.", param="file", code="invalid_jsonl") from None
        if NUL.search(raw):
            raise errors.bad_request(f"Line {number} holds a NUL character (\\u0000), which cannot be stored.",
                                     param="file", code="invalid_jsonl")
        problem = _line_problem(line, seen)
        if problem is None and url is not None and line["url"] != url:
            problem = f"its url {line['url']!r} differs from the first line's {url!r} (one endpoint per file)"
        if problem:
            raise errors.bad_request(f"Line {number}: {problem}.", param="file", code="invalid_jsonl")
        url = line["url"]
        seen.add(line["custom_id"])
        lines.append(line)
    if not lines:
        raise errors.bad_request("The file has no request lines.", param="file", code="invalid_jsonl")
    return lines


def _line_problem(line, seen: set) -> str | None:
    if not isinstance(line, dict):
        return "a line must be a JSON object"
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 200:
        return "'custom_id' must be a string of 1 to 200 characters"
    if custom_id in seen:
        return f"custom_id {custom_id!r} is used twice"
    if line.get("method") != "POST":
        return "'method' must be 'POST'"
    if line.get("url") not in ENDPOINTS:
        return f"'url' must be one of {', '.join(ENDPOINTS)}"
    if not isinstance(line.get("body"), dict):
        return "'body' must be a JSON object"
    return None


def upload(tenant_id: int, filename: str, purpose: str, data: bytes) -> File:
    """Store an uploaded file for the tenant (400 when too large, over quota or not valid JSONL)."""
    if len(data) > settings.FILES_MAX_BYTES:
        raise errors.GatewayError(413, f"The file is {len(data)} bytes; this gateway takes files of at most "
                                  f"{settings.FILES_MAX_BYTES} bytes (FILES_MAX_BYTES).", param="file",
                                  code="file_too_large")
    used = File.objects.filter(tenant_id=tenant_id).aggregate(total=Sum("bytes"))["total"] or 0
    if used + len(data) > settings.FILES_TENANT_MAX_BYTES:
        raise errors.GatewayError(413, f"Your files would take {used + len(data)} bytes; your tenant may store "
                                  f"{settings.FILES_TENANT_MAX_BYTES} (FILES_TENANT_MAX_BYTES). Delete some files.",
                                  param="file", code="storage_quota_exceeded")
    if purpose == "batch":
        check_batch_lines(data)
    row = File(tenant_id=tenant_id, filename=filename[:255], purpose=purpose, bytes=len(data))
    row.storage_name = storage().save(f"files/{tenant_id}/{row.id}.jsonl", ContentFile(data))
    row.save()
    return row


def write(tenant_id: int, filename: str, purpose: str, data: bytes) -> File:
    """A file the gateway writes itself (a batch's output or errors)."""
    row = File(tenant_id=tenant_id, filename=filename, purpose=purpose, bytes=len(data))
    row.storage_name = storage().save(f"files/{tenant_id}/{row.id}.jsonl", ContentFile(data))
    row.save()
    return row


def content(row: File) -> bytes:
    with storage().open(row.storage_name, "rb") as handle:
        return handle.read()


def delete(row: File) -> None:
    row.delete()  # the stored bytes go once it is committed (routing/signals.py)


def forget(storage_name: str) -> None:
    """Delete a file's stored bytes (its row is gone); a storage that fails leaves them to its own lifecycle."""
    try:
        storage().delete(storage_name)
    except Exception as exc:  # OSError on the file system, botocore's errors on S3
        log.warning("stored file %s not deleted (%s)", storage_name, exc)
