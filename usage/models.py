from django.conf import settings
from django.db import models
from django.db.models.functions import Coalesce

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
        HEDGE_CANCELLED = "hedge_cancelled", "Hedged call cancelled (the other answered first)"
        INTERRUPTED = "interrupted", "Interrupted (the gateway worker died mid-call)"

    # Unique with created_at (the call's own start time, carried in its event), not alone: on
    # PostgreSQL the table is partitioned by created_at (usage.partitions), and a partitioned
    # table's unique constraints must hold its partition key. A call's events all carry the
    # same start time, so writing one twice still leaves one row.
    request_id = models.CharField(max_length=100, help_text="The gateway's own id for the call.")
    client_request_id = models.CharField(
        max_length=100, blank=True, db_index=True, help_text="The x-request-id the client sent, if any."
    )
    created_at = models.DateTimeField(db_index=True)
    # Indexed as (tenant, created_at) and (api_key): every index is written by every insert of the
    # drain, so the links nothing filters the ledger on alone carry none.
    tenant = models.ForeignKey(Tenant, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False,
                               related_name="+")
    api_key = models.ForeignKey(
        ApiKey, null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    key_prefix = models.CharField(max_length=32, blank=True)
    provider = models.ForeignKey(
        Provider, null=True, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    provider_name = models.CharField(max_length=100, blank=True)
    deployment = models.ForeignKey(
        Deployment, null=True, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    endpoint = models.CharField(max_length=32)
    route = models.CharField(max_length=200, blank=True)
    strategy = models.CharField(max_length=16, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    public_model = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0, help_text="Of the prompt tokens, those read from the cache.")
    cache_write_tokens = models.PositiveIntegerField(
        default=0, help_text="Of the prompt tokens, those written to the cache (5-minute and 1-hour).")
    cache_write_1h_tokens = models.PositiveIntegerField(
        default=0, help_text="Of the cache writes, those with the 1-hour lifetime.")
    reasoning_tokens = models.PositiveIntegerField(
        default=0, help_text="Of the completion tokens, the reasoning ones (where the provider reports them).")
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
    cache_hit = models.BooleanField(default=False, help_text="Answered from the gateway's response cache.")
    cost_saved_usd = models.DecimalField(
        max_digits=24, decimal_places=12, default=0,
        help_text="A cache hit: what the stored answer cost when the upstream made it.")
    guardrails = models.JSONField(
        null=True, blank=True,
        help_text="What the guardrail checks decided: each check's action, findings by type and count, time "
                  "taken. Never the matched text.")
    prompt_template = models.CharField(max_length=100, blank=True, help_text="The prompt template expanded, if any.")
    prompt_version = models.PositiveIntegerField(null=True, blank=True, help_text="Its version.")
    experiment_id = models.PositiveIntegerField(null=True, blank=True,
                                                help_text="The experiment (routing) the call took part in.")
    variant = models.CharField(max_length=100, blank=True, help_text="The experiment's variant it was given.")
    batch_id = models.CharField(
        max_length=40, blank=True, default="",
        help_text="A line of this batch (the Batches APIs); empty for a live call.")

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["request_id", "created_at"], name="usage_record_once")]
        indexes = [models.Index(fields=["tenant", "created_at"]),
                   models.Index(fields=["experiment_id", "variant"], name="usage_experiment_variant"),
                   models.Index(fields=["batch_id"], condition=~models.Q(batch_id=""), name="usage_batch_line"),
                   # The dashboard's guardrail panel: the few records with decisions, newest first.
                   models.Index(fields=["created_at"], condition=models.Q(guardrails__isnull=False),
                                name="usage_record_guarded")]

    def __str__(self) -> str:
        return self.request_id


class Limit(models.Model):
    """Limits on a tenant, or on one of its keys, for all models or for one.

    Every applicable limit is enforced together: a request to model M with key K
    of tenant T is checked against T's limits, T's limits for M, K's limits and
    K's limits for M. Empty fields mean "no limit".
    """

    class Period(models.TextChoices):
        DAY = "day", "Day"
        WEEK = "week", "Week (from Monday)"
        MONTH = "month", "Calendar month"
        TOTAL = "total", "Fixed total (never resets)"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="limits")
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="limits",
        help_text="Empty: the limit is on the whole tenant.",
    )
    model = models.CharField(max_length=200, blank=True, help_text="Public model name; empty: all models.")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField("concurrent requests", null=True, blank=True)
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    token_quota = models.PositiveBigIntegerField("token quota per period", null=True, blank=True)
    budget_usd = models.DecimalField(
        "budget per period (USD)", max_digits=14, decimal_places=6, null=True, blank=True
    )
    alert_thresholds = models.JSONField(
        default=list, blank=True,
        help_text="Percentages of the budget or quota that email the tenant's admins, e.g. [50, 80, 100].",
    )
    offline_credit_usd = models.DecimalField(
        "credit while Redis is down (USD)", max_digits=14, decimal_places=6, null=True, blank=True,
        help_text="Budgets refuse requests while Redis is unreachable, unless this bounded credit is set.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "api_key", "model"]

    def __str__(self) -> str:
        who = f"key {self.api_key.prefix}" if self.api_key_id else f"tenant {self.tenant.slug}"
        return f"limits on {who}" + (f" for {self.model}" if self.model else "")

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.api_key_id and not self.tenant_id:
            self.tenant_id = self.api_key.tenant_id  # limits added on a key's page
        if self.api_key_id and self.api_key.tenant_id != self.tenant_id:
            raise ValidationError({"api_key": "This key belongs to another tenant."})
        bad = [t for t in self.alert_thresholds or [] if not isinstance(t, (int, float)) or not 0 < t <= 1000]
        if bad or not isinstance(self.alert_thresholds, list):
            raise ValidationError({"alert_thresholds": "A list of percentages, e.g. [50, 80, 100]."})


class BudgetAlert(models.Model):
    """One threshold crossed in one period: the unique constraint makes the email go once."""

    limit = models.ForeignKey(Limit, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveIntegerField()
    kind = models.CharField(max_length=8)  # "budget" or "quota"
    used = models.DecimalField(max_digits=24, decimal_places=6)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["limit", "period_start", "threshold", "kind"], name="budget_alert_once")
        ]


