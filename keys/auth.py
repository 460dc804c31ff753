"""Authenticate a gateway key on the hot path.

The key is checked for shape and checksum, hashed, and looked up in an
in-process cache; the database is read only on a miss. Unknown keys are cached
too (briefly), so a flood of bad keys cannot reach the database. While the
database is unreachable, cached answers keep serving past their expiry.
"""

import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import DatabaseError, connection

from gateway_project.lib import config_cache, errors
from gateway_project.lib.orm_thread import run_orm
from gateway_project.lib.settings_cache import conf

from . import hashing
from .models import ApiKey

# Entries cached at most; the cache is emptied when full (a bad-key flood
# must not grow memory without bound).
MAX_ENTRIES = 100_000
NEGATIVE_TTL = 5.0


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    tenant_id: int
    prefix: str
    allowed_models: frozenset[str]
    tenant_allowed_models: frozenset[str]
    expires_at: float | None
    default_model: str = ""
    tenant_slug: str = ""
    # Days the tenant keeps logged prompts; 0 when it does not log them.
    prompt_retention_days: int = 0
    # Days the tenant's stored responses (usage/responses_store.py) are kept, at least one.
    response_retention_days: int = 30

    def may_use(self, model: str) -> bool:
        if self.allowed_models and model not in self.allowed_models:
            return False
        return not self.tenant_allowed_models or model in self.tenant_allowed_models


_cache: dict[str, tuple[KeyInfo | None, float]] = {}
_cache_generation = -1


def _rows():
    return (
        ApiKey.objects.active()
        .select_related("tenant")
        .only("id", "tenant_id", "prefix", "key_hash", "allowed_models", "expires_at", "default_model",
              "tenant__allowed_models", "tenant__default_model", "tenant__slug", "tenant__log_prompts",
              "tenant__prompt_retention_days", "tenant__retention_days")
    )


def _load(digest: str) -> KeyInfo | None:
    row = _rows().filter(key_hash=digest).first()
    # The lookup is by hash already; comparing again in constant time keeps a
    # case-insensitive collation or an index quirk from ever matching loosely.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return info_for(row)


def info_for(row: ApiKey) -> KeyInfo:
    """What the hot path needs of a key row (with its tenant)."""
    return KeyInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        prefix=row.prefix,
        allowed_models=frozenset(row.allowed_models or ()),
        tenant_allowed_models=frozenset(row.tenant.allowed_models or ()),
        expires_at=row.expires_at.timestamp() if row.expires_at else None,
        default_model=row.default_model or row.tenant.default_model,
        tenant_slug=row.tenant.slug,
        prompt_retention_days=max(1, row.tenant.prompt_retention_days) if row.tenant.log_prompts else 0,
        response_retention_days=max(1, settings.RESPONSES_RETENTION_DAYS if row.tenant.retention_days is None
                                    else row.tenant.retention_days),
    )


async def authenticate(raw_key: str | None) -> KeyInfo:
    global _cache_generation
    if not raw_key:
        raise errors.missing_key()
    if not hashing.is_well_formed(raw_key):
        raise errors.invalid_key()
    digest = hashing.hash_key(raw_key)
    generation = config_cache.generation("keys")
    if generation != _cache_generation:
        _cache.clear()
        _cache_generation = generation
    now = time.monotonic()
    entry = _cache.get(digest)
    ttl = conf.GATEWAY_CONFIG_CACHE_SECONDS if entry and entry[0] else NEGATIVE_TTL
    if entry is None or now - entry[1] > ttl:
        try:
            info = await run_orm(_load, digest)
        except DatabaseError:
            if entry is None:
                raise
            # The database is away: keep trusting what it said last, and ask again in a second.
            info, now = entry[0], now - ttl + 1
        if len(_cache) >= MAX_ENTRIES:
            _cache.clear()
        if config_cache.generation("keys") == generation:
            _cache[digest] = (info, now)
    else:
        info = entry[0]
    if info is None or (info.expires_at is not None and info.expires_at <= time.time()):
        raise errors.invalid_key()
    return info


def key_from_headers(headers) -> str | None:
    """The key from `Authorization: Bearer`, `api-key` or `x-api-key`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return headers.get("api-key") or headers.get("x-api-key")


# A key in constant use has its row rewritten at most this often by one drainer: a busy key's
# row is the hottest in the database, and its last use is shown to the minute.
LAST_USED_RESOLUTION = 30.0
_written: dict[int, float] = {}

# One statement for the whole batch; a key row another drainer is writing just now is skipped,
# not waited for (that one writes a time as recent, give or take a batch).
_TOUCH = """
UPDATE keys_apikey AS k SET last_used_at = v.at
FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, at)
WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.at)
  AND k.id IN (SELECT id FROM keys_apikey WHERE id = ANY(%s) FOR UPDATE SKIP LOCKED)
"""


def touch_last_used(last_used: dict[int, float]) -> None:
    """Write last-used times in bulk (called by the usage drain, off the hot path)."""
    due = {key_id: ts for key_id, ts in last_used.items()
           if ts - _written.get(key_id, 0.0) >= LAST_USED_RESOLUTION}
    if not due:
        return
    if connection.vendor == "postgresql":
        ids, times = list(due), [datetime.fromtimestamp(ts, tz=UTC) for ts in due.values()]
        with connection.cursor() as cursor:
            cursor.execute(_TOUCH, [ids, times, ids])
    else:
        for key_id, ts in due.items():
            when = datetime.fromtimestamp(ts, tz=UTC)
            ApiKey.objects.filter(id=key_id).exclude(last_used_at__gte=when).update(last_used_at=when)
    _written.update(due)
