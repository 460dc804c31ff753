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

The hot path only reads the module-level boolean `down`. The probe is a
thread rather than a task so that it belongs to no event loop: it outlives
any one of them and also serves the synchronous callers (breakers.py).
"""

import logging
import os
import threading
import time

import redis
from django.conf import settings

from gateway_project.lib import metrics

log = logging.getLogger(__name__)

down = False
_since = 0.0
# Held while `down` changes. Invariant: `down` is set exactly while a probe thread runs.
_lock = threading.Lock()


def failed(exc: BaseException) -> None:
    """A Redis command failed with `exc`: if Redis did not answer, mark it down and start the probe.

    An error reply (a script error, an out-of-memory refusal) means Redis
    answered, and a full pool (no free connection within its timeout) means
    load, not an outage: neither counts.
    """
    global down, _since
    if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
        return
    if str(exc) == "No connection available.":  # redis.asyncio.BlockingConnectionPool's words
        return
    with _lock:
        if down:
            return
        down, _since = True, time.monotonic()
        threading.Thread(target=_probe, name="redis-probe", daemon=True).start()
    metrics.inc("gateway_redis_unreachable_total")
    log.warning("Redis unreachable (%s: %s): serving without it until it answers a PING",
                type(exc).__name__, exc)


def _probe() -> None:
    global down
    try:
        _ping_until_answered()
        log.info("Redis answers again after %.1f s: using it again", time.monotonic() - _since)
    except Exception:
        log.exception("Redis probe failed; using Redis again rather than skipping it for good")
    finally:
        with _lock:
            down = False


def _ping_until_answered() -> None:
    interval = settings.REDIS_PROBE_INTERVAL
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=interval, socket_connect_timeout=interval)
    try:
        while True:
            try:
                if client.ping():
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(interval)
    finally:
        client.close()


def _forget_in_child() -> None:
    """A forked child has no probe thread: it starts unmarked and finds out for itself."""
    global down, _lock
    down, _lock = False, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
