"""Retention of finished batches: BATCH_RETENTION_DAYS after a batch ended, it goes with its lines,
its output and error files and its input file (unless another batch was made from it too), rows and
stored bytes alike. Usage records stay: they are the ledger, kept by the usage retention.

Each batch is its own short transaction, and the stored bytes are deleted once its rows are gone
(routing/signals.py), so a run stopped halfway resumes, and running it twice deletes nothing more.
"""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .models import Batch, File

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
            gone += delete_batch(batch_id)
    return gone


@transaction.atomic
def delete_batch(batch_id: str) -> int:
    """Delete one batch's rows (its lines by cascade) and its files' rows; their stored bytes go once
    this commits (routing/signals.py). Returns 1, or 0 if it was gone already."""
    batch = Batch.objects.select_for_update().filter(pk=batch_id).first()
    if batch is None:
        return 0
    file_ids = [batch.output_file_id, batch.error_file_id]
    if not Batch.objects.filter(input_file_id=batch.input_file_id).exclude(pk=batch.pk).exists():
        file_ids.append(batch.input_file_id)
    batch.delete()
    for row in File.objects.filter(pk__in=[f for f in file_ids if f]):
        row.delete()
    return 1
