"""Whether Redis answers, as this process last found: so that an outage costs one timeout, not one per call.

A Redis that hangs (paused, swapping, behind a network blackhole) does not
refuse commands, it never answers them: each waits out the pool's socket
timeout (5 s, redis_pool.py) before failing. Without a memo every Redis step
of every call would wait it out, and each call would take 5 to 15 s for as
long as the outage lasts.

So the first Redis command that fails with a connection error or a timeout
marks Redis down for this process (`failed`). While `down` is set, the hot
path's Redis steps skip Redis at once and take the fallback they take after a
failure (docs/limits.md's offline policy, usage held in the process, no
in-flight entry), and one background thread PINGs Redis every
REDIS_PROBE_INTERVAL seconds, each PING waiting at most as long. The first
answer clears the mark: a Redis that comes back is used again within about
that interval.

On a Redis Cluster the memo is kept per node, as the keys find them: a
failure of a command on a key of a tenant's shard (gateway_project/lib/
redis_keys.py) marks that shard, whose keys all live on one node, and only
calls of tenants in marked shards take the fallback (`down_for(key)`); the
probe asks for a key of the shard, which finds whichever node serves the slot
by then (a replica promoted in its place included). A failure on any other key
marks `down`, the shared keys' memo, cleared once every master of the cluster
answers. On one Redis or behind Sentinel there is one node: any failure marks
`down`, and the probe's PING goes to whichever master the sentinels name.

The hot path only reads the module-level boolean `down` (and, in a cluster,
the set of shards marked). The probe is a thread rather than a task so that
it belongs to no event loop: it outlives any one of them and also serves the
synchronous callers (breakers.py).
"""

import logging
import os
import threading
import time

import redis
from django.conf import settings

from gateway_project.lib import metrics, redis_pool

log = logging.getLogger(__name__)

down = False
# Shards of a cluster whose node did not answer (tags, braces included).
down_shards: frozenset[str] = frozenset()
_since = 0.0
_probing = False
# Held while the marks change. Invariant: something is marked exactly while a probe thread runs.
_lock = threading.Lock()


def _shard_tag(key: str | bytes | None) -> str | None:
    """The shard tag of a tenant's key in a cluster (None: a shared key, or not a cluster)."""
    if key is None or redis_pool.topology().kind != redis_pool.CLUSTER:
        return None
    key = key.decode() if isinstance(key, bytes) else key
    start = key.find("{g")
    end = key.find("}", start)
    return key[start:end + 1] if start >= 0 and end > start else None


def down_for(key: str | bytes) -> bool:
    """Whether this process finds the node serving `key` down (on one Redis: whether Redis is)."""
    if not down and not down_shards:
        return False
    tag = _shard_tag(key)
    return tag in down_shards if tag is not None else down


def unreachable() -> bool:
    """Whether this process finds all of Redis down: the one Redis (or Sentinel's master) marked.
    A cluster's nodes are judged one by one (`down_for`)."""
    return down and redis_pool.topology().kind != redis_pool.CLUSTER


def holding_entries(client, streams: list[str]) -> list[str]:
    """Those of `streams` (not marked down) that hold entries, read or not: one pipelined round trip
    (on a cluster, one per node, sent at once). A stream whose node does not answer is marked and
    left for later; the others drain on."""
    streams = [stream for stream in streams if not down_for(stream)]
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xlen(stream)
    try:
        lengths = pipe.execute(raise_on_error=False)
    except (redis.ConnectionError, redis.TimeoutError):
        lengths = [_length(client, stream) for stream in streams]
    return [stream for stream, length in zip(streams, lengths, strict=True)
            if not isinstance(length, Exception) and length]


def drain_settled(drain, streams: list[str], settle: float = 3.0) -> int:
    """Run `drain()` until it finds nothing, then, while `streams` still hold entries another
    drainer has read and not yet written (a gateway's in-process drainer, a Celery worker), wait
    for that write, up to `settle` seconds, draining again meanwhile (a dead drainer's entries are
    claimed once idle). So "drain everything" means everything is in the database when it
    returns, whoever wrote it. Returns what this process wrote."""
    total, deadline = 0, time.monotonic() + settle
    while True:
        while count := drain():
            total += count
        if not settings.REDIS_URL or unreachable() or time.monotonic() >= deadline:
            return total
        if not holding_entries(redis_pool.sync_redis(), streams):
            return total
        time.sleep(0.02)


def _length(client, stream: str) -> int | Exception:
    try:
        return client.xlen(stream)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        failed(exc, stream)
        return exc


def failed(exc: BaseException, key: str | bytes | None = None) -> None:
    """A Redis command (on `key`, if it had one) failed with `exc`: if Redis did not answer, mark
    it down (in a cluster, the node of `key`'s shard) and start the probe.

    An error reply (a script error, an out-of-memory refusal) means Redis
    answered, and a full pool (no free connection within its timeout) means
    load, not an outage: neither counts.
    """
    global down, down_shards, _since, _probing
    if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
        return
    if str(exc) == "No connection available." or isinstance(exc, redis.exceptions.MaxConnectionsError):
        return  # redis.asyncio.BlockingConnectionPool's words, and a cluster node's full pool
    tag = _shard_tag(key)
    with _lock:
        if (tag in down_shards) if tag is not None else down:
            return
        if tag is not None:
            down_shards = down_shards | {tag}
        else:
            down = True
        if not _probing:
            _probing, _since = True, time.monotonic()
            threading.Thread(target=_probe, name="redis-probe", daemon=True).start()
    metrics.inc("gateway_redis_unreachable_total")
    log.warning("Redis unreachable (%s: %s)%s: serving without it until it answers", type(exc).__name__, exc,
                f" for shard {tag}" if tag else "")


def _probe() -> None:
    global down, down_shards, _probing
    interval = settings.REDIS_PROBE_INTERVAL
    client = None
    try:
        while True:
            if client is None:
                client = _probe_client(interval)
            answered = {tag for tag in down_shards if client is not None and _answers(client, tag)}
            everyone = down and client is not None and _answers(client, None)
            with _lock:
                down_shards = down_shards - answered
                down = down and not everyone
                if not down and not down_shards:
                    _probing = False
                    break
            time.sleep(interval)
        log.info("Redis answers again after %.1f s: using it again", time.monotonic() - _since)
    except Exception:
        log.exception("Redis probe failed; using Redis again rather than skipping it for good")
        with _lock:
            down, down_shards, _probing = False, frozenset(), False
    finally:
        if client is not None:
            client.close()


def _probe_client(interval: float):
    try:  # a cluster client asks a node for the slot map as it is made
        return redis_pool.new_sync(redis_pool.topology(), timeout=interval)
    except Exception:
        return None


def _answers(client, tag: str | None) -> bool:
    """One probe: a read of a key of the shard `tag` (it reaches the node serving that slot now), or a
    PING of the one Redis, or of every master of the cluster."""
    try:
        if tag is not None:
            client.exists(f"gw:{tag}:probe")
            return True
        if isinstance(client, redis_pool.RedisCluster):
            return bool(client.ping(target_nodes=redis_pool.RedisCluster.PRIMARIES))
        return bool(client.ping())
    except Exception:  # redis-py's cluster errors are not all RedisErrors
        return False


def _forget_in_child() -> None:
    """A forked child has no probe thread: it starts unmarked and finds out for itself."""
    global down, down_shards, _probing, _lock
    down, down_shards, _probing, _lock = False, frozenset(), False, threading.Lock()



os.register_at_fork(after_in_child=_forget_in_child)
