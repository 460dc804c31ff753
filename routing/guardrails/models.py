"""Guardrail policies: per tenant, per key, per route, each an ordered list of checks."""

from django.core.exceptions import ValidationError
from django.db import models

from keys.models import ApiKey
from providers import crypto, netguard
from tenants.models import Tenant

from . import detectors


class GuardrailPolicy(models.Model):
    """Checks for a tenant's calls: all of them, one key's, or one route's (model name's).

    Every active policy matching a call applies: the tenant's, then its route's, then its key's,
    each policy's checks in their order.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="guardrail_policies")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.CASCADE,
                                related_name="guardrail_policies", help_text="Empty: every key of the tenant.")
    route = models.CharField(max_length=200, blank=True, help_text="A model name clients send; empty: all.")
    name = models.CharField(max_length=100)
    is_active = models.BooleanField(default=True)
    restore = models.BooleanField(
        default=False, help_text="Put the caller's redacted values back where the answer repeats a placeholder.")
    hold_back_chars = models.PositiveIntegerField(
        default=96, help_text="Streams: text held back for the output checks to see a finding whole.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "id"]
        verbose_name_plural = "guardrail policies"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.api_key_id and self.tenant_id and self.api_key.tenant_id != self.tenant_id:
            raise ValidationError({"api_key": "The key belongs to another tenant."})


class GuardrailCheck(models.Model):
    class Kind(models.TextChoices):
        PII = "pii", "Personal data"
        SECRETS = "secrets", "Secrets (API keys, tokens, private keys)"
        TERMS = "terms", "Blocked terms"
        REGEX = "regex", "Regular expressions"
        MODERATION = "moderation", "Moderation (a moderation deployment)"
        WEBHOOK = "webhook", "Webhook"

    class Stage(models.TextChoices):
        INPUT = "input", "Input"
        OUTPUT = "output", "Output"
        BOTH = "both", "Input and output"

    class Action(models.TextChoices):
        BLOCK = "block", "Block"
        REDACT = "redact", "Redact"
        FLAG = "flag", "Flag (allow and record)"

    class FailureMode(models.TextChoices):
        CLOSED = "closed", "Closed: refuse when the check fails"
        OPEN = "open", "Open: allow and record when the check fails"

    policy = models.ForeignKey(GuardrailPolicy, on_delete=models.CASCADE, related_name="checks")
    order = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    stage = models.CharField(max_length=8, choices=Stage.choices, default=Stage.INPUT)
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.BLOCK)
    failure_mode = models.CharField(max_length=8, choices=FailureMode.choices, default=FailureMode.CLOSED)
    pii_types = models.JSONField(default=list, blank=True,
                                 help_text=f"PII: any of {', '.join(detectors.PII_TYPES)}; empty: all.")
    phone_region = models.CharField(max_length=2, default="US", help_text="PII: where numbers without +code are.")
    terms = models.JSONField(default=list, blank=True, help_text="Blocked terms: whole words, any case.")
    patterns = models.JSONField(default=list, blank=True, help_text="Regular expressions.")
    model = models.CharField(max_length=200, blank=True, help_text="Moderation: the model name of the deployment.")
    categories = models.JSONField(default=list, blank=True, help_text="Moderation: flagged categories that count; "
                                                                      "empty: any flagged answer.")
    url = models.URLField(max_length=500, blank=True, help_text="Webhook: where the text is posted.")
    secret_encrypted = models.TextField(blank=True, editable=False)
    allow_private_network = models.BooleanField(default=False, help_text="Webhook: may call private addresses "
                                                                         "(staff only).")
    timeout_ms = models.PositiveIntegerField(default=2000, help_text="Moderation, webhook and regex time limit.")

    class Meta:
        ordering = ["policy", "order", "id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.stage}, {self.action})"

    def set_secret(self, secret: str) -> None:
        self.secret_encrypted = crypto.encrypt(secret) if secret else ""

    def secret(self) -> str:
        return crypto.decrypt(self.secret_encrypted) if self.secret_encrypted else ""

    def clean(self) -> None:
        problems = {}
        if unknown := set(self.pii_types or ()) - set(detectors.PII_TYPES):
            problems["pii_types"] = f"Unknown types: {', '.join(sorted(unknown))}."
        for pattern in self.patterns or ():
            try:
                detectors.compile_pattern(pattern)
            except Exception as exc:  # re.error: the message says where
                problems["patterns"] = f"{pattern!r} is not a regular expression: {exc}"
        if self.kind == self.Kind.WEBHOOK:
            if not self.url:
                problems["url"] = "A webhook check needs a URL."
            else:
                try:
                    netguard.check_url(self.url, self.allow_private_network)
                except netguard.UnsafeAddress as exc:
                    problems["url"] = str(exc)
        if self.kind == self.Kind.MODERATION and not self.model:
            problems["model"] = "A moderation check needs the model name of a moderation deployment."
        if self.action == self.Action.REDACT and self.kind in (self.Kind.MODERATION, self.Kind.WEBHOOK):
            problems["action"] = "Moderation and webhook checks can block or flag, not redact."
        if problems:
            raise ValidationError(problems)
