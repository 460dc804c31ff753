"""Running a batch: its lines go through the gateway's own request path, in process.

Each line is one call of `routing.front.pipeline.run` with the front of its
endpoint, authenticated as the key that created the batch: the same routing,
retries, fallbacks, limits and usage event as a live call. Calling the pipeline
in process (rather than the gateway over HTTP) keeps the key's secret out of
the worker (only its id is stored), costs no HTTP round trip per line, and lets
the runner read a refusal's code (a budget reached pauses the batch).

Billing once: a line's request id is the batch id and its custom_id, so a line
run again after a worker died (its result was not yet written) makes the same
usage event, which the ledger keeps once (unique request id). Results are
written after every chunk; a batch resumes at its first unanswered line.

Lower priority: batch tasks run on their own Celery queue (BATCH_QUEUE), at
most BATCH_LINE_CONCURRENCY lines at once per slot, and a line is admitted only
while the key's and tenant's rate limits are less than BATCH_LIMIT_SHARE used
(`Call.batch_id` tells admission), so live traffic keeps the rest.
"""

import asyncio
import hashlib
import logging
import time
from datetime import timedelta

import orjson
import redis
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Mod
from django.http import QueryDict
from django.http.request import HttpHeaders
from django.utils import timezone

from gateway_project.lib import errors
from gateway_project.lib.redis_pool import sync_redis
from keys.auth import info_for
from keys.models import ApiKey
from routing.front import chat, completions, embeddings, messages, responses
from routing.front.call import Call
from routing.front.endpoint import finish
from routing.front.pipeline import run
from usage import recorder

from . import files
from .models import Batch, BatchLine

log = logging.getLogger(__name__)

FRONTS = {"/v1/chat/completions": chat.FRONT, "/v1/embeddings": embeddings.FRONT,
          "/v1/completions": completions.FRONT, "/v1/responses": responses.FRONT,
          "/v1/messages": messages.FRONT}  # the Message Batches front (batches/message_batches.py)
# A budget or quota pauses the batch; a rate limit makes the line wait for the next round.
PAUSING = ("budget_exceeded", "quota_exceeded", "rate_limit_exceeded", "tokens_per_minute_exceeded",
           "concurrency_limit_exceeded")

_loop: asyncio.AbstractEventLoop | None = None


def loop() -> asyncio.AbstractEventLoop:
    """One event loop per worker process: the Redis and upstream pools are bound to it."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    return _loop


class LineRequest:
    """What the pipeline reads of a request, for one batch line."""

    method = "POST"

    def __init__(self, key, body: dict) -> None:
        self.gateway_key = key
        self.body = orjson.dumps(body)
        self.headers = HttpHeaders({})
        self.META = {"REMOTE_ADDR": ""}
        self.GET = QueryDict()


def line_request_id(batch_id: str, custom_id: str) -> str:
    rid = f"{batch_id}-{custom_id}"
    return rid if len(rid) <= 100 else f"{batch_id}-{hashlib.sha256(custom_id.encode()).hexdigest()[:40]}"


class Paused(Exception):
    """A budget or quota refused a line: the batch waits until the limit admits again."""


async def run_line(batch: Batch, key, line: BatchLine) -> dict | None:
    """The line's output or error line, or None when it must wait (raises Paused on a budget)."""
    front = FRONTS[batch.endpoint]
    body = dict(line.body)
    body.pop("stream", None)
    call = Call(endpoint=front.endpoint, request_id=line_request_id(batch.id, line.custom_id), batch_id=batch.id,
                ts=line.started_at or time.time())
    request = LineRequest(key, body)
    request.gateway_call = call
    try:
        if key is None:
            raise errors.invalid_key()
        response = await run(front, request, call)
    except errors.GatewayError as error:
        if error.code in PAUSING:
            raise Paused(error.code) from None
        call.failed(error)
        response = (front.error_shape or errors.GatewayError.response)(error)
    except Exception:
        log.exception("batch %s line %s failed inside the gateway", batch.id, line.number)
        error = errors.internal_error()
        call.failed(error)
        response = error.response()
    await finish(call, response)
    line.billed = call.recorded is not None
    status = response.status_code
    return {"id": f"batch_req_{hashlib.sha256(call.request_id.encode()).hexdigest()[:24]}",
            "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": call.request_id, "body": orjson.loads(response.content)},
            "error": None}


