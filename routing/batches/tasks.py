"""The batch jobs, on their own queue (BATCH_QUEUE) so that they never hold up the periodic jobs."""

from celery import shared_task
from django.conf import settings

from gateway_project.lib.joblock import single_run

from . import runner


@shared_task(ignore_result=True)
def run_batch(batch_id: str, slot: int = 0) -> str:
    """Advance one slot of a batch (BATCH_SLOTS of them, each its share of the chunks); one worker at a
    time per slot, a second run returns at once. Slot 0 validates the file, then starts the others."""
    name = f"batch:{batch_id}:{slot}"
    with single_run(name, ttl_seconds=settings.BATCH_LEASE_SECONDS) as mine:
        if not mine:
            return ""
        return runner.advance(batch_id, f"gw:job:{name}", slot,
                              start_others=lambda: [run_batch.delay(batch_id, n) for n in range(1, settings.BATCH_SLOTS)])


@shared_task(ignore_result=True)
def resume_batches() -> int:
    """Send every unfinished batch to the workers again: one whose worker died (its slot's lease
    expired), one paused by a budget, one being cancelled. A slot still running ignores the duplicate."""
    ids = runner.running_ids()
    for batch_id in ids:
        for slot in range(settings.BATCH_SLOTS):
            run_batch.delay(batch_id, slot)
    return len(ids)
