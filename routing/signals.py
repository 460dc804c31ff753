"""Push route changes to every process's routing table; feed health check results to the breakers."""

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from gateway_project.lib import config_cache
from providers import health

from . import breakers
from .batches import files
from .batches.models import File
from .models import (
    CachePolicy,
    Experiment,
    GuardrailCheck,
    GuardrailPolicy,
    PromptLabel,
    PromptTemplate,
    PromptVersion,
    Route,
    RouteRule,
    RouteTarget,
    Variant,
)


@receiver(health.checked)
def deployment_checked(sender, deployment_id: int, ok: bool, error: str, **kwargs) -> None:
    breakers.health_checked(deployment_id, ok, error)


@receiver([post_save, post_delete], sender=Route)
@receiver([post_save, post_delete], sender=RouteTarget)
@receiver([post_save, post_delete], sender=RouteRule)
@receiver([post_save, post_delete], sender=CachePolicy)
def routes_changed(sender, **kwargs) -> None:
    config_cache.changed("routes")


@receiver([post_save, post_delete], sender=GuardrailPolicy)
@receiver([post_save, post_delete], sender=GuardrailCheck)
def guardrails_changed(sender, **kwargs) -> None:
    config_cache.changed("guardrails")


@receiver([post_save, post_delete], sender=PromptTemplate)
@receiver([post_save, post_delete], sender=PromptVersion)
@receiver([post_save, post_delete], sender=PromptLabel)
def prompts_changed(sender, **kwargs) -> None:
    config_cache.changed("prompts")


@receiver([post_save, post_delete], sender=Experiment)
@receiver([post_save, post_delete], sender=Variant)
def experiments_changed(sender, **kwargs) -> None:
    config_cache.changed("experiments")


@receiver(post_delete, sender=File)
def file_deleted(sender, instance: File, **kwargs) -> None:
    """A file's stored bytes go with its row, however the row went (its own delete, a batch's
    retention, its tenant's deletion), once the deletion is committed."""
    transaction.on_commit(lambda: files.forget(instance.storage_name))
