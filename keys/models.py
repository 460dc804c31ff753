from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants import audit
from tenants.models import Tenant, check_model_names

from . import hashing


class ApiKeyQuerySet(models.QuerySet):
    def active(self):
        now = timezone.now()
        return self.filter(revoked_at__isnull=True, tenant__is_active=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """A gateway key. The secret itself is never stored: only its keyed hash."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=32, editable=False, help_text="First characters, to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text="Public model names this key may call; empty means every model the tenant may call.",
    )
    default_model = models.CharField(
        max_length=200, blank=True,
        help_text='Route or model served when a request asks for model "default" (else the tenant\'s).',
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, editable=False
    )
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaces", editable=False,
        help_text="The key this one was rotated to.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def clean(self) -> None:
        check_model_names(self.allowed_models)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def assign_secret(self) -> str:
        """Give a new, unsaved key its secret; return the secret, which is shown once and never stored."""
        secret = hashing.generate_key()
        self.prefix = hashing.display_prefix(secret)
        self.key_hash = hashing.hash_key(secret)
        return secret

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def state(self) -> str:
        if self.is_revoked:
            return "revoked"
        if self.is_expired:
            return "expired"
        return "rotated" if self.replaced_by_id else "active"

    def revoke(self) -> bool:
        """Refuse the key from now on, on every gateway process; False if it was revoked already."""
        if self.revoked_at is not None:
            return False
        self.revoked_at = timezone.now()
        with audit.named("key.revoke", self):
            self.save(update_fields=["revoked_at"])
        return True
