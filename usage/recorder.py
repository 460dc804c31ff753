"""Usage events: appended on the hot path, written to the database in bulk.

With Redis the buffer is a stream per shard of tenants (`gw:T:usage`,
gateway_project/lib/redis_keys.py: on a cluster no one node takes every
event; XADD per request, one round trip, usually inside the settle script);
drainers read every stream that holds entries through a consumer group, so several processes and Celery workers can
drain at once, and entries a dead drainer had claimed are reclaimed after
CLAIM_IDLE_MS. Rows are inserted with the request id unique, so writing an
event twice leaves one row. In embedded mode the buffer is a deque in this
process, drained by a background loop and once more at shutdown.

No event blocks the others: events are made to fit their columns when built
(usage.events), and a batch the database refuses is split in halves until the
event it refuses on its own is found; that one is kept as a UsageDeadLetter
(raw event, reason) and acknowledged, so the buffer keeps draining. Only a
database that does not answer at all leaves events buffered, to be retried.
"""

import asyncio
import logging
import os
import socket
import time
from collections import deque
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial

import orjson
import psycopg
import redis
from django.conf import settings
from django.db import IntegrityError, connection, transaction

from gateway_project.lib import metrics, redis_health, redis_keys
from gateway_project.lib.orm_thread import run_orm
from gateway_project.lib.redis_pool import async_redis, sync_redis
from gateway_project.lib.settings_cache import conf
from keys.auth import touch_last_used

from . import events as usage_events
from . import inflight, responses_store
from .models import PromptLog, UsageDeadLetter, UsageRecord

log = logging.getLogger(__name__)

GROUP = "drain"

_local: deque[dict] = deque()


def _consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def keep_unless_replicated(event: dict, replicas: int) -> None:
    """A buffered event that fewer than REDIS_WAIT_REPLICAS replicas confirmed could vanish in a
    failover: this process keeps it too and writes it itself (the request id makes it one row)."""
    if replicas < settings.REDIS_WAIT_REPLICAS:
        metrics.inc("gateway_usage_unreplicated_total")
        _local.append(event)


def stream_of(event: dict) -> str:
    """The usage stream of the event's tenant's shard."""
    return redis_keys.usage_stream(redis_keys.shard_of(event.get("tenant_id") or 0))


async def record(event: dict, inflight_key: str | None = None, writes: tuple = ()) -> None:
    """Buffer one usage event. Called once per request on the hot path.

    `inflight_key` names the hash holding the stream's in-flight entry (usage/inflight.py),
    deleted in the same round trip; `writes`, (key, value, TTL in seconds, a sorted set to record
    its expiry in or "") each, are set in it too (the response cache's entry of the answer), and
    dropped when Redis is unreachable.
    """
    stream = stream_of(event)
    if conf.REDIS_URL and not redis_health.down_for(stream):
        try:
            if inflight_key is None and not writes and not conf.REDIS_WAIT_REPLICAS:
                await async_redis().xadd(stream, {"e": orjson.dumps(event)})
            else:
                async with async_redis().pipeline(transaction=False) as pipe:
                    pipe.xadd(stream, {"e": orjson.dumps(event)})
                    if inflight_key is not None:
                        pipe.hdel(inflight_key, event["request_id"])
                    for key, value, ttl, expiries in writes:
                        pipe.set(key, value, ex=ttl)
                        if expiries:
                            pipe.zadd(expiries, {key: int((time.time() + ttl) * 1000)})
                    if conf.REDIS_WAIT_REPLICAS:
                        pipe.wait(settings.REDIS_WAIT_REPLICAS, settings.REDIS_WAIT_MS)
                    replies = await pipe.execute()
                if conf.REDIS_WAIT_REPLICAS:
                    keep_unless_replicated(event, replies[-1])
            return
        except Exception as exc:  # noqa: BLE001 - whatever failed, the event is kept, never lost
            # Not only redis-py's errors: uvloop raises RuntimeError for a connection whose
            # transport a dying node closed under it (a killed cluster master's, mid-call).
            redis_health.failed(exc, stream)
            log.warning("usage buffer unreachable (%r); holding event %s in process", exc, event["request_id"])
    if inflight_key is not None:
        inflight.delete_later(inflight_key, event["request_id"])
    # Embedded mode, or Redis unreachable: keep the event in this process; the
    # next drain writes it straight to the database.
    _local.append(event)


