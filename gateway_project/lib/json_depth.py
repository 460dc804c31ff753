"""How deep a parsed JSON value nests, asked cheaply: every API refuses bodies nested past
GATEWAY_MAX_JSON_DEPTH, which the gateway could parse but not write back (orjson writes at
most ORJSON_MAX_DEPTH levels) or not even parse (Python's json recurses, a RecursionError)."""

import threading

import orjson

from .settings_cache import conf

# orjson writes at most this many levels of objects and arrays (JSONEncodeError beyond), and
# reads at most 1024: a body nested in between parsed, then failed when forwarded upstream.
ORJSON_MAX_DEPTH = 254

_wrappers = threading.local()


def too_deep(value, raw: bytes | None = None) -> bool:
    """Whether `value` nests deeper than GATEWAY_MAX_JSON_DEPTH (`value` itself is level 1).

    Given the `raw` JSON it was parsed from, a body with no more opening brackets than the
    limit is answered from two byte counts: it cannot nest deeper than it has brackets.

    Asked of orjson's encoder, in C: inside ORJSON_MAX_DEPTH - limit arrays, a value is
    refused exactly when it is deeper than the limit (anything orjson or Python's json
    parsed, orjson writes, but for depth). That costs a fraction of the parse
    (docs/security.md has the figures), where walking the value in Python would cost more
    than the parse itself. The wrapping arrays are made once per thread, their innermost
    slot filled for the check.
    """
    limit = conf.GATEWAY_MAX_JSON_DEPTH
    if raw is not None and raw.count(b"{") + raw.count(b"[") <= limit:
        return False
    wrapper = getattr(_wrappers, "value", None)
    if wrapper is None or wrapper[0] != limit:
        slot = outer = [None]
        for _ in range(ORJSON_MAX_DEPTH - limit - 1):
            outer = [outer]
        wrapper = _wrappers.value = (limit, slot, outer)
    _, slot, outer = wrapper
    slot[0] = value
    try:
        orjson.dumps(outer)
    except orjson.JSONEncodeError:
        return True
    finally:
        slot[0] = None
    return False
