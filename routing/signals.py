"""Push route changes to every process's routing table."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from gateway_project.lib import config_cache

from .models import Route, RouteRule, RouteTarget


@receiver([post_save, post_delete], sender=Route)
@receiver([post_save, post_delete], sender=RouteTarget)
@receiver([post_save, post_delete], sender=RouteRule)
def routes_changed(sender, **kwargs) -> None:
    config_cache.changed("routes")
