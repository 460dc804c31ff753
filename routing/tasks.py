"""Celery tasks of the routing app: the batch runner's (routing/batches/tasks.py), found by autodiscovery here."""

from .batches import tasks as batch_tasks  # noqa: F401