class UsageRollup(models.Model):
    """Usage summed per hour or day by tenant, key, model and provider.

    Recomputed from the records of a bucket and upserted, so running the job
    twice, or on two workers at once, gives the same rows.
    """

    class Granularity(models.TextChoices):
        HOUR = "hour", "hour"
        DAY = "day", "day"

    granularity = models.CharField(max_length=4, choices=Granularity.choices)
    bucket = models.DateTimeField(help_text="Start of the hour or (UTC) day.")
    tenant = models.ForeignKey(Tenant, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.DO_NOTHING, db_constraint=False,
                                related_name="+")
    key_prefix = models.CharField(max_length=32, blank=True)
    public_model = models.CharField(max_length=200)
    provider_name = models.CharField(max_length=100, blank=True)
    route = models.CharField(max_length=200, blank=True)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    cache_hits = models.PositiveIntegerField(default=0)
    cost_saved_usd = models.DecimalField(max_digits=24, decimal_places=12, default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_1h_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=12, default=0)
    latency_p50_ms = models.PositiveIntegerField(default=0)
    latency_p95_ms = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-bucket"]
        # One row per bucket and group; the key is coalesced (no key: 0) so that
        # rows without one are unique too, on SQLite as on PostgreSQL.
        constraints = [models.UniqueConstraint(
            "granularity", "bucket", "tenant", Coalesce("api_key", 0), "public_model", "provider_name", "route",
            name="usage_rollup_once")]
        indexes = [models.Index(fields=["tenant", "granularity", "bucket"])]


class ReportDelivery(models.Model):
    """One cost report sent (or being sent): claimed before sending, so a report
    goes out once however many workers run the job."""

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="+",
                               help_text="Empty: the overall report to staff.")
    period = models.CharField(max_length=8)  # day, week, month
    period_start = models.DateField()
    recipients = models.JSONField(default=list)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["tenant", "period", "period_start"],
                                               name="report_once", nulls_distinct=False)]


