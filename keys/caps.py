"""What a plain member may do to the caps on their own keys: only narrow them.

A key's caps are its `allowed_models`, its `expires_at` and its limits (rows of
usage.Limit). Owners and admins set them; a member, who manages the keys they
created, may narrow them and never widen them, in the management API and the
admin alike:

- `allowed_models`: a subset of the current list (an empty list means every
  model, so emptying a list widens it);
- `expires_at`: earlier, never later, never removed;
- limits, tenant and owner: not theirs to change (tenants/scoping.py);
- a rotation copies all of it (ApiKey.rotate).

A member's new key is no wider than the keys they have: it inherits the
tightest caps of the member's keys in that tenant (revoked ones included, so
that revoking a capped key and making another does not shed its caps; rotated
ones through their replacement): the models every capped key allows, the
earliest expiry still ahead, and a copy of every limit on them. Only owners,
admins and staff loosen caps, by editing the member's keys.
"""

from datetime import datetime

from django.core.exceptions import ValidationError
from django.utils import timezone

from tenants.scoping import MEMBER, Scope

from .models import ApiKey


def bound_by_caps(scope: Scope, tenant_id: int | None) -> bool:
    """Whether the user may only narrow caps in this tenant (a plain member there)."""
    return not scope.everything and scope.role(tenant_id) == MEMBER


def check_narrowing(key: ApiKey, changes: dict) -> None:
    """Raise ValidationError (by field) if `changes` would widen `key`'s caps."""
    errors = {}
    if "allowed_models" in changes:
        current, wanted = set(key.allowed_models or ()), set(changes["allowed_models"] or ())
        if current and not wanted:
            errors["allowed_models"] = ("An empty list allows every model; members may only remove "
                                        "models from their own keys.")
        elif current and not wanted <= current:
            errors["allowed_models"] = (f"Members may only remove models from their own keys, not add "
                                        f"{', '.join(sorted(wanted - current))}.")
    if "expires_at" in changes and key.expires_at is not None:
        wanted = changes["expires_at"]
        if wanted is None or wanted > key.expires_at:
            errors["expires_at"] = (f"Members may only move their own keys' expiry earlier "
                                    f"(at the latest {key.expires_at.isoformat()}).")
    if errors:
        raise ValidationError(errors)


def _capping_keys(tenant_id: int, user_id: int):
    return ApiKey.objects.filter(tenant_id=tenant_id, created_by_id=user_id, replaced_by__isnull=True)


def inherited(tenant_id: int, user_id: int) -> tuple[list[str] | None, datetime | None]:
    """(the models a member's new key may allow, None: no cap; its latest expiry, None: none)."""
    models, expiry, now = None, None, timezone.now()
    for allowed, expires_at in _capping_keys(tenant_id, user_id).order_by("created_at").values_list(
            "allowed_models", "expires_at"):
        if allowed:
            models = list(allowed) if models is None else [name for name in models if name in allowed]
        if expires_at is not None and expires_at > now and (expiry is None or expires_at < expiry):
            expiry = expires_at
    return models, expiry


def cap_new_key(tenant_id: int, user_id: int, attrs: dict) -> dict:
    """`attrs` of a member's new key, its caps inherited; ValidationError if it asks for more.
    An empty or missing `allowed_models` or `expires_at` means "as wide as I may"."""
    models, expiry = inherited(tenant_id, user_id)
    attrs = dict(attrs)
    wanted = attrs.get("allowed_models") or []
    if models is not None:
        if not models:
            raise ValidationError({"allowed_models": "Your keys allow no model in common, so a new key could "
                                                     "call nothing; ask an admin of the tenant."})
        if extra := sorted(set(wanted) - set(models)):
            raise ValidationError({"allowed_models": f"Your keys are capped to {', '.join(models)}; a member's "
                                                     f"new key may not allow {', '.join(extra)}."})
        attrs["allowed_models"] = wanted or models
    if expiry is not None:
        if attrs.get("expires_at") is not None and attrs["expires_at"] > expiry:
            raise ValidationError({"expires_at": f"Your keys expire by {expiry.isoformat()}; a member's new key "
                                                 f"may not outlive them."})
        attrs["expires_at"] = attrs.get("expires_at") or expiry
    return attrs


def capping_keys(key: ApiKey):
    """The member's other keys in `key`'s tenant, whose limits a member's new `key` inherits (keys.services)."""
    return _capping_keys(key.tenant_id, key.created_by_id).exclude(pk=key.pk)
