"""Retention of finished batches: BATCH_RETENTION_DAYS after a batch ended, it goes with its lines,
its output and error files and its input file (unless another batch was made from it too), rows and
stored bytes alike. Usage records stay: they are the ledger, kept by the usage retention.

Each batch is its own short transaction, and the stored bytes are deleted after its rows are gone,
so a run stopped halfway resumes, and running it twice deletes nothing more.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import files
from .models import Batch, File

log = logging.getLogger(__name__)

ENDED_AT = ("completed_at", "failed_at", "expired_at", "cancelled_at")


def expired_batches(now=None):
    """Finished batches that ended more than BATCH_RETENTION_DAYS ago (0: kept for ever)."""
    if not settings.BATCH_RETENTION_DAYS:
        return Batch.objects.none()
    cutoff = (now or timezone.now()) - timedelta(days=settings.BATCH_RETENTION_DAYS)
    ended = Q()
    for field in ENDED_AT:
        ended |= Q(**{f"{field}__lt": cutoff})
    return Batch.objects.filter(ended, status__in=("completed", "failed", "expired", "cancelled"))


def cleanup(now=None) -> int:
    """Delete what is past its retention; returns how many batches went."""
    gone = 0
    while ids := list(expired_batches(now).values_list("id", flat=True)[:100]):
        for batch_id in ids:
            for name in delete_batch(batch_id):
                try:
                    files.storage().delete(name)
                except OSError as exc:  # the bytes outlive their row; the storage's own lifecycle may take them
                    log.warning("batch retention: could not delete stored file %s (%s)", name, exc)
            gone += 1
    return gone


@transaction.atomic
def delete_batch(batch_id: str) -> list[str]:
    """Delete one batch's rows (lines by cascade, its files); return the storage names to delete."""
    batch = Batch.objects.select_for_update().filter(pk=batch_id).first()
    if batch is None:
        return []
    file_ids = [batch.output_file_id, batch.error_file_id]
    if not Batch.objects.filter(input_file_id=batch.input_file_id).exclude(pk=batch.pk).exists():
        file_ids.append(batch.input_file_id)
    rows = File.objects.filter(pk__in=[f for f in file_ids if f])
    names = list(rows.values_list("storage_name", flat=True))
    batch.delete()
    rows.delete()
    return names
