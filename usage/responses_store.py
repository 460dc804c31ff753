"""Stored responses (the Responses API's `store`): kept per tenant, readable the moment they are saved.

`save` is called on the request path, before the answer's last byte is sent, and writes no
database row: with Redis it is one pipelined round trip (the record under a tenant-scoped key,
an index entry per item id, and an entry on the drain stream); in embedded mode, or while
Redis is down, the record is kept in this process. The usage drainer (usage.recorder.drain_all)
moves buffered records into StoredResponse in bulk, writing each once (unique per tenant and
id). So a follow-up sent the instant an answer ends finds it (from Redis, or this process),
and later ones find it in Redis until its copy expires, then in the database.

Deleting keeps a tombstone for as long as a buffered copy may wait: the drainer, after
inserting, deletes the rows that have one, and DELETE removes the row after setting it, so
whichever runs first, the response does not come back.

Visibility: a record is its tenant's (the key is part of the Redis key and the row's unique
key), is served only to a key that may use its model, and never past its expiry (the tenant's
retention when stored, or its current one if shorter); the retention job deletes the rows.

No secrets: a record holds the request's input items and the response object as the client
received it, nothing else: no headers, no gateway or provider key. They are not redacted,
because `previous_response_id` must replay the conversation exactly.

With Redis down, records saved meanwhile are readable only in the process that saved them
until they are drained to the database.
"""

import logging
import os
import re
import secrets
import socket
import time
from collections import deque
from datetime import UTC, datetime
from functools import partial

import orjson
import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q

from gateway_project.lib import errors, redis_health, redis_keys
from gateway_project.lib.orm_thread import run_orm
from gateway_project.lib.redis_pool import async_redis, redis_failures, sync_redis
from keys.auth import KeyInfo

from .models import StoredResponse

log = logging.getLogger(__name__)

GROUP = "drain"
# The Redis copy outlives any drain delay; after it expires, reads go to the database.
REDIS_TTL = 86_400
# A tombstone outlives the Redis copy and any buffered entry.
TOMBSTONE_TTL = 2 * REDIS_TTL
MAX_CHAIN = 1000
_ID = re.compile(r"[A-Za-z0-9_\-.:]{1,100}")
ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}

# Embedded mode (and Redis down): records by (tenant, id) until drained, the drain buffer, tombstones.
_records: dict[tuple[int, str], dict] = {}
_pending: deque[dict] = deque()
_tombstones: dict[tuple[int, str], float] = {}


# A tenant's records, their items and tombstones and its shard's stream share the shard's hash tag:
# one hash slot, so each pipeline below goes to one node of a cluster (gateway_project/lib/redis_keys.py).
def _record_key(tenant_id: int, response_id: str) -> str:
    return f"gw:{redis_keys.tenant_tag(tenant_id)}:resp:{tenant_id}:{response_id}"


def _tombstone_key(tenant_id: int, response_id: str) -> str:
    return f"gw:{redis_keys.tenant_tag(tenant_id)}:resp-del:{tenant_id}:{response_id}"


def _item_key(tenant_id: int, item_id: str) -> str:
    return f"gw:{redis_keys.tenant_tag(tenant_id)}:resp-item:{tenant_id}:{item_id}"


def _as_listed(items: list[dict]) -> list[dict]:
    """The items as OpenAI lists them: each with an id (msg_/fc_/fco_-style for those that had none),
    and a message given in short form ({"role", "content": "text"}) as a message item with a text
    part, which means the same to every provider."""
    out = []
    for item in items:
        item = dict(item)
        if "type" not in item and "role" in item:
            item["type"] = "message"
        if item.get("type") == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": item["content"]}]
        if not item.get("id"):
            kind = item.get("type") or ("message" if "role" in item else "item")
            item["id"] = f"{ID_PREFIXES.get(kind, kind)}_{secrets.token_hex(24)}"
        out.append(item)
    return out


def _use_redis(tenant_id: int) -> bool:
    return bool(settings.REDIS_URL) and not redis_health.down_for(_record_key(tenant_id, ""))


