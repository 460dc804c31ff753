from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models


def check_model_names(value) -> None:
    """`allowed_models` is a JSON column: anything but a list of names would break
    every key of the tenant when the gateway reads it (keys/auth.py)."""
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValidationError({"allowed_models": "A list of model names, such as [\"gpt-4o\"]."})


class Tenant(models.Model):
    """An organisation using the gateway: owns keys, providers, limits and usage."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    is_active = models.BooleanField(
        default=True, help_text="An inactive tenant's keys are refused like unknown keys."
    )
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text="Public model names this tenant may call; empty means every model it can see.",
    )
    default_model = models.CharField(
        max_length=200, blank=True,
        help_text='Route or model served when a request asks for model "default".',
    )
    time_zone = models.CharField(
        max_length=64, default="UTC", help_text="Budget and quota periods (day, week, month) follow this time zone."
    )
    retention_days = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Keep this tenant's usage records, audit entries and stored responses this many days; "
                  "empty: the global USAGE_RETENTION_DAYS / AUDIT_RETENTION_DAYS / RESPONSES_RETENTION_DAYS.",
    )
    log_prompts = models.BooleanField(
        default=False,
        help_text="Log this tenant's prompts, redacted (e-mail addresses, key-like strings and digit runs "
                  "removed), in the request log and the prompt log, kept for the retention below.",
    )
    prompt_retention_days = models.PositiveSmallIntegerField(
        default=7, help_text="Days logged prompts are kept before the prompt purge deletes them."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def clean(self) -> None:
        check_model_names(self.allowed_models)
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError({"time_zone": f"Unknown time zone {self.time_zone!r}."}) from None

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in one tenant."""

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_user")
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role}) in {self.tenant}"


class AuditLog(models.Model):
    """Who did what to which object, from where, in which request (tenants/audit.py writes it).

    A ledger: a row outlives the tenant and the user it names, so those links
    carry no database constraint and the actor's name is copied in.
    """

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False,
                               related_name="+")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False,
        related_name="+",
    )
    actor_label = models.CharField("actor", max_length=200, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField("object", max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True, help_text="Field by field: [old, new]; secrets redacted.")
    address = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=100, blank=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "created_at"], name="auditlog_tenant_time")]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type} {self.object_repr}"


class SsoIdentity(models.Model):
    """The identity provider's account behind a user who signs in with single sign-on
    (tenants/sso.py): found again by issuer and subject, never by a name or an e-mail
    address, so a local account is never taken over by an IdP account of the same name.
    Such a user's memberships follow the role claim at every sign-in."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identity")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "SSO identity"
        verbose_name_plural = "SSO identities"
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="sso_identity_unique_subject")]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"
