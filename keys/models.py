from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.models import Tenant

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
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, tenant: Tenant, name: str, *, models_allowed=(), expires_in_days=None, created_by=None):
        """Create a key and return (row, secret). The secret is not kept anywhere."""
        secret = hashing.generate_key()
        expires_at = None
        if expires_in_days:
            expires_at = timezone.now() + timedelta(days=expires_in_days)
        key = cls.objects.create(
            tenant=tenant,
            name=name,
            prefix=hashing.display_prefix(secret),
            key_hash=hashing.hash_key(secret),
            allowed_models=list(models_allowed),
            expires_at=expires_at,
            created_by=created_by,
        )
        return key, secret

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