async def save(key: KeyInfo, response: dict, input_items: list[dict], previous_id: str | None) -> None:
    """Store `response` (its "id" the public resp_ id, its "model" the public model name) and the
    request's own input items (instructions not included) for the key's tenant."""
    if not _ID.fullmatch(str(response.get("id", ""))):
        raise ValueError(f"a stored response needs an id of letters, digits and _-.: (got {response.get('id')!r})")
    now = time.time()
    record = {
        "id": response["id"], "tenant_id": key.tenant_id, "api_key_id": key.id,
        "model": response.get("model") or "", "status": response.get("status") or "",
        "created_at": float(response.get("created_at") or now),
        "expires_at": now + key.response_retention_days * 86_400,
        "previous_response_id": previous_id or "",
        "response": response, "input_items": _as_listed(input_items),
    }
    raw = orjson.dumps(record)
    if _use_redis(key.tenant_id):
        ttl = min(REDIS_TTL, int(record["expires_at"] - now))
        try:
            async with async_redis().pipeline(transaction=False) as pipe:
                pipe.set(_record_key(key.tenant_id, record["id"]), raw, ex=ttl)
                for item_id in _item_ids(record):
                    pipe.set(_item_key(key.tenant_id, item_id), record["id"], ex=ttl)
                pipe.xadd(redis_keys.responses_stream(redis_keys.shard_of(key.tenant_id)), {"r": raw})
                await pipe.execute()
            return
        except redis_failures as exc:
            redis_health.failed(exc, _record_key(key.tenant_id, record["id"]))
            log.warning("stored responses: Redis unreachable; holding %s in process", record["id"])
    record = orjson.loads(raw)  # a copy: the caller's objects may change after this
    _records[(key.tenant_id, record["id"])] = record
    _pending.append(record)


def _item_ids(record: dict) -> list[str]:
    output = record["response"].get("output") or []
    return [item["id"] for item in [*record["input_items"], *output] if isinstance(item, dict) and item.get("id")]


def _visible(key: KeyInfo, record: dict | None) -> dict | None:
    if record is None or record["tenant_id"] != key.tenant_id:
        return None
    now = time.time()
    if record["expires_at"] <= now or record["created_at"] + key.response_retention_days * 86_400 <= now:
        return None
    return record if key.may_use(record["model"]) else None


def _row_record(row: StoredResponse) -> dict:
    return {"id": row.response_id, "tenant_id": row.tenant_id, "api_key_id": row.api_key_id, "model": row.model,
            "status": row.status, "created_at": row.created_at.timestamp(), "expires_at": row.expires_at.timestamp(),
            "previous_response_id": row.previous_response_id, "response": row.response,
            "input_items": row.input_items}


def _from_database(tenant_id: int, response_id: str) -> dict | None:
    row = StoredResponse.objects.filter(tenant_id=tenant_id, response_id=response_id).first()
    return _row_record(row) if row is not None else None


async def load(key: KeyInfo, response_id: str) -> dict | None:
    """The record of `response_id` if this key may see it: a dict with id, tenant_id, api_key_id, model,
    status, created_at and expires_at (unix seconds), previous_response_id ("" if none), response
    (the object as returned) and input_items. None for another tenant's, a deleted or expired one."""
    if not isinstance(response_id, str) or not _ID.fullmatch(response_id):
        return None  # no such id was ever made (and a NUL would not reach the database)
    answered, record = await _buffered(key, response_id)
    if not answered:
        record = await run_orm(_from_database, key.tenant_id, response_id)
    return _visible(key, record)


async def _buffered(key: KeyInfo, response_id: str) -> tuple[bool, dict | None]:
    """(True, record or None if deleted) when this process or Redis knows; (False, None): ask the database."""
    local = (key.tenant_id, response_id)
    if local in _tombstones:
        return True, None
    if local in _records:
        return True, _records[local]
    if _use_redis(key.tenant_id):
        try:
            async with async_redis().pipeline(transaction=False) as pipe:
                pipe.get(_record_key(key.tenant_id, response_id))
                pipe.exists(_tombstone_key(key.tenant_id, response_id))
                raw, deleted = await pipe.execute()
            if deleted or raw is not None:
                return True, None if deleted else orjson.loads(raw)
        except redis_failures as exc:
            redis_health.failed(exc, _record_key(key.tenant_id, response_id))
    return False, None


