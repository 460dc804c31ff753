"""The exact cache's key: a hash of the tenant, the public model or route, the endpoint and the request
as normalised (fields that do not change the answer left out, key order ignored)."""

import hashlib

import orjson

from gateway_project.lib import redis_keys

# Request fields that change nothing in the answer; everything else (temperature, seed, tools,
# response format, max tokens...) is part of the key.
IGNORED = frozenset({"model", "stream", "stream_options", "user", "metadata", "store", "safety_identifier",
                     "prompt_cache_key", "service_tier", "background"})


def model_tag(model: str) -> str:
    """A fixed-width tag of a model name (a name may hold any character, a Redis pattern may not)."""
    return hashlib.blake2b(model.encode(), digest_size=6).hexdigest()


def tenant_prefix(tenant_id: int) -> str:
    """gw:T:cache:<tenant>:, T the tenant's hash tag: the admission script reads an entry, and the
    settle script writes one, in the slot of the tenant's other keys (gateway_project/lib/redis_keys.py)."""
    return f"gw:{redis_keys.tenant_tag(tenant_id)}:cache:{tenant_id}:"


def model_prefix(tenant_id: int, model: str) -> str:
    return f"{tenant_prefix(tenant_id)}{model_tag(model)}:"


def entry_key(tenant_id: int, model: str, endpoint: str, body: dict) -> str:
    """gw:T:cache:<tenant>:<model tag>:<digest of endpoint and normalised body>."""
    kept = {name: value for name, value in body.items() if name not in IGNORED}
    digest = hashlib.blake2b(endpoint.encode() + b"\0" + orjson.dumps(kept, option=orjson.OPT_SORT_KEYS),
                             digest_size=16).hexdigest()
    return model_prefix(tenant_id, model) + digest


def entry_id(key: str) -> str:
    """The part of a key a client sees (x-gateway-cache-key) and may purge by."""
    return key.rsplit(":", 1)[-1]
