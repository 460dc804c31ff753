"""`manage.py serve`: the gateway under granian (the default) or uvicorn.

granian was chosen by measurement (docs/benchmarks.md, "Choosing the ASGI server"): its HTTP
protocol is Rust; a JSON call costs the same CPU as under uvicorn, one worker serves more of
them a second, and an open stream holds less memory. uvicorn stays one flag away; the worker
factory is `gateway_project.asgi.worker_application`.
"""

import copy
import multiprocessing

from django.conf import settings
from django.core.management.base import BaseCommand

SERVERS = ("granian", "uvicorn")
TARGET = "gateway_project.asgi:application"
# Requests one worker serves at once. granian's own default (its backlog, 1024) would queue the
# 1,025th open stream; uvicorn has no such limit, and neither should a worker that holds 10,000.
BACKPRESSURE = 65_536
# Connections waiting for accept() (the kernel caps it at net.core.somaxconn).
BACKLOG = 4096
GRACEFUL_SECONDS = 30


def run_granian(host: str, port: int, workers: int, log_level: str) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops  # noqa: PLC0415  (the chosen server only)
    from granian.server import Server  # noqa: PLC0415

    # Workers start as new interpreters, as uvicorn's do: a fork would copy this process's
    # Django, its module state (the metrics' process id among it) and any pool it opened.
    multiprocessing.set_start_method("spawn", force=True)
    Server(
        "gateway_project.asgi:worker_application",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        workers=workers,
        backlog=BACKLOG,
        backpressure=BACKPRESSURE,
        # One line per request is the job of structured request logs, not of an access log.
        log_access=False,
        log_level=log_level,
        # In JSON, granian's own lines go through the gateway's logging too (one format in the logs).
        log_dictconfig=copy.deepcopy(settings.LOGGING) if settings.LOG_FORMAT == "json" else None,
        workers_kill_timeout=GRACEFUL_SECONDS,
        respawn_failed_workers=workers > 1,
    ).serve()


def run_uvicorn(host: str, port: int, workers: int, log_level: str) -> None:
    import uvicorn  # noqa: PLC0415  (the other server only)

    uvicorn.run(
        TARGET,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        # X-Forwarded-For and -Proto from TRUSTED_PROXIES only; uvicorn's default believes
        # anyone on 127.0.0.1, and any process there could then pick its own address.
        proxy_headers=bool(settings.TRUSTED_PROXIES),
        forwarded_allow_ips=",".join(settings.TRUSTED_PROXIES) or None,
        **({"log_config": None} if settings.LOG_FORMAT == "json" else {}),
    )


def run_server(host: str, port: int, workers: int = 1, log_level: str = "info", server: str = "granian") -> None:
    (run_granian if server == "granian" else run_uvicorn)(host, port, workers, log_level)


class Command(BaseCommand):
    help = "Serve the gateway (API and admin) with granian, or uvicorn with --server uvicorn."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=1, help="Worker processes")
        parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
        parser.add_argument("--server", default="granian", choices=SERVERS, help="ASGI server (default granian)")

    def handle(self, host, port, workers, log_level, server, **options):
        run_server(host, port, workers, log_level, server)