# The table is StoredResponse's (its default name, checked by the tests that walk a chain in the database).
_CHAIN_SQL = """
WITH RECURSIVE chain(pk, previous, depth) AS (
    SELECT id, previous_response_id, 1 FROM usage_storedresponse WHERE tenant_id = %s AND response_id = %s
    UNION ALL
    SELECT s.id, s.previous_response_id, c.depth + 1 FROM usage_storedresponse s
    JOIN chain c ON s.tenant_id = %s AND s.response_id = c.previous
    WHERE c.previous <> '' AND c.depth < %s)
SELECT pk FROM chain"""


def _chain_from_database(tenant_id: int, response_id: str, depth: int) -> dict[str, dict]:
    """`response_id` and up to `depth` - 1 of its predecessors, by id, in one query (a loop stops at `depth`)."""
    with connection.cursor() as cursor:
        cursor.execute(_CHAIN_SQL, [tenant_id, response_id, tenant_id, depth])
        pks = [pk for (pk,) in cursor.fetchall()]
    return {row.response_id: _row_record(row) for row in StoredResponse.objects.filter(pk__in=pks)}


async def chain(key: KeyInfo, response_id: str, *, strict: bool = True) -> list[dict]:
    """The records from the first of the conversation to `response_id`, oldest first.

    Each link comes from this process or Redis; from the first that is only in the database on,
    the rest of the chain comes in one query. A link that is missing (or not visible to this key)
    raises the 400 OpenAI gives for an unknown previous_response_id, unless not `strict`: then the
    chain starts after it.
    """
    records, seen, wanted = [], set(), response_id
    from_database: dict[str, dict] = {}
    while wanted:
        if wanted in seen or len(records) >= MAX_CHAIN:
            raise errors.bad_request(f"The conversation of '{response_id}' is longer than {MAX_CHAIN} responses "
                                     "or loops back on itself.", param="previous_response_id")
        seen.add(wanted)
        record = None
        if wanted in from_database:
            record = from_database[wanted]
        elif isinstance(wanted, str) and _ID.fullmatch(wanted):
            answered, record = await _buffered(key, wanted)
            if not answered:
                from_database = await run_orm(_chain_from_database, key.tenant_id, wanted, MAX_CHAIN - len(records))
                record = from_database.get(wanted)
        record = _visible(key, record)
        if record is None:
            if strict:
                raise previous_not_found(wanted)
            break
        records.append(record)
        wanted = record["previous_response_id"]
    records.reverse()
    return records


def previous_not_found(response_id: str) -> errors.GatewayError:
    return errors.GatewayError(400, f"Previous response with id '{response_id}' not found.",
                               param="previous_response_id", code="previous_response_not_found")


async def history(key: KeyInfo, response_id: str) -> list[dict]:
    """The conversation up to and including `response_id`, oldest first: each response's input items,
    then its output items. An unknown link is a 400 naming previous_response_id (previous_not_found)."""
    items = []
    for record in await chain(key, response_id):
        items += record["input_items"]
        items += record["response"].get("output") or []
    return items


