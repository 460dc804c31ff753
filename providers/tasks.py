from celery import shared_task

from gateway_project.lib.joblock import single_run

from . import health


@shared_task
def check_health() -> int:
    """Probe every provider and deployment; return how many checks failed."""
    with single_run("check_health", ttl_seconds=120) as mine:
        return sum(not check.ok for check in health.check_all()) if mine else 0
