"""The batch jobs, on their own queue (BATCH_QUEUE) so that they never hold up the periodic jobs."""

from celery import shared_task

from gateway_project.lib.joblock import single_run

from . import runner


@shared_task(ignore_result=True)
def run_batch(batch_id: str) -> str:
    """Advance one batch; one worker at a time per batch (a second run returns at once)."""
    from django.conf import settings  # deferred: read at run time, when tests may have changed it

    with single_run(f"batch:{batch_id}", ttl_seconds=settings.BATCH_LEASE_SECONDS) as mine:
        return runner.advance(batch_id, f"gw:job:batch:{batch_id}") if mine else ""


@shared_task(ignore_result=True)
def resume_batches() -> int:
    """Send every unfinished batch to the workers again: a batch whose worker died (its lease expired),
    one paused by a budget, one being cancelled. A batch still running ignores the duplicate."""
    ids = runner.running_ids()
    for batch_id in ids:
        run_batch.delay(batch_id)
    return len(ids)