class PromptLog(models.Model):
    """A call's prompt, redacted, for a tenant that opted into prompt logging (usage.prompts).

    Deleted once past expires_at by the periodic prompt purge.
    """

    request_id = models.CharField(max_length=100, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="prompt_logs")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    public_model = models.CharField(max_length=200, blank=True)
    prompt = models.TextField(help_text="Redacted: e-mail addresses, key-like strings and digit runs removed.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "created_at"])]

    def __str__(self) -> str:
        return self.request_id


class UsageDeadLetter(models.Model):
    """A usage event the database refused even on its own (usage.recorder): kept as sent, with
    the reason, so that staff can see what was not billed and the stream keeps draining.

    Staff only (not in tenants.scoping: the raw event may name any tenant); deleted after
    USAGE_DEAD_LETTER_RETENTION_DAYS by the retention job.
    """

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    request_id = models.CharField(max_length=100, blank=True, db_index=True)
    tenant_id = models.BigIntegerField(null=True, blank=True, help_text="As the event named it, if it did.")
    reason = models.TextField()
    event = models.TextField(help_text="The raw event (JSON as buffered; NUL bytes and invalid UTF-8 escaped).")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.request_id or f"dead letter {self.pk}"


class StoredResponse(models.Model):
    """A Responses API answer kept for `previous_response_id`, retrieval and input-item listing
    (usage.responses_store writes it behind through Redis; never on the request path).

    `response` is the object as the client received it; `input_items` the request's own input items,
    each with its id. Neither holds headers or keys. Deleted past expires_at by the retention job.
    """

    response_id = models.CharField(max_length=100, help_text="The public id (resp_...).")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="stored_responses")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model = models.CharField(max_length=200, help_text="The public model name.")
    status = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    previous_response_id = models.CharField(max_length=100, blank=True)
    response = models.JSONField()
    input_items = models.JSONField(default=list)
    item_ids = models.JSONField(default=list, help_text="Ids of the input and output items, for item_reference.")

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["tenant", "response_id"], name="stored_response_once")]
        indexes = [models.Index(fields=["tenant", "created_at"], name="stored_response_tenant_time")]

    def __str__(self) -> str:
        return self.response_id


class SpendAnomaly(models.Model):
    """An hour, or a run of consecutive hours, in which one key's spend or requests on one model
    rose far above the same hour of the days before (usage.anomalies).

    One row per run: an hour that continues an open or acknowledged run extends it, so a
    two-hour spike is one anomaly and one email. The figures are the run's peak hour.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="spend_anomalies")
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.DO_NOTHING, db_constraint=False,
                                related_name="+")
    key_prefix = models.CharField(max_length=32, blank=True)
    public_model = models.CharField(max_length=200)
    started_at = models.DateTimeField(help_text="The first anomalous hour (UTC).")
    last_hour = models.DateTimeField(help_text="The last anomalous hour so far (UTC).")
    hours = models.PositiveIntegerField(default=1)
    metrics = models.CharField(max_length=32, help_text="What rose: spend, requests, or both.")
    spend_usd = models.DecimalField("spend in the peak hour (USD)", max_digits=24, decimal_places=6)
    baseline_spend_usd = models.DecimalField("median spend of that hour (USD)", max_digits=24, decimal_places=6)
    requests = models.PositiveIntegerField("requests in the peak hour")
    baseline_requests = models.FloatField("median requests of that hour")
    score = models.FloatField(help_text="How far above the median, in scaled MADs (the larger of spend and requests).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+")
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True, help_text="When the owners, admins and staff were emailed.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-last_hour"]
        verbose_name_plural = "spend anomalies"
        constraints = [models.UniqueConstraint("tenant", Coalesce("api_key", 0), "public_model", "started_at",
                                               name="spend_anomaly_once")]
        indexes = [models.Index(fields=["status", "last_hour"])]

    def __str__(self) -> str:
        who = f"key {self.key_prefix}…" if self.key_prefix else "no key"
        return f"{who} on {self.public_model} from {self.started_at:%Y-%m-%d %H:00} UTC"


class AnomalyMute(models.Model):
    """A key whose spend anomalies are not looked for (until `until`, or until the mute is deleted)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    api_key = models.OneToOneField(ApiKey, on_delete=models.CASCADE, related_name="anomaly_mute")
    until = models.DateTimeField(null=True, blank=True, help_text="Empty: until this mute is deleted.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"anomalies muted for key {self.api_key.prefix}"


class Feedback(models.Model):
    """What a client said of one of its tenant's calls (POST /v1/feedback): a score, a label, or both."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    request_id = models.CharField(max_length=100, help_text="The usage record's request id.")
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.SET_NULL, db_constraint=False, related_name="+",
                                help_text="The key that sent it.")
    score = models.FloatField(null=True, blank=True)
    label = models.CharField(max_length=64, blank=True)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "feedback"
        constraints = [models.UniqueConstraint(fields=["tenant", "request_id"], name="feedback_one_per_request")]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.label or self.score}"
