"""The batch jobs, on their own queue (BATCH_QUEUE) so that they never hold up the periodic jobs."""

import logging

import redis
from celery import shared_task
from django.conf import settings
from kombu.exceptions import OperationalError

from gateway_project.lib.joblock import single_run

from . import notify, retention, runner

log = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def run_batch(batch_id: str, slot: int = 0) -> str:
    """Advance one slot of a batch (BATCH_SLOTS of them, each its share of the chunks); one worker at a
    time per slot, a second run returns at once. Slot 0 validates the file, then starts the others."""
    name = f"batch:{batch_id}:{slot}"
    try:
        with single_run(name, ttl_seconds=settings.BATCH_LEASE_SECONDS) as mine:
            if not mine:
                return ""
            status = runner.advance(batch_id, f"gw:job:{name}", slot, start_others=lambda: [
                run_batch.delay(batch_id, n) for n in range(1, settings.BATCH_SLOTS)])
    except (redis.RedisError, OSError, OperationalError):
        # Redis went away (taking or releasing the lease, or sending a task): the lease runs out and
        # resume_batches sends the slot again; what it answered is saved.
        log.warning("batch %s slot %d stopped: Redis unreachable", batch_id, slot, exc_info=True)
        return ""
    if status in notify.ENDED:
        notify_batch_ended.delay(batch_id)  # each slot that sees the end asks; the mail goes out once
    return status


@shared_task(bind=True, ignore_result=True, max_retries=24, default_retry_delay=5)
def notify_batch_ended(self, batch_id: str) -> str:
    """The batch's email, if asked: once, after the usage ledger holds all its lines (retried until then,
    and after an SMTP failure)."""
    try:
        outcome = notify.batch_ended(batch_id)
    except OSError as exc:  # the mail server: smtplib's errors are OSErrors
        raise self.retry(exc=exc) from exc
    if outcome == "waiting":
        raise self.retry()
    return outcome


@shared_task(ignore_result=True)
def cleanup_batches() -> int:
    """Delete finished batches past BATCH_RETENTION_DAYS with their lines and files (one run at a time)."""
    with single_run("cleanup_batches", ttl_seconds=3600) as mine:
        return retention.cleanup() if mine else 0


@shared_task(ignore_result=True)
def resume_batches() -> int:
    """Send every unfinished batch to the workers again: one whose worker died (its slot's lease
    expired), one paused by a budget, one being cancelled. A slot still running ignores the duplicate."""
    ids = runner.running_ids()
    for batch_id in ids:
        for slot in range(settings.BATCH_SLOTS):
            run_batch.delay(batch_id, slot)
    return len(ids)
