"""An experiment on one of a tenant's model or route names, and the variants its traffic is split between."""

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from providers.models import Deployment
from tenants.models import Tenant

from ..prompts.models import PARAMETERS, PromptVersion


class Experiment(models.Model):
    """Calls of the tenant to `route` while it runs (between its start and end) are split between its
    variants by weight; a caller keeps its variant for as long as the experiment runs."""

    class Sticky(models.TextChoices):
        USER = "user", "The request's user field"
        HEADER = "header", "A request header"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="experiments")
    name = models.SlugField(max_length=100)
    route = models.CharField(max_length=200, help_text="The model or route name whose calls are split.")
    sticky_by = models.CharField(max_length=8, choices=Sticky.choices, default=Sticky.USER,
                                 help_text="What keeps a caller on one variant (without it: each call drawn anew).")
    sticky_header = models.CharField(max_length=100, blank=True, help_text="The header, when sticky by header.")
    starts_at = models.DateTimeField(null=True, blank=True, help_text="Empty: at once.")
    ends_at = models.DateTimeField(null=True, blank=True, help_text="Empty: until switched off.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "-created_at"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="experiment_unique_name")]

    def __str__(self) -> str:
        return f"{self.name} on {self.route}"

    def clean(self) -> None:
        if self.sticky_by == self.Sticky.HEADER and not self.sticky_header:
            raise ValidationError({"sticky_header": "Name the header."})
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValidationError({"ends_at": "After the start."})

    def running(self, now=None) -> bool:
        now = now or timezone.now()
        return self.is_active and (self.starts_at is None or self.starts_at <= now) and (
            self.ends_at is None or now < self.ends_at)


class Variant(models.Model):
    """One arm: what it changes of a call (a model, one deployment, a template version, parameters)."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="variants")
    name = models.SlugField(max_length=100)
    weight = models.PositiveIntegerField(default=1, help_text="Share of the traffic, against the others' weights.")
    model = models.CharField(max_length=200, blank=True, help_text="Another model or route; empty: the route's.")
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.CASCADE, related_name="+",
                                   help_text="Only this deployment of the (variant's) route.")
    prompt_version = models.ForeignKey(PromptVersion, null=True, blank=True, on_delete=models.PROTECT,
                                       related_name="+", help_text="Expand this template version for the call.")
    parameters = models.JSONField(default=dict, blank=True, help_text="Parameters set on the call (they win).")

    class Meta:
        ordering = ["experiment", "id"]
        constraints = [models.UniqueConstraint(fields=["experiment", "name"], name="variant_unique_name")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        tenant_id = self.experiment.tenant_id if self.experiment_id else None
        if self.prompt_version_id and self.prompt_version.template.tenant_id != tenant_id:
            raise ValidationError({"prompt_version": "A version of one of the experiment's tenant's templates."})
        if self.deployment_id and self.deployment.provider.tenant_id not in (None, tenant_id):
            raise ValidationError({"deployment": "A deployment the experiment's tenant can reach."})
        if not isinstance(self.parameters, dict) or not set(self.parameters) <= PARAMETERS:
            raise ValidationError({"parameters": f"An object of: {', '.join(sorted(PARAMETERS))}."})
