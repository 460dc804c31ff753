"""The ASGI application: the API and the operator's endpoints (health, readiness,
metrics) on lean handlers, everything else on Django's.

It also speaks the ASGI lifespan protocol, which Django does not: at startup it
starts this process's background work (draining the usage buffer, listening for
configuration changes, pushing metrics, writing request log lines, beating and
reaping the streams of dead workers, counting the cache entries Redis expired), and at
shutdown it stops them and writes every usage event still buffered, so a
normal stop loses nothing.
"""

import asyncio
import ctypes
import gc
import logging
import os
import signal
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
django_application = get_asgi_application()

from django.conf import settings  # noqa: E402  (after Django is set up)

from gateway_project import operator  # noqa: E402
from gateway_project.lib import (  # noqa: E402
    config_cache,  # noqa: E402
    metrics,
    redis_health,
    tokens,  # noqa: E402
)
from gateway_project.lib.orm_thread import run_orm  # noqa: E402
from routing import stats, upstream  # noqa: E402
from routing.cache import store as cache_store  # noqa: E402
from routing.front import request_log, tracing  # noqa: E402
from routing.front.handler import ApiHandler  # noqa: E402
from usage import inflight, recorder  # noqa: E402

log = logging.getLogger(__name__)
api_application = ApiHandler()


def _sample_gauges() -> None:
    metrics.gauge_set("gateway_usage_events_held", recorder.held())


class Lifespan:
    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    async def startup(self) -> None:
        local_only = bool(settings.REDIS_URL) and not settings.USAGE_DRAIN_IN_PROCESS
        tracing.setup()
        self.tasks.append(asyncio.create_task(recorder.drain_forever(self.stop, local_only=local_only)))
        self.tasks.append(asyncio.create_task(metrics.push_forever(
            self.stop, sample=_sample_gauges, on_redis_error=redis_health.failed)))
        self.tasks.append(asyncio.create_task(request_log.flush_forever(self.stop)))
        if settings.REDIS_URL:
            self.tasks.append(asyncio.create_task(config_cache.listen(self.stop)))
            self.tasks.append(asyncio.create_task(stats.sync_forever(self.stop)))
            # This process's heartbeat, and the reaper of streams whose worker died.
            self.tasks.append(asyncio.create_task(inflight.beat_forever(self.stop, recorder.held_ids)))
            # The response cache's entries Redis expired, counted in its evictions metric.
            self.tasks.append(asyncio.create_task(cache_store.sweep_forever(self.stop)))
        # Load the tokenizer now rather than on a first request.
        await asyncio.to_thread(tokens.encoding)
        # What startup built (Django, the apps, the tokenizer: some 150,000 objects) lives as long as
        # the process. Frozen, out of the collector's sight, a full collection scans only what requests
        # left behind: 1 ms, where scanning everything stalled every call in the worker for 80 ms.
        gc.collect()
        gc.freeze()

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        try:
            written = await run_orm(recorder.drain_all)
            log.info("shutdown: wrote %d buffered usage events", written)
        except Exception:
            log.exception("shutdown: could not write buffered usage events")
        request_log.flush()
        try:
            await metrics.leave()
        except Exception:
            log.warning("shutdown: could not push the last metrics")
        await asyncio.to_thread(tracing.shutdown)
        await upstream.close()

    async def __call__(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def application(scope, receive, send) -> None:
    if scope["type"] == "http":
        if scope["path"].startswith("/v1/"):
            await api_application(scope, receive, send)
        elif scope["path"] in operator.PATHS:
            await operator.handle(scope, receive, send)
        else:
            await django_application(scope, receive, send)
    elif scope["type"] == "lifespan":
        await Lifespan()(receive, send)


def _die_with_parent() -> None:
    """A worker killed with its server (SIGKILL, the OOM killer) must not go on serving alone:
    its in-flight calls are then reaped by the other processes, as for any killed worker."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def worker_application():
    """granian's factory (`manage.py serve`), called in each worker process: the application, behind
    the proxy-header check when TRUSTED_PROXIES is set."""
    _die_with_parent()
    if not settings.TRUSTED_PROXIES:
        return application
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware  # noqa: PLC0415  (only behind proxies)

    # The same rule as uvicorn's own: from a listed proxy, the client is the right-most
    # X-Forwarded-For hop that is not one of them; from anyone else the headers are ignored.
    return ProxyHeadersMiddleware(application, trusted_hosts=settings.TRUSTED_PROXIES)
