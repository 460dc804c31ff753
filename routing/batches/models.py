"""Uploaded files and batches (OpenAI's Files and Batches APIs), per tenant.

A file's bytes live in Django's storage (the file system by default, S3 through
django-storages when STORAGES says so); the row holds its name and size. A
batch's lines are rows of their own, so that a worker that dies mid-chunk
leaves every finished line finished and the batch resumes at the first
unanswered one.
"""

import secrets

from django.db import models

from keys.models import ApiKey
from tenants.models import Tenant


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def file_id() -> str:
    return new_id("file")


def batch_id() -> str:
    return new_id("batch")


class File(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=file_id, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="files")
    filename = models.CharField(max_length=255)
    purpose = models.CharField(max_length=32)
    bytes = models.PositiveBigIntegerField(default=0)
    storage_name = models.CharField(max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)

    def as_openai(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at.timestamp()),
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "status_details": None,
                "expires_at": None}


class Batch(models.Model):
    class Status(models.TextChoices):
        VALIDATING = "validating"
        FAILED = "failed"
        IN_PROGRESS = "in_progress"
        FINALIZING = "finalizing"
        COMPLETED = "completed"
        EXPIRED = "expired"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    id = models.CharField(primary_key=True, max_length=40, default=batch_id, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="batches")
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, related_name="batches")
    endpoint = models.CharField(max_length=40)
    completion_window = models.CharField(max_length=8, default="24h")
    # RESTRICT, not PROTECT: a file a batch was made from stays while the batch does, but a tenant's
    # deletion takes both.
    input_file = models.ForeignKey(File, on_delete=models.RESTRICT, related_name="batches")
    output_file = models.ForeignKey(File, on_delete=models.SET_NULL, null=True, related_name="+")
    error_file = models.ForeignKey(File, on_delete=models.SET_NULL, null=True, related_name="+")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.VALIDATING)
    errors = models.JSONField(null=True, blank=True)
    metadata = models.JSONField(null=True, blank=True)
    # Why a running batch waits (a budget reached): it resumes once the limit admits its lines again.
    paused_reason = models.CharField(max_length=40, blank=True)
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    # When the email asked for by metadata `notify` went out (routing/batches/notify.py): at most once.
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "batches"

    @property
    def ended_at(self):
        return self.completed_at or self.cancelled_at or self.expired_at or self.failed_at

    def as_openai(self) -> dict:
        def ts(value):
            return int(value.timestamp()) if value else None

        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": self.errors,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": ts(self.created_at), "in_progress_at": ts(self.in_progress_at),
            "expires_at": ts(self.expires_at), "finalizing_at": ts(self.finalizing_at),
            "completed_at": ts(self.completed_at), "failed_at": ts(self.failed_at), "expired_at": ts(self.expired_at),
            "cancelling_at": ts(self.cancelling_at), "cancelled_at": ts(self.cancelled_at),
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
            # Not OpenAI's: why a batch in progress waits (budget_exceeded, quota_exceeded, a rate limit), or null.
            "paused_reason": self.paused_reason or None,
        }


class BatchLine(models.Model):
    """One request of a batch; `result` is its output or error line once answered."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="lines")
    number = models.PositiveIntegerField()
    custom_id = models.CharField(max_length=200)
    body = models.JSONField()
    done = models.BooleanField(default=False)
    ok = models.BooleanField(default=False)
    result = models.JSONField(null=True)
    # Its run recorded a usage event (a line refused before authorization, as a live call, records none).
    billed = models.BooleanField(default=False)
    # When the line's first attempt began (unix time). Every attempt's usage event carries it as the call's
    # start, so the ledger's (request id, start) key keeps a line re-run after a dead worker billed once.
    started_at = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["batch", "number"], name="batch_line_number")]
        indexes = [models.Index(fields=["batch", "done", "number"])]
