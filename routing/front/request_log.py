"""One log line per request, on the logger "gateway.request", written after the call is over.

The line carries what an operator needs to find a call and what it cost:
request ids, tenant, key prefix (never the key), endpoint, route, model,
provider, deployment, status, tokens, cost, latency, time to first token and
attempts. Never the prompt or the answer, unless the tenant opted into prompt
logging; then a redacted copy (usage.prompts) travels with it.

The hot path only appends the call's fields to a queue; a background task
(see asgi.py) writes the lines a few times a second, after the responses
have gone out, as one log record per write (gateway_project.lib.log_format
formats it as one line per request). Set REQUEST_LOG=false to turn the lines off; LOG_FORMAT picks
JSON or text (gateway_project.lib.log_format).
"""

import asyncio
import logging
import time
from collections import deque

from django.conf import settings

log = logging.getLogger("gateway.request")

# Beyond this many lines waiting (no flusher running: a server without the
# lifespan protocol), lines are written at once rather than piling up.
MAX_QUEUED = 10_000
_queue: deque[dict] = deque()
_enabled = settings.REQUEST_LOG


def emit(call) -> None:
    if not _enabled:
        return
    # A copy: in embedded mode the recorded event itself waits in the usage buffer.
    fields = dict(call.recorded) if call.recorded is not None else call.event()
    fields["tenant"] = call.key.tenant_slug if call.key else ""
    fields["ts"] = time.time()  # the line's time: when the call ended (the event's is when it began)
    _queue.append(fields)
    if len(_queue) > MAX_QUEUED:
        flush()


def flush() -> int:
    """Write every queued line, as one log record (gateway_project.lib.log_format); return how many."""
    if not _queue:
        return 0
    batch = list(_queue)
    _queue.clear()
    log.info("%d requests", len(batch), extra={"requests": batch})
    return len(batch)


async def flush_forever(stop: asyncio.Event, interval: float = 0.2) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
        flush()
