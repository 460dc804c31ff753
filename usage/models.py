from django.db import models

from keys.models import ApiKey
from providers.models import Deployment, Provider
from tenants.models import Tenant


class UsageRecord(models.Model):
    """One request through the gateway, as billed.

    A ledger row: it outlives the key, provider or deployment it names, so those
    links carry no database constraint and the names are copied in.
    """

    class Status(models.TextChoices):
        OK = "ok", "OK"
        CLIENT_ERROR = "client_error", "Client error"
        UPSTREAM_ERROR = "upstream_error", "Upstream error"
        UPSTREAM_TIMEOUT = "upstream_timeout", "Upstream timeout"
        CLIENT_DISCONNECTED = "client_disconnected", "Client disconnected"
        STREAM_CUT = "stream_cut", "Upstream stream cut short"

    request_id = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(db_index=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    api_key = models.ForeignKey(
        ApiKey, null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    key_prefix = models.CharField(max_length=32, blank=True)
    provider = models.ForeignKey(
        Provider, null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    provider_name = models.CharField(max_length=100, blank=True)
    deployment = models.ForeignKey(
        Deployment, null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    endpoint = models.CharField(max_length=32)
    public_model = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(
        default=False, help_text="Counted by the gateway because the upstream reported no usage."
    )
    cost_usd = models.DecimalField(max_digits=24, decimal_places=12, default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Time to first token.")
    status = models.CharField(max_length=32, choices=Status.choices, default=Status.OK)
    http_status = models.PositiveSmallIntegerField(default=200)
    error_type = models.CharField(max_length=64, blank=True)
    streamed = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "created_at"])]

    def __str__(self) -> str:
        return self.request_id
