"""Where a tenant's keys live: its shard's hash tag, so that one Lua script reaches all of them.

A Redis Cluster serves each key from the node that owns its hash slot, and a
script may touch only keys of one slot. A call's admission and settlement
touch the tenant's limit counters, its reservations, the call's in-flight
entry, its cache entry and the usage stream, so all of them carry the same
hash tag: the tenant's shard, `{gN}` with N = tenant id mod REDIS_SHARDS.
A tenant's keys thus share one slot (one node), while tenants, and the usage
and stored-response streams (one per shard), spread over REDIS_SHARDS slots.

The tags are chosen so that shard N's slot falls in the Nth of REDIS_SHARDS
equal ranges of the 16384 slots: a cluster whose masters hold equal
contiguous ranges (as `redis-cli --cluster create` makes them) gets an equal
share of shards on each master. On one Redis the tags change nothing.
"""

from functools import cache

from django.conf import settings
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from .settings_cache import conf


@cache
def _tags(shards: int) -> tuple[str, ...]:
    tags = []
    for n in range(shards):
        low, high = n * REDIS_CLUSTER_HASH_SLOTS // shards, (n + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
        suffix = 0
        while not low <= key_slot(f"g{n}.{suffix}".encode()) < high:
            suffix += 1
        tags.append(f"{{g{n}.{suffix}}}")
    return tuple(tags)


def shard_of(tenant_id: int) -> int:
    return tenant_id % conf.REDIS_SHARDS


def tag(shard: int) -> str:
    """The hash tag of a shard, braces included."""
    return _tags(conf.REDIS_SHARDS)[shard]


def tenant_tag(tenant_id: int) -> str:
    return tag(shard_of(tenant_id))


def shards() -> range:
    return range(settings.REDIS_SHARDS)


def usage_stream(shard: int) -> str:
    return f"gw:{tag(shard)}:usage"


def usage_streams() -> list[str]:
    return [usage_stream(n) for n in shards()]


def responses_stream(shard: int) -> str:
    return f"gw:{tag(shard)}:responses"


def responses_streams() -> list[str]:
    return [responses_stream(n) for n in shards()]


def reservations(tenant_id: int) -> str:
    """The tenant's shard's reservation expiry set: the key the admission scripts are routed by."""
    return f"gw:{tenant_tag(tenant_id)}:resv:exp"


def limit_key(tenant_id: int, limit_id: int, suffix: str) -> str:
    """A limit's counter (suffix req, tpm, conc, over, or p:START; usage/limit_scripts.py)."""
    return f"gw:{tenant_tag(tenant_id)}:lim:{limit_id}:{suffix}"