async def run_chunk(batch: Batch, key, lines: list[BatchLine]) -> str:
    """Answer the lines, several at once; '' when all ran, else why the rest wait."""
    slots = asyncio.Semaphore(settings.BATCH_LINE_CONCURRENCY)
    paused = ""

    async def one(line: BatchLine) -> None:
        nonlocal paused
        async with slots:
            if paused:
                return
            try:
                line.result = await run_line(batch, key, line)
            except Paused as reason:
                paused = str(reason)
                return
            line.done, line.ok = True, line.result["response"]["status_code"] < 400

    await asyncio.gather(*(one(line) for line in lines))
    return paused


def _key_for(batch: Batch):
    row = ApiKey.objects.active().select_related("tenant").filter(pk=batch.api_key_id).first()
    return info_for(row) if row else None


def _set_status(batch: Batch, status: str, **fields) -> None:
    batch.status = status
    now = timezone.now()
    stamp = {"in_progress": "in_progress_at", "finalizing": "finalizing_at", "completed": "completed_at",
             "failed": "failed_at", "cancelled": "cancelled_at", "expired": "expired_at"}.get(status)
    if stamp:
        fields[stamp] = now
    for name, value in fields.items():
        setattr(batch, name, value)
    batch.save(update_fields=["status", *fields])


def validate(batch: Batch) -> bool:
    """Read the input file into lines; a file for another endpoint fails the batch, as OpenAI's does."""
    try:
        lines = files.check_batch_lines(files.content(batch.input_file))
    except errors.GatewayError as error:
        _set_status(batch, "failed", errors={"object": "list", "data": [
            {"code": "invalid_jsonl", "message": error.message, "param": None, "line": None}]})
        return False
    wrong = [(n, line["url"]) for n, line in enumerate(lines, 1) if line["url"] != batch.endpoint]
    if wrong:
        _set_status(batch, "failed", errors={"object": "list", "data": [
            {"code": "mismatched_endpoint", "param": "url", "line": n,
             "message": f"Line {n}: the url {url!r} is not the batch's endpoint {batch.endpoint!r}."}
            for n, url in wrong[:100]]})
        return False
    BatchLine.objects.bulk_create([BatchLine(batch=batch, number=n, custom_id=line["custom_id"], body=line["body"])
                                   for n, line in enumerate(lines, 1)], batch_size=2000, ignore_conflicts=True)
    _set_status(batch, "in_progress", total=len(lines))
    return True


def _count(batch: Batch) -> None:
    done = BatchLine.objects.filter(batch=batch, done=True)
    batch.completed = done.filter(ok=True).count()
    batch.failed = done.filter(ok=False).count()
    batch.save(update_fields=["completed", "failed"])


def finalize(batch: Batch, status: str = "completed") -> None:
    """Write the output and error files (OpenAI's line format) and end the batch, once: of two slots
    finishing together, the second finds it ended."""
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(pk=batch.pk)
        if locked.status not in ("in_progress", "cancelling"):
            batch.status = locked.status
            return
        _finalize(batch, status)


def _finalize(batch: Batch, status: str) -> None:
    _set_status(batch, "finalizing") if status == "completed" else None
    out, bad = [], []
    for line in BatchLine.objects.filter(batch=batch, done=True).order_by("number").iterator():
        (out if line.ok else bad).append(orjson.dumps(line.result))
    if status == "expired":
        for line in BatchLine.objects.filter(batch=batch, done=False).order_by("number").iterator():
            bad.append(orjson.dumps({"id": f"batch_req_{line.number}", "custom_id": line.custom_id,
                                     "response": None, "error": {"code": "batch_expired", "message":
                                     "This line was not executed before the batch's completion window ended."}}))
    fields = {}
    if out:
        fields["output_file"] = files.write(batch.tenant_id, f"{batch.id}_output.jsonl", "batch_output",
                                            b"\n".join(out) + b"\n")
    if bad:
        fields["error_file"] = files.write(batch.tenant_id, f"{batch.id}_error.jsonl", "batch_output",
                                           b"\n".join(bad) + b"\n")
    _count(batch)
    _set_status(batch, status, **fields)


