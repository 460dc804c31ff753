"""The periodic jobs (scheduled in gateway_project/schedules.py). Each is safe to
run twice and on two workers at once: a Redis lock lets one run at a time, and
each is idempotent besides (recomputed buckets, claimed deliveries)."""

from celery import shared_task

from gateway_project.lib.joblock import single_run

from . import anomalies, partitions, prompts, recorder, reports, retention, rollups


@shared_task(ignore_result=True)
def drain_usage() -> int:
    """Write buffered usage events to the database (safe on many workers at once)."""
    return recorder.drain_all()


@shared_task
def rollup_usage() -> int:
    """Recompute the current and previous hour and day of usage rollups."""
    with single_run("rollup_usage") as mine:
        return rollups.rollup_recent() if mine else 0


@shared_task
def create_usage_partitions() -> int:
    """Create the usage ledger's partitions for this month and the next USAGE_PARTITIONS_AHEAD."""
    with single_run("create_usage_partitions") as mine:
        return len(partitions.ensure_ahead()) if mine else 0


@shared_task
def cleanup_retention() -> dict:
    with single_run("cleanup_retention", ttl_seconds=3600) as mine:
        return retention.cleanup() if mine else {}


@shared_task
def send_cost_reports(period: str) -> int:
    with single_run(f"send_cost_reports:{period}") as mine:
        return reports.send_reports(period) if mine else 0


@shared_task(ignore_result=True)
def purge_prompts() -> int:
    """Delete logged prompts past their tenant's retention."""
    return prompts.purge_expired()


@shared_task
def detect_anomalies() -> int:
    """Judge the last closed hours of spend per tenant, key and model; email new anomalies."""
    with single_run("detect_anomalies") as mine:
        return len(anomalies.detect()) if mine else 0