async def find_items(key: KeyInfo, item_ids: list[str]) -> dict[str, dict]:
    """Items of this tenant's stored responses (input or output) by id, for `item_reference` inputs;
    ids not found (or in responses the key may not see) are left out."""
    found: dict[str, dict] = {}
    wanted = {item_id for item_id in item_ids if isinstance(item_id, str) and _ID.fullmatch(item_id)}
    for record in list(_records.values()):
        if record["tenant_id"] == key.tenant_id:
            _pick(_visible(key, record), wanted, found)
    wanted -= found.keys()
    response_ids: set[str] = set()
    if wanted and _use_redis(key.tenant_id):
        try:
            ids = sorted(wanted)
            for response_id in await async_redis().mget([_item_key(key.tenant_id, i) for i in ids]):
                if response_id is not None:
                    response_ids.add(response_id.decode())
        except redis_failures as exc:
            redis_health.failed(exc, _record_key(key.tenant_id, ""))
    for response_id in response_ids:
        _pick(await load(key, response_id), wanted, found)
    wanted -= found.keys()
    if wanted:
        for record in await run_orm(_with_items, key.tenant_id, sorted(wanted)):
            _pick(_visible(key, record), wanted, found)
    return found


def _pick(record: dict | None, wanted: set[str], found: dict[str, dict]) -> None:
    if record is None:
        return
    for item in [*record["input_items"], *(record["response"].get("output") or [])]:
        if isinstance(item, dict) and item.get("id") in wanted:
            found[item["id"]] = item


def _with_items(tenant_id: int, item_ids: list[str]) -> list[dict]:
    rows = StoredResponse.objects.filter(tenant_id=tenant_id)
    if connection.vendor == "postgresql":
        condition = Q()
        for item_id in item_ids:
            condition |= Q(item_ids__contains=[item_id])
        return [_row_record(row) for row in rows.filter(condition)[:len(item_ids)]]
    # SQLite (embedded mode) cannot search JSON lists: look through the newest responses.
    return [_row_record(row) for row in rows[:1000] if set(row.item_ids) & set(item_ids)]


async def delete(key: KeyInfo, response_id: str) -> bool:
    """Delete a stored response this key may see; False (nothing done) otherwise."""
    if await load(key, response_id) is None:
        return False
    where = (key.tenant_id, response_id)
    # The tombstone first: a drain that inserts after this finds it (see the module docstring).
    # In this process for a record held here (embedded mode, or saved while Redis was down).
    if where in _records or not settings.REDIS_URL:
        _tombstones[where] = time.time()
    _records.pop(where, None)
    if settings.REDIS_URL:
        try:
            async with async_redis().pipeline(transaction=False) as pipe:
                pipe.set(_tombstone_key(*where), 1, ex=TOMBSTONE_TTL)
                pipe.delete(_record_key(*where))
                await pipe.execute()
        except redis_failures as exc:
            redis_health.failed(exc, _record_key(*where))
            raise errors.GatewayError(503, "The gateway cannot reach Redis to delete this response; try again.",
                                      type="server_error", code="store_unavailable") from exc
    await run_orm(_delete_rows, [where])
    return True


def _delete_rows(where: list[tuple[int, str]]) -> int:
    deleted = 0
    for tenant_id, response_id in where:
        deleted += StoredResponse.objects.filter(tenant_id=tenant_id, response_id=response_id).delete()[0]
    return deleted


async def input_items(key: KeyInfo, response_id: str, *, after: str | None = None, before: str | None = None,
                      limit: int = 20, order: str = "desc") -> dict | None:
    """The items the response was made from (its conversation's earlier items, then its own input), as
    OpenAI lists them: {"object": "list", "data", "first_id", "last_id", "has_more"}. None if not visible."""
    records = await chain(key, response_id, strict=False)
    if not records or records[-1]["id"] != response_id:
        return None
    items = []
    for record in records[:-1]:
        items += record["input_items"]
        items += record["response"].get("output") or []
    items += records[-1]["input_items"]
    if order == "desc":
        items.reverse()
    ids = [item.get("id") for item in items]
    for name, cursor in (("after", after), ("before", before)):
        if cursor and cursor not in ids:
            raise errors.bad_request(f"No input item with id '{cursor}' in response '{response_id}'.", param=name)
    start = ids.index(after) + 1 if after else 0
    end = ids.index(before) if before else len(items)
    page = items[start:end]
    data = page[:limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(page) > limit}


# --- Draining to the database (usage.recorder.drain_all runs it) ---------------------------------------