def _slot_lines(batch: Batch, slot: int):
    """The unanswered lines of one slot: chunks are dealt to the slots in turn, so that slots on
    different workers never run the same line."""
    chunk, slots = settings.BATCH_CHUNK_LINES, settings.BATCH_SLOTS
    return (BatchLine.objects.filter(batch=batch, done=False)
            .annotate(slot=Mod((F("number") - 1) / chunk, slots)).filter(slot=slot).order_by("number"))


def _mark_started(lines: list[BatchLine]) -> None:
    """Give the lines not yet tried their start time: a retry after a dead worker keeps it (see BatchLine);
    a line refused without being billed (a pause) has it cleared again, in `advance`."""
    fresh = [line for line in lines if line.started_at is None]
    if fresh:
        now = time.time()
        BatchLine.objects.filter(pk__in=[line.pk for line in fresh], started_at__isnull=True).update(started_at=now)
        for line in fresh:
            line.started_at = now


def advance(batch_id: str, lock_key: str | None = None, slot: int = 0, start_others=None) -> str:
    """Run the slot's lines of the batch from its first unanswered one to the end (or a pause, a
    cancel); the last slot to finish writes the files. Returns the batch's status."""
    batch = Batch.objects.select_related("input_file").get(pk=batch_id)
    if batch.status == "validating":
        if slot or not validate(batch):
            return batch.status
        if start_others:
            start_others()
    key = _key_for(batch)
    while batch.status in ("in_progress", "cancelling"):
        batch.refresh_from_db(fields=["status", "paused_reason"])
        if batch.status == "cancelling":
            finalize(batch, "cancelled")
            break
        if timezone.now() >= batch.expires_at:
            finalize(batch, "expired")
            break
        lines = list(_slot_lines(batch, slot)[:settings.BATCH_CHUNK_LINES])
        _mark_started(lines)
        if not lines:
            if not BatchLine.objects.filter(batch=batch, done=False).exists():
                finalize(batch)
            break
        paused = loop().run_until_complete(run_chunk(batch, key, lines))
        BatchLine.objects.bulk_update([line for line in lines if line.done], ["done", "ok", "result", "billed"])
        if waiting := [line.pk for line in lines if not line.done and not line.billed]:
            # Refused before any upstream call (a pause): nothing billed, so the next attempt is a new start.
            BatchLine.objects.filter(pk__in=waiting).update(started_at=None)
        if recorder.held():
            recorder.drain_all(local_only=True)  # Redis was away: the events this worker kept, into the ledger now
        _count(batch)
        _renew(lock_key)
        if paused != batch.paused_reason:
            batch.paused_reason = paused
            batch.save(update_fields=["paused_reason"])
        if paused:
            break  # resume_all tries again later
    return batch.status


def _renew(lock_key: str | None) -> None:
    """Renew the slot's lease. With Redis away the slot goes on: should its lease run out meanwhile and
    another worker take the slot, both make the same request ids, which the ledger bills once."""
    if not lock_key or not settings.REDIS_URL:
        return
    try:
        sync_redis().expire(lock_key, settings.BATCH_LEASE_SECONDS)
    except (redis.RedisError, OSError) as exc:
        log.warning("batch lease %s not renewed (%s)", lock_key, exc)


def running_ids() -> list[str]:
    return list(Batch.objects.filter(status__in=("validating", "in_progress", "cancelling")).values_list(
        "id", flat=True))


def create(key, input_file, endpoint: str, completion_window: str, metadata) -> Batch:
    return Batch.objects.create(tenant_id=key.tenant_id, api_key_id=key.id, endpoint=endpoint,
                                completion_window=completion_window, input_file=input_file, metadata=metadata,
                                expires_at=timezone.now() + timedelta(hours=24))


def cancel(batch: Batch) -> Batch:
    if batch.status in ("validating", "in_progress"):
        _set_status(batch, "cancelling", cancelling_at=timezone.now())
    return batch



