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

from .guardrails.models import GuardrailCheck, GuardrailPolicy  # noqa: E402, F401 (models of this app)