def _row(record: dict) -> StoredResponse:
    return StoredResponse(
        response_id=record["id"], tenant_id=record["tenant_id"], api_key_id=record["api_key_id"],
        model=record["model"], status=record["status"],
        created_at=datetime.fromtimestamp(record["created_at"], tz=UTC),
        expires_at=datetime.fromtimestamp(record["expires_at"], tz=UTC),
        previous_response_id=record["previous_response_id"], response=record["response"],
        input_items=record["input_items"], item_ids=_item_ids(record))


def write(records: list[dict]) -> None:
    """Insert records (once each), then drop those deleted meanwhile (their tombstones).

    A record the database refuses on its own (a NUL character, which JSONB cannot hold, say) is
    logged and left out, so the rest keep draining; while the database does not answer, this raises
    and everything stays buffered.
    """
    if not records:
        return
    try:
        _insert(records)
    except Exception:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")  # raises while the database is away
        for record in records:
            try:
                _insert([record])
            except Exception as exc:
                log.warning("stored response %s refused by the database, not stored: %s", record["id"], exc)
    where = [(r["tenant_id"], r["id"]) for r in records]
    deleted = [w for w in where if w in _tombstones]
    if settings.REDIS_URL and not redis_health.unreachable():
        pipe = sync_redis().pipeline(transaction=False)
        for w in where:
            pipe.exists(_tombstone_key(*w))
        deleted += [w for w, gone in zip(where, pipe.execute(), strict=True) if gone]
    _delete_rows(deleted)


def _insert(records: list[dict]) -> None:
    with transaction.atomic():
        StoredResponse.objects.bulk_create([_row(r) for r in records], ignore_conflicts=True, batch_size=200)


def _drain_local(limit: int) -> int:
    batch = [_pending.popleft() for _ in range(min(limit, len(_pending)))]
    try:
        write(batch)
    except Exception:
        _pending.extendleft(reversed(batch))
        raise
    for record in batch:  # now readable from the database
        _records.pop((record["tenant_id"], record["id"]), None)
    return len(batch)


def _forget_old_tombstones() -> None:
    cutoff = time.time() - TOMBSTONE_TTL
    for where in [w for w, when in _tombstones.items() if when < cutoff]:
        _tombstones.pop(where, None)


def drain(limit: int | None = None, *, local_only: bool = False) -> int:
    """Write up to `limit` buffered records to the database; return how many (as usage.recorder.drain)."""
    limit = limit or settings.USAGE_FLUSH_BATCH
    _forget_old_tombstones()
    if _pending or not settings.REDIS_URL or local_only or redis_health.unreachable():
        return _drain_local(limit)
    client, done = sync_redis(), 0
    for stream in redis_health.holding_entries(client, redis_keys.responses_streams()):
        if done < limit:
            done += _drain_stream(client, stream, limit - done)
    return done


def _drain_stream(client, stream: str, limit: int) -> int:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    # This drainer's own unacknowledged entries first (a failed write), then a dead drainer's, then new ones.
    entries = [e for _, es in client.xreadgroup(GROUP, consumer, {stream: "0"}, count=limit) or () for e in es]
    if len(entries) < limit:
        entries += client.xautoclaim(stream, GROUP, consumer, settings.USAGE_CLAIM_IDLE_MS, "0-0",
                                     count=limit - len(entries))[1]
    if len(entries) < limit:
        entries += [e for _, es in client.xreadgroup(GROUP, consumer, {stream: ">"}, count=limit - len(entries))
                    or () for e in es]
    if not entries:
        return 0
    write([orjson.loads(fields[b"r"]) for _, fields in entries if fields and b"r" in fields])
    ids = [entry_id for entry_id, _ in entries]
    client.xack(stream, GROUP, *ids)
    client.xdel(stream, *ids)
    return len(entries)


def drain_all(*, local_only: bool = False) -> int:
    """Write every buffered record; unless `local_only`, wait for those another drainer is writing
    (redis_health.drain_settled)."""
    return redis_health.drain_settled(partial(drain, local_only=local_only), redis_keys.responses_streams(),
                                      settle=0 if local_only else 3.0)
