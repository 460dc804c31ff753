"""Push limit changes to every process's cached rules."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from gateway_project.lib import config_cache
from tenants.models import Tenant

from .models import Limit


@receiver([post_save, post_delete], sender=Limit)
@receiver([post_save, post_delete], sender=Tenant)
def limits_changed(sender, **kwargs) -> None:
    config_cache.changed("limits")
