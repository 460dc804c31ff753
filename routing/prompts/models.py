"""Prompt templates: a tenant's named prompts, their published versions and the labels naming one."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from tenants.models import Tenant

from .engine import TemplateProblem, variables

ROLES = ("system", "developer", "user", "assistant")
# Parameters a version may set for its calls (chat names; a request's own value wins).
PARAMETERS = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "presence_penalty",
                        "frequency_penalty", "stop", "seed", "response_format", "reasoning_effort", "tools",
                        "tool_choice"})
DEFAULT_LABEL = "production"


class PromptTemplate(models.Model):
    """A named prompt of one tenant; what it says lives in its versions."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="prompt_templates")
    name = models.SlugField(max_length=100, help_text="The id requests name: prompt.id (docs/templates.md).")
    description = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="prompt_template_unique_name")]

    def __str__(self) -> str:
        return self.name


class PromptVersion(models.Model):
    """One published version: immutable once saved (publish another to change anything)."""

    template = models.ForeignKey(PromptTemplate, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField(editable=False)
    messages = models.JSONField(help_text='[{"role": "system", "content": "You help {{ customer }}."}, ...]')
    variables = models.JSONField(default=list, editable=False, help_text="The names the messages use.")
    model = models.CharField(max_length=200, blank=True,
                             help_text="Default model or route, when a request names none.")
    parameters = models.JSONField(default=dict, blank=True,
                                  help_text="Defaults for the call (temperature, max_tokens, ...); a request's own win.")
    note = models.CharField(max_length=500, blank=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["template", "-number"]
        constraints = [models.UniqueConstraint(fields=["template", "number"], name="prompt_version_unique_number")]

    def __str__(self) -> str:
        return f"{self.template.name} v{self.number}" if self.template_id else f"v{self.number}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None:
            raise ValidationError("A published version cannot change; publish a new one.")
        super().save(*args, **kwargs)

    def clean(self) -> None:
        self.variables = sorted(checked_messages(self.messages))
        problem = parameters_problem(self.parameters)
        if problem:
            raise ValidationError({"parameters": problem})


def checked_messages(messages) -> frozenset[str]:
    """The variables of a version's messages; ValidationError naming the message at fault."""
    if not isinstance(messages, list) or not messages or len(messages) > 256:
        raise ValidationError({"messages": "A list of 1 to 256 messages, each {role, content}."})
    names: set[str] = set()
    for i, message in enumerate(messages):
        if (not isinstance(message, dict) or set(message) != {"role", "content"} or message["role"] not in ROLES
                or not isinstance(message["content"], str)):
            raise ValidationError({"messages": f"messages[{i}]: each message is {{role, content}}, a role of "
                                               f"{', '.join(ROLES)} and a string content."})
        try:
            names |= variables(message["content"])
        except TemplateProblem as problem:
            raise ValidationError({"messages": f"messages[{i}]: {problem}"}) from None
    return frozenset(names)


def parameters_problem(parameters) -> str:
    if not isinstance(parameters, dict):
        return "An object of parameters."
    unknown = sorted(set(parameters) - PARAMETERS)
    return f"Unknown parameters: {', '.join(unknown)}; known: {', '.join(sorted(PARAMETERS))}." if unknown else ""


class PromptLabel(models.Model):
    """A name (production, staging, ...) pointing at one version of its template; moved, never edited in place."""

    template = models.ForeignKey(PromptTemplate, on_delete=models.CASCADE, related_name="labels")
    name = models.SlugField(max_length=50, default=DEFAULT_LABEL)
    version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="labels")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["template", "name"]
        constraints = [models.UniqueConstraint(fields=["template", "name"], name="prompt_label_unique_name")]

    def __str__(self) -> str:
        return f"{self.name} → v{self.version.number}"

    def clean(self) -> None:
        if self.version_id and self.template_id and self.version.template_id != self.template_id:
            raise ValidationError({"version": "A version of this template."})
