"""Push limit changes to every process's cached rules; give a new key the limits it inherits."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from gateway_project.lib import config_cache
from keys.services import key_issued
from tenants.models import Tenant

from .models import Limit


@receiver([post_save, post_delete], sender=Limit)
@receiver([post_save, post_delete], sender=Tenant)
def limits_changed(sender, **kwargs) -> None:
    config_cache.changed("limits")


# The fields of a Limit that say what it bounds; two rows equal in these are one cap.
LIMIT_FIELDS = ("model", "requests_per_minute", "tokens_per_minute", "max_concurrent", "period", "token_quota",
                "budget_usd", "offline_credit_usd")


@receiver(key_issued)
def copy_limits(sender, key, limits_from, **kwargs) -> None:
    """A new key (a rotation's replacement, a capped member's key) gets a copy of every limit on
    `limits_from`, once per distinct shape, in the issuing transaction."""
    seen = set()
    for limit in Limit.objects.filter(api_key__in=limits_from).order_by("id"):
        shape = tuple(getattr(limit, name) for name in LIMIT_FIELDS)
        if shape not in seen:
            seen.add(shape)
            limit.pk, limit.api_key = None, key
            limit.save()
