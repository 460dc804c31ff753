"""The semantic cache: a hit for a question close enough to one already answered, in the same scope.

The scope is everything but the conversation's wording: tenant, public model or route, endpoint,
system prompt, tools and every other field of the request that changes the answer (temperature,
response format...). Within it, the conversation (its turns before the last, and the last user
turn) is embedded (embedding.py), and the nearest stored vector is looked up in a usearch HNSW
index (cosine, f16) kept in each process. A vector store appends (entry key, vector) to a Redis list
per scope, which every process reads from where it left off, in one round trip with each lookup; the
answer itself is the exact cache's entry (store.py), so it expires and is purged with it.
"""

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from usearch.index import Index

from gateway_project.lib import redis_health
from gateway_project.lib.redis_pool import async_redis, redis_failures

from . import hashing

log = logging.getLogger(__name__)

CONTEXT_FIELDS = ("messages", "prompt", "input")
LOAD_IN_THREAD = 2000  # vectors read at once beyond which indexing leaves the event loop


@dataclass(slots=True)
class Scoped:
    """One scope's index in this process: labels are positions in `keys`; `synced` items of the list read."""

    index: Index | None = None
    keys: list[str] = field(default_factory=list)
    synced: int = 0
    loading: bool = False  # a large catch-up is being indexed in a thread: lookups miss meanwhile


_indexes: dict[str, Scoped] = {}


def question(call) -> tuple[str, str] | None:
    """(scope key, text to embed) of a call the semantic cache can answer, else None (the last turn
    is not the user's, say a tool result: that answer depends on more than wording)."""
    body = call.body
    if call.endpoint == "completions":
        prompt = body.get("prompt")
        return (_scope(call, []), prompt) if isinstance(prompt, str) and prompt else None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or messages[-1].get("role") != "user":
        return None
    system = [m for m in messages if m.get("role") in ("system", "developer")]
    turns = [f"{m.get('role')}: {_text(m.get('content'))}" for m in messages if m not in system]
    return _scope(call, system), "\n".join(turns)


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _scope(call, system: list) -> str:
    kept = {name: value for name, value in call.body.items() if name not in CONTEXT_FIELDS}
    kept["system"] = system
    digest = hashing.entry_id(hashing.entry_key(call.key.tenant_id, call.model, call.endpoint, kept))
    return f"{hashing.model_prefix(call.key.tenant_id, call.model)}sem-{digest}"


async def nearest(scope: str, vector: np.ndarray) -> tuple[str, float] | None:
    """The entry key of the closest question in `scope`, and its cosine similarity."""
    scoped = _indexes.setdefault(scope, Scoped())
    if settings.REDIS_URL and not await _sync(scope, scoped):
        return None
    if scoped.index is None or len(scoped.keys) == 0:
        return None
    found = scoped.index.search(vector, 1)
    if len(found.keys) == 0:
        return None
    return scoped.keys[int(found.keys[0])], 1.0 - float(found.distances[0])


async def add(scope: str, key: str, vector: np.ndarray, ttl: int) -> None:
    item = key.encode() + b"\n" + vector.astype(np.float32).tobytes()
    if not settings.REDIS_URL:
        _append(_indexes.setdefault(scope, Scoped()), [item])
        return
    if redis_health.down_for(scope):
        return
    try:
        async with async_redis().pipeline(transaction=False) as pipe:
            pipe.rpush(scope, item)
            pipe.ltrim(scope, -settings.CACHE_SEMANTIC_MAX_ENTRIES, -1)
            pipe.expire(scope, ttl)
            await pipe.execute()
    except redis_failures as exc:
        redis_health.failed(exc, scope)


async def _sync(scope: str, scoped: Scoped) -> bool:
    """Read what other processes (and this one) added since the last read: one round trip. A large
    catch-up (a process that starts with a full list) is indexed in a thread, off the event loop."""
    if redis_health.down_for(scope) or scoped.loading:
        return False
    start = scoped.synced
    try:
        async with async_redis().pipeline(transaction=True) as pipe:  # no push in between
            pipe.llen(scope)
            pipe.lrange(scope, start, -1)
            length, items = await pipe.execute()
        if scoped.synced != start or scoped.loading:
            return True  # another lookup of this process caught up meanwhile
        if length != start + len(items):
            # Trimmed, purged or expired under us: start over from what the list holds.
            scoped.index, scoped.keys, scoped.synced = None, [], 0
            items = await async_redis().lrange(scope, 0, -1)
    except redis_failures as exc:
        redis_health.failed(exc, scope)
        return False
    if len(items) < LOAD_IN_THREAD:
        _append(scoped, items)
        return True
    scoped.loading = True
    try:
        await asyncio.to_thread(_append, scoped, items)
    finally:
        scoped.loading = False
    return True


def _append(scoped: Scoped, items: list[bytes]) -> None:
    if not items:
        return
    keys, vectors = [], []
    for item in items:
        key, _, raw = item.partition(b"\n")
        keys.append(key.decode())
        vectors.append(np.frombuffer(raw, dtype=np.float32))
    if scoped.index is None:
        scoped.index = Index(ndim=len(vectors[0]), metric="cos", dtype="f16")
    if any(len(v) != scoped.index.ndim for v in vectors):
        return  # another embedding model's vectors (the policy changed): not comparable
    start = len(scoped.keys)
    scoped.index.add(np.arange(start, start + len(keys)), np.vstack(vectors))
    scoped.keys.extend(keys)
    scoped.synced += len(items)
    if not settings.REDIS_URL and len(scoped.keys) > settings.CACHE_SEMANTIC_MAX_ENTRIES:
        _indexes.pop(next(k for k, v in _indexes.items() if v is scoped))  # embedded mode: start over


def forget(prefix: str) -> None:
    """Drop this process's indexes under `prefix` (a purge)."""
    for scope in [s for s in _indexes if s.startswith(prefix)]:
        del _indexes[scope]
