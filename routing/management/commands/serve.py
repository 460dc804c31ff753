import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand


def run_server(host: str, port: int, workers: int = 1, log_level: str = "info") -> None:
    uvicorn.run(
        "gateway_project.asgi:application",
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        # One line per request is the job of structured request logs, not of
        # the server's access log, which costs CPU on every request.
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=30,
        # X-Forwarded-For and -Proto from TRUSTED_PROXIES only; uvicorn's default believes
        # anyone on 127.0.0.1, and any process there could then pick its own address.
        proxy_headers=bool(settings.TRUSTED_PROXIES),
        forwarded_allow_ips=",".join(settings.TRUSTED_PROXIES) or None,
        # In JSON, uvicorn's own lines go through the gateway's logging too (one format in the logs).
        **({"log_config": None} if settings.LOG_FORMAT == "json" else {}),
    )


class Command(BaseCommand):
    help = "Serve the gateway (API and admin) with uvicorn."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=1, help="Worker processes")
        parser.add_argument("--log-level", default="info")

    def handle(self, host, port, workers, log_level, **options):
        run_server(host, port, workers, log_level)
