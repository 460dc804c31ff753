"""Writes about keys that reach beyond one row: issuing a key (with the limits it inherits) and rotating one.

Called alike by the admin, the management API, the CLI and the demo. Limits
belong to the usage app, which depends on keys; so a new key's limits travel
by the `key_issued` signal, which usage/signals.py answers inside the same
transaction: copies of the limits on `limits_from`, one per distinct shape.
"""

from datetime import timedelta

from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from tenants import audit

from .models import ApiKey

# Sent inside the issuing transaction: sender=ApiKey, key=the new key, limits_from=keys whose limits it gets.
key_issued = Signal()


def issue(tenant, name: str, *, models_allowed=(), expires_in_days=None, created_by=None,
          limits_from=(), **fields) -> tuple[ApiKey, str]:
    """Create a key and return (row, secret). The secret is not kept anywhere."""
    if expires_in_days:
        fields["expires_at"] = timezone.now() + timedelta(days=expires_in_days)
    key = ApiKey(tenant=tenant, name=name, allowed_models=list(models_allowed), created_by=created_by, **fields)
    return key, save_new(key, limits_from)


def save_new(key: ApiKey, limits_from=(), save=None) -> str:
    """Save a new, unsaved key with a fresh secret and copies of the limits on `limits_from`; return the
    secret, which is shown once and never stored. `save()` saves it, if not `key.save` (the admin's and
    the API's own, which check the row too), inside the same transaction."""
    secret = key.assign_secret()
    with transaction.atomic(), audit.named("key.create", key):
        (save or key.save)()
        if limits_from:
            key_issued.send(ApiKey, key=key, limits_from=list(limits_from))
    return secret


def revoke(key: ApiKey) -> bool:
    """Refuse `key` from now on, on every gateway process; False if it was revoked already."""
    return key.revoke()


def rotate(key: ApiKey, grace: timedelta) -> tuple[ApiKey, str]:
    """Issue a replacement with the same settings, caps (models, expiry), owner and limits; `key` keeps
    working for `grace` (zero: not at all), then is refused. Returns (new key, secret)."""
    if key.is_revoked or key.is_expired:
        raise ValueError("Only a key in use can be rotated.")
    if key.replaced_by_id:
        # Its replacement carries the caps now, perhaps narrowed since: a second
        # replacement copied from this one could be wider.
        raise ValueError("This key was rotated already: rotate its replacement.")
    with transaction.atomic():
        new, secret = issue(key.tenant, key.name, models_allowed=key.allowed_models, created_by=key.created_by,
                            default_model=key.default_model, expires_at=key.expires_at, limits_from=[key])
        ends = timezone.now() + grace
        key.expires_at = ends if key.expires_at is None else min(key.expires_at, ends)
        key.replaced_by = new
        with audit.named("key.rotate", key):
            key.save(update_fields=["expires_at", "replaced_by"])
    return new, secret
