from celery import shared_task

from . import recorder


@shared_task(ignore_result=True)
def drain_usage() -> int:
    """Write buffered usage events to the database (safe on many workers at once)."""
    return recorder.drain_all()
