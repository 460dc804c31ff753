from django.core.exceptions import ValidationError
from django.db import models

from providers.models import Deployment
from tenants.models import Tenant

from . import patterns


class Route(models.Model):
    """A public model name clients call, served by targets chosen by a strategy.

    Without a Route, a public name is served by the deployments that carry it,
    in priority order. A tenant's route shadows a shared one of the same name.
    """

    class Strategy(models.TextChoices):
        PRIORITY = "priority", "Priority with fallback"
        WEIGHTED = "weighted", "Weighted split"
        LATENCY = "latency", "Lowest latency"
        LEAST_BUSY = "least_busy", "Least busy"
        COST = "cost", "Lowest cost"

    name = models.CharField(max_length=200, help_text="The model name clients send.")
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="routes",
                               help_text="Empty: available to every tenant.")
    strategy = models.CharField(max_length=16, choices=Strategy.choices, default=Strategy.PRIORITY)
    hedge_after_ms = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="If the first target sends nothing for this long, try the next one too; the first to answer wins.",
    )
    max_attempts = models.PositiveSmallIntegerField(default=3, help_text="Targets tried at most per request.")
    deadline_seconds = models.FloatField(default=120.0, help_text="Overall time for all attempts.")
    context_fallback = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Route to use when the prompt fits none of this route's targets.",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="route_unique_name")]

    def __str__(self) -> str:
        return self.name if self.tenant_id is None else f"{self.name} ({self.tenant.slug})"


class RouteTarget(models.Model):
    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="targets")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="route_targets")
    weight = models.PositiveIntegerField(default=1, help_text="Share of traffic under the weighted strategy.")
    priority = models.IntegerField(default=0, help_text="Lower is tried first under the priority strategy.")
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["priority", "id"]

    def __str__(self) -> str:
        return f"{self.route.name} → {self.deployment}"


class RouteRule(models.Model):
    """A content rule: when it matches, the request goes to its target (or sub-route) first."""

    class Kind(models.TextChoices):
        PROMPT_OVER = "prompt_over", "Prompt longer than N tokens"
        HAS_IMAGES = "has_images", "Request has images"
        HAS_TOOLS = "has_tools", "Request has tools"
        KEYWORD = "keyword", "Last user message contains a keyword"
        REGEX = "regex", "Last user message matches a regular expression"
        HEADER = "header", "Request header equals a value"

    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="rules")
    order = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    value = models.CharField(max_length=500, blank=True, help_text="N, keyword, pattern or header value.")
    header = models.CharField(max_length=100, blank=True, help_text="Header name, for header rules.")
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    sub_route = models.ForeignKey(Route, null=True, blank=True, on_delete=models.CASCADE, related_name="+")

    class Meta:
        ordering = ["order", "id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.value}".strip()

    def clean(self) -> None:
        if bool(self.deployment_id) == bool(self.sub_route_id):
            raise ValidationError("Pick either a deployment or a sub-route.")
        if self.kind == self.Kind.PROMPT_OVER and not self.value.isdigit():
            raise ValidationError({"value": "A number of tokens."})
        if self.kind == self.Kind.REGEX and (reason := patterns.problem(self.value)) is not None:
            raise ValidationError({"value": reason})
        if self.kind == self.Kind.HEADER and not self.header:
            raise ValidationError({"header": "Name the header."})


class CircuitEvent(models.Model):
    """A breaker changing state, kept for the admin: why traffic left a deployment."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="circuit_events")
    state = models.CharField(max_length=12)  # a breakers.State: open, half_open, closed
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.deployment} {self.state}"


CACHE_ENDPOINTS = ("chat.completions", "completions", "embeddings", "messages", "responses")


def _all_endpoints() -> list[str]:
    return list(CACHE_ENDPOINTS)


class CachePolicy(models.Model):
    """How a tenant's answers are cached (routing/cache/): for the whole tenant, one of its keys, one
    public model or route, or a key on one model. The most specific policy that matches a call wins
    (key and model, key, model, tenant); a policy with mode "off" switches caching off at its level."""

    class Mode(models.TextChoices):
        OFF = "off", "Off"
        EXACT = "exact", "Exact"
        SEMANTIC = "semantic", "Semantic"
        BOTH = "both", "Exact, then semantic"

    class Expiry(models.TextChoices):
        ABSOLUTE = "absolute", "Absolute (from when the answer was stored)"
        SLIDING = "sliding", "Sliding (renewed by every hit)"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="cache_policies")
    api_key = models.ForeignKey("keys.ApiKey", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="cache_policies", help_text="Empty: every key of the tenant.")
    model = models.CharField(max_length=200, blank=True,
                             help_text="Public model or route name; empty: every model.")
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.EXACT)
    ttl_seconds = models.PositiveIntegerField(default=3600, help_text="How long an answer is served from the cache.")
    expiry = models.CharField(max_length=8, choices=Expiry.choices, default=Expiry.ABSOLUTE)
    endpoints = models.JSONField(default=_all_endpoints, blank=True,
                                 help_text=f"Which endpoints are cached, of {', '.join(CACHE_ENDPOINTS)}.")
    cache_tool_calls = models.BooleanField(default=False, help_text="Also cache answers that call tools.")
    max_answer_bytes = models.PositiveIntegerField(default=262144, help_text="Larger answers are not cached.")
    hits_count_against_limits = models.BooleanField(
        default=False, help_text="A hit spends its tokens and the cost it saved of token quotas and budgets.")
    semantic_threshold = models.FloatField(default=0.95, help_text="Least cosine similarity of a semantic hit.")
    semantic_embedding_model = models.CharField(
        max_length=200, blank=True,
        help_text="One of the tenant's embedding models, called (and billed) to embed questions; "
                  "empty: the gateway's local model.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "api_key", "model"]
        verbose_name_plural = "cache policies"

    def __str__(self) -> str:
        who = f"key {self.api_key.prefix}" if self.api_key_id else f"tenant {self.tenant.slug}"
        return f"cache on {who}" + (f" for {self.model}" if self.model else "")

    def clean(self) -> None:
        if self.api_key_id and not self.tenant_id:
            self.tenant_id = self.api_key.tenant_id
        if self.api_key_id and self.api_key.tenant_id != self.tenant_id:
            raise ValidationError({"api_key": "This key belongs to another tenant."})
        if not isinstance(self.endpoints, list) or not set(self.endpoints) <= set(CACHE_ENDPOINTS):
            raise ValidationError({"endpoints": f"A list of: {', '.join(CACHE_ENDPOINTS)}."})
        if not 0 < self.semantic_threshold <= 1:
            raise ValidationError({"semantic_threshold": "Between 0 and 1."})
        if self.ttl_seconds < 1:
            raise ValidationError({"ttl_seconds": "At least one second."})
from .batches.models import Batch, BatchLine, File  # noqa: E402, F401 (models of this app: the Files and Batches APIs)
from .experiments.models import Experiment, Variant  # noqa: E402, F401 (models of this app)
from .guardrails.models import GuardrailCheck, GuardrailPolicy  # noqa: E402, F401 (models of this app)
from .prompts.models import PromptLabel, PromptTemplate, PromptVersion  # noqa: E402, F401 (models of this app)
