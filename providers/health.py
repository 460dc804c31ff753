"""Provider health checks: a cheap probe per provider and deployment, kept, and fed to routing.

The probe is the provider's model list (no tokens spent, see connection.py). A
deployment is healthy when its provider answers and, where the provider lists
its models, the deployment's upstream model is among them. A failed probe
opens the deployment's circuit breaker for every gateway process (unless it is
open already); a passing probe closes a breaker whose cooldown has run out, so
traffic comes back without waiting for a client's call to be the probe.
"""

import time
from datetime import UTC, datetime

from django.conf import settings

from routing import breakers

from .connection import check_connection
from .models import Deployment, HealthCheck, Provider

# Kinds whose model list does not name the deployments (Azure lists base
# models, TGI serves one model whatever it is called).
UNLISTED = {"azure", "huggingface"}


def check_all() -> list[HealthCheck]:
    results: list[HealthCheck] = []
    now = datetime.now(UTC)
    for provider in Provider.objects.filter(is_active=True).prefetch_related("deployments"):
        probe = check_connection(provider)
        results.append(HealthCheck(provider=provider, checked_at=now, ok=probe.ok, status=probe.status,
                                   latency_ms=probe.latency_ms, models_found=len(probe.models), error=probe.error))
        for deployment in provider.deployments.all():
            if not deployment.is_active:
                continue
            ok, error = probe.ok, probe.error
            if ok and probe.models and provider.kind not in UNLISTED and deployment.upstream_model not in probe.models:
                ok, error = False, f"the provider does not list the model '{deployment.upstream_model}'"
            results.append(HealthCheck(provider=provider, deployment=deployment, checked_at=now, ok=ok,
                                       status=probe.status, latency_ms=probe.latency_ms,
                                       models_found=len(probe.models), error=error))
            feed_breaker(deployment, ok, error)
    HealthCheck.objects.bulk_create(results)
    return results


def feed_breaker(deployment: Deployment, ok: bool, error: str) -> None:
    shared = breakers.shared_state(deployment.id)
    if ok:
        if shared.startswith("half-open"):
            breakers.force(deployment.id, 0.0, "closed", "health check passed")
    elif shared == "closed":
        breakers.force(deployment.id, time.time() + settings.BREAKER_COOLDOWN, "open",
                       f"health check failed: {error}")


def latest(provider_ids=None) -> dict[tuple[int, int | None], HealthCheck]:
    """The newest check of each provider and deployment, for the admin and the dashboard."""
    rows = HealthCheck.objects.order_by("provider_id", "deployment_id", "-checked_at").distinct(
        "provider_id", "deployment_id") if _postgres() else HealthCheck.objects.order_by("-checked_at")
    if provider_ids is not None:
        rows = rows.filter(provider_id__in=provider_ids)
    found: dict[tuple[int, int | None], HealthCheck] = {}
    for row in rows:
        found.setdefault((row.provider_id, row.deployment_id), row)
    return found


def _postgres() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"