def _to_row(event: dict) -> UsageRecord:
    fields = usage_events.clean(dict(event))
    fields.pop("prompt", None)
    fields.pop("prompt_expires_at", None)
    fields["created_at"] = datetime.fromtimestamp(fields.pop("ts"), tz=UTC)
    fields["cost_usd"] = Decimal(fields["cost_usd"])
    if "cost_saved_usd" in fields:
        fields["cost_saved_usd"] = Decimal(fields["cost_saved_usd"])
    return UsageRecord(**fields)


# The ledger's columns as COPY writes them, each with the value an event that lacks it stands for
# (an event buffered by an older release).
_COLUMNS = [(f.attname, f.get_default()) for f in UsageRecord._meta.concrete_fields if f.attname != "id"]
_COPY = f"COPY {UsageRecord._meta.db_table} ({', '.join(name for name, _ in _COLUMNS)}) FROM STDIN"
_MISSING = object()
# What an event may hold besides its columns: its start time and a logged prompt (usage.prompts).
_KNOWN = {name for name, _ in _COLUMNS} | {"ts", "prompt", "prompt_expires_at"}


def _copy_row(event: dict) -> tuple:
    """The event as one row of COPY's text format: the server parses each column, so text is
    as good as any type, and building it costs no model instance."""
    if unknown := event.keys() - _KNOWN:  # refused, never dropped: it becomes a dead letter
        raise TypeError(f"a usage event has no field {', '.join(sorted(map(repr, unknown)))}")
    event = usage_events.clean(event)
    row = []
    for name, default in _COLUMNS:
        value = event.get(name, _MISSING)
        if value is _MISSING:
            value = datetime.fromtimestamp(event["ts"], tz=UTC) if name == "created_at" else default
        elif name == "guardrails" and value is not None:
            value = orjson.dumps(value).decode()
        row.append(value)
    return tuple(row)


def _copy_records(events: list[dict]) -> None:
    """Insert with one COPY; should a row be there already (an event written twice: its drainer
    died before acknowledging it), the batch goes again through a staging table, skipping those."""
    rows = [_copy_row(dict(e)) for e in events]
    try:
        # COPY is psycopg's own cursor method: its errors are made Django's here, as for any query.
        with transaction.atomic(), connection.cursor() as cursor, connection.wrap_database_errors, \
                cursor.copy(_COPY) as copy:
            for row in rows:
                copy.write_row(row)
    except IntegrityError as exc:
        if not isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
            raise
        with connection.cursor() as cursor, connection.wrap_database_errors:
            columns = ", ".join(name for name, _ in _COLUMNS)
            cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS usage_staging AS "  # noqa: S608  # nosec B608
                           f"SELECT {columns} FROM {UsageRecord._meta.db_table} WITH NO DATA")
            cursor.execute("TRUNCATE usage_staging")
            with cursor.copy(_COPY.replace(UsageRecord._meta.db_table, "usage_staging", 1)) as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(f"INSERT INTO {UsageRecord._meta.db_table} ({columns}) "  # noqa: S608  # nosec B608
                           f"SELECT {columns} FROM usage_staging ON CONFLICT DO NOTHING")


def _prompt_row(event: dict) -> PromptLog:
    event = usage_events.clean(dict(event))
    return PromptLog(request_id=event["request_id"], tenant_id=event["tenant_id"],
                     created_at=datetime.fromtimestamp(event["ts"], tz=UTC),
                     expires_at=datetime.fromtimestamp(event["prompt_expires_at"], tz=UTC),
                     public_model=event["public_model"], prompt=event["prompt"])


