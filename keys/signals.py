"""Push key and tenant changes to the hot path's caches on every process."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from gateway_project.lib import config_cache
from tenants.models import Tenant

from .models import ApiKey


@receiver([post_save, post_delete], sender=ApiKey)
@receiver([post_save, post_delete], sender=Tenant)
def keys_changed(sender, **kwargs) -> None:
    config_cache.changed("keys")
    if sender is Tenant:
        config_cache.changed("routes")
