from celery import shared_task

from . import prompts, recorder


@shared_task(ignore_result=True)
def drain_usage() -> int:
    """Write buffered usage events to the database (safe on many workers at once)."""
    return recorder.drain_all()


@shared_task(ignore_result=True)
def purge_prompts() -> int:
    """Delete logged prompts past their tenant's retention."""
    return prompts.purge_expired()