def write(events: list[dict]) -> None:
    """Insert events as usage records, once each (all or none), and note when keys were used."""
    if not events:
        return
    # One transaction (a savepoint inside another): a refused batch leaves nothing
    # half written, and the connection usable for the next try.
    with transaction.atomic():
        if connection.vendor == "postgresql":
            _copy_records(events)
        else:
            UsageRecord.objects.bulk_create([_to_row(e) for e in events], ignore_conflicts=True)
        if prompts := [_prompt_row(e) for e in events if "prompt" in e]:
            PromptLog.objects.bulk_create(prompts, ignore_conflicts=True)
    metrics.shared_inc("gateway_usage_events_written_total", by=len(events))
    last_used: dict[int, float] = {}
    for e in events:
        if e.get("api_key_id"):
            last_used[e["api_key_id"]] = max(e["ts"], last_used.get(e["api_key_id"], 0))
    touch_last_used(last_used)


def _database_answers() -> None:
    """Raise unless the database answers: then a refused write is the events' fault, not an outage."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _write_sorting_out(items: list[tuple[bytes, dict]]) -> list[tuple[bytes, str]]:
    """Write (raw, event) pairs; return (raw, reason) of those the database refuses on their own.

    A refused batch is split in halves, so one bad event among n costs about
    2 log2(n) more inserts. Raises (nothing is lost: the events stay buffered)
    when the database does not answer at all.
    """
    if not items:
        return []
    try:
        write([event for _, event in items])
        return []
    except Exception as exc:
        _database_answers()
        if len(items) == 1:
            return [(items[0][0], f"{type(exc).__name__}: {exc}")]
    middle = len(items) // 2
    return _write_sorting_out(items[:middle]) + _write_sorting_out(items[middle:])


def _dead_letter(refused: list[tuple[bytes, str]]) -> None:
    """Keep refused events where staff can see them, and say so once per event (no traceback)."""
    if not refused:
        return
    rows = []
    for raw, reason in refused:
        # As it was buffered, readable: invalid UTF-8 as \\xNN, NUL as \\u0000 (PostgreSQL refuses it in text).
        text = raw.decode("utf-8", "backslashreplace").replace("\x00", "\\u0000")
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            event = None
        event = event if isinstance(event, dict) else {}
        request_id = event.get("request_id") if isinstance(event.get("request_id"), str) else ""
        tenant_id = event.get("tenant_id") if isinstance(event.get("tenant_id"), int) else None
        rows.append(UsageDeadLetter(request_id=usage_events.safe_text(request_id, 100), tenant_id=tenant_id,
                                    reason=usage_events.safe_text(reason, 2000), event=text))
        log.warning("usage event %r refused by the database, kept as a dead letter: %s",
                    rows[-1].request_id, rows[-1].reason.splitlines()[0][:300] if rows[-1].reason else "")
    UsageDeadLetter.objects.bulk_create(rows)
    metrics.shared_inc("gateway_usage_dead_letters_total", by=len(rows))


def write_or_dead_letter(items: list[tuple[bytes, dict | None]]) -> None:
    """Write buffered (raw, event) pairs; those the database refuses (or that are no event at all,
    event None) become dead letters. Raises, writing nothing of its own, while the database is away."""
    refused = [(raw, "not a usage event (a JSON object)") for raw, event in items if not isinstance(event, dict)]
    refused += _write_sorting_out([(raw, event) for raw, event in items if isinstance(event, dict)])
    _dead_letter(refused)


def _ensure_group(client: redis.Redis, stream: str) -> None:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _drain_local(limit: int) -> int:
    batch = []
    while _local and len(batch) < limit:
        batch.append(_local.popleft())
    try:
        write_or_dead_letter([(orjson.dumps(event, default=str), event) for event in batch])
    except Exception:
        _local.extendleft(reversed(batch))
        raise
    return len(batch)


def drain(limit: int | None = None, *, local_only: bool = False) -> int:
    """Write up to `limit` buffered events to the database; return how many.

    With `local_only`, or while this process finds Redis down (redis_health),
    only the events this process held itself: those then land at once, not
    after a Redis command's timeout. Each stream that holds entries is drained
    in turn, up to `limit` events in all.
    """
    limit = limit or settings.USAGE_FLUSH_BATCH
    if _local or not settings.REDIS_URL or local_only or redis_health.unreachable():
        return _drain_local(limit)
    client = sync_redis()
    done = 0
    for stream in redis_health.holding_entries(client, redis_keys.usage_streams()):
        if done >= limit:
            break
        try:
            done += _drain_stream(client, stream, limit - done)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            redis_health.failed(exc, stream)  # the other shards' streams drain on
    return done


def _drain_stream(client: redis.Redis, stream: str, limit: int) -> int:
    _ensure_group(client, stream)
    consumer = _consumer()
    # This drainer's own entries whose write failed (the database was away), retried
    # at once rather than after USAGE_CLAIM_IDLE_MS; a batch that keeps failing is
    # logged and does not hold up the rest.
    retried = 0
    if own := [entry for _, entries in client.xreadgroup(GROUP, consumer, {stream: "0"}, count=limit) or ()
               for entry in entries]:
        try:
            retried = _write_and_ack(client, stream, own)
        except Exception as exc:
            log.warning("usage drain: %d events failed again (%s); they wait for the claim", len(own), exc)
    # Entries claimed by a drainer that died before acknowledging them.
    _, entries, _ = client.xautoclaim(stream, GROUP, consumer, settings.USAGE_CLAIM_IDLE_MS, "0-0", count=limit)
    if len(entries) < limit:
        fresh = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=limit - len(entries))
        for _, stream_entries in fresh or ():
            entries.extend(stream_entries)
    return retried + _write_and_ack(client, stream, entries)


def _write_and_ack(client: redis.Redis, stream: str, entries: list) -> int:
    if not entries:
        return 0
    # Entries deleted under a dead drainer come back with no fields: just ack them.
    write_or_dead_letter([(fields.get(b"e", b""), _parsed(fields.get(b"e"))) for _, fields in entries if fields])
    ids = [entry_id for entry_id, _ in entries]
    client.xack(stream, GROUP, *ids)
    client.xdel(stream, *ids)
    return len(entries)


def _parsed(raw: bytes | None) -> dict | None:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def drain_all(*, local_only: bool = False) -> int:
    """Write every buffered usage event, and every buffered stored response (usage.responses_store);
    return how many usage events."""
    # Unless local_only, wait for the events another drainer is writing (redis_health.drain_settled).
    total = redis_health.drain_settled(partial(drain, local_only=local_only), redis_keys.usage_streams(),
                                       settle=0 if local_only else 3.0)
    responses_store.drain_all(local_only=local_only)
    return total


def held() -> int:
    """Events this process holds itself (Redis was unreachable when they were recorded)."""
    return len(_local) if settings.REDIS_URL else 0


def held_ids() -> set[str]:
    """Request ids of the events this process holds itself."""
    return {event["request_id"] for event in _local}


async def buffer_state() -> tuple[int, float]:
    """(events waiting in the buffer, seconds the oldest has waited), for /metrics and /readyz."""
    if not settings.REDIS_URL:
        return len(_local), time.time() - _local[0]["ts"] if _local else 0.0
    streams = redis_keys.usage_streams()
    async with async_redis().pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xlen(stream)
            pipe.xrange(stream, count=1)
        replies = await pipe.execute()
    length = sum(replies[0::2])
    # A stream entry's id starts with the milliseconds it was added at.
    oldest = min((int(first[0][0].split(b"-")[0]) for first in replies[1::2] if first), default=None)
    lag = time.time() - oldest / 1000 if oldest is not None else 0.0
    return length, max(0.0, lag)


def pending() -> int:
    """Events buffered and not yet written."""
    if not settings.REDIS_URL:
        return len(_local)
    pipe = sync_redis().pipeline(transaction=False)
    for stream in redis_keys.usage_streams():
        pipe.xlen(stream)
    return sum(pipe.execute())


async def drain_forever(stop: asyncio.Event, *, local_only: bool = False) -> None:
    """The in-process drainer each gateway process runs (see asgi.py).

    With `local_only` (USAGE_DRAIN_IN_PROCESS off: drainers run elsewhere) it
    still writes the events this process held while Redis was unreachable.
    """
    drain_these = partial(drain_all, local_only=local_only)
    while not stop.is_set():
        try:
            await run_orm(drain_these)
        except Exception:
            metrics.inc("gateway_usage_drain_failures_total")
            log.exception("usage drain failed; events stay buffered and are retried")
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.USAGE_FLUSH_INTERVAL)
        except TimeoutError:
            pass
