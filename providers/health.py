"""Provider health checks: a cheap probe per provider and deployment, kept, and fed to routing.

The probe is the provider's model list (no tokens spent, see connection.py),
one per provider, all providers at once so a provider that hangs does not
delay the others' checks. A deployment passes when its provider answers and,
where the provider lists its models, lists the deployment's upstream model.

What routing does with a result (docs/routing.md, "Health checks"): a failed
probe opens the breakers of the provider's deployments for every gateway
process (a closed one, or a half-open one whose next call would only fail
again); a breaker that is already open stays open until its cooldown ends. A
passing probe closes a half-open breaker, so traffic comes back without a
client's call being the probe, but never an open one: real calls failing
outweigh a model list answering. A deployment whose model is not listed is
shown as failed and left to real calls, since providers accept aliases they
do not list.
"""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection
from django.db.models import Max
from django.dispatch import Signal

from .connection import ConnectionCheck, check_connection
from .models import Deployment, HealthCheck, Provider

# Kinds whose model list does not name the deployments (Azure lists base
# models, TGI serves one model whatever it is called).
UNLISTED = {"azure", "huggingface"}
PARALLEL_PROBES = 8
# Sent for each deployment a probe speaks for: sender=Deployment, deployment_id, ok, error (routing's
# breakers listen: routing/signals.py).
checked = Signal()
ERROR_LENGTH = HealthCheck._meta.get_field("error").max_length


def check_all() -> list[HealthCheck]:
    """Probe every active provider and deployment, keep the results and feed the breakers."""
    providers = list(Provider.objects.filter(is_active=True).prefetch_related("deployments"))
    now = datetime.now(UTC)
    results: list[HealthCheck] = []
    for provider, probe in zip(providers, _probe_all(providers), strict=True):
        results.append(_result(provider, None, probe, probe.ok, probe.error, now))
        for deployment in provider.deployments.all():
            if not deployment.is_active:
                continue
            listed = _listed(provider, deployment, probe)
            error = probe.error or ("" if listed else f"the provider does not list the model "
                                                      f"'{deployment.upstream_model}'")
            results.append(_result(provider, deployment, probe, probe.ok and listed, error, now))
            if not probe.ok or listed:
                checked.send(Deployment, deployment_id=deployment.id, ok=probe.ok, error=probe.error)
    HealthCheck.objects.bulk_create(results)
    return results


def _probe_all(providers: list[Provider]) -> list[ConnectionCheck]:
    if not providers:
        return []
    with ThreadPoolExecutor(max_workers=min(PARALLEL_PROBES, len(providers))) as pool:
        return list(pool.map(_probe, providers))


def _probe(provider: Provider) -> ConnectionCheck:
    try:
        return check_connection(provider, timeout=settings.HEALTH_CHECK_TIMEOUT)
    finally:
        connection.close()  # this thread's own connection, opened by the probe's lookups


def _listed(provider: Provider, deployment: Deployment, probe: ConnectionCheck) -> bool:
    if not probe.ok or not probe.models or provider.kind in UNLISTED:
        return True
    wanted = deployment.upstream_model
    # Ollama lists "llama3:latest" and serves it as "llama3" too.
    return wanted in probe.models or f"{wanted}:latest" in probe.models


def _result(provider: Provider, deployment: Deployment | None, probe: ConnectionCheck, ok: bool, error: str,
            now: datetime) -> HealthCheck:
    # The error is already free of every form of the provider's credentials
    # (check_connection cleans it, providers/adapters/redact.py); it is cut to the column.
    return HealthCheck(provider=provider, deployment=deployment, checked_at=now, ok=ok, status=probe.status,
                       latency_ms=probe.latency_ms, models_found=len(probe.models), error=error[:ERROR_LENGTH])


def latest(provider_ids=None) -> dict[tuple[int, int | None], HealthCheck]:
    """The newest check of each provider and deployment, for the admin."""
    rows = HealthCheck.objects.all()
    if provider_ids is not None:
        rows = rows.filter(provider_id__in=provider_ids)
    if connection.vendor == "postgresql":
        rows = rows.order_by("provider_id", "deployment_id", "-checked_at").distinct("provider_id", "deployment_id")
    else:
        newest = rows.values("provider_id", "deployment_id").annotate(newest=Max("id")).values("newest")
        rows = HealthCheck.objects.filter(id__in=newest)
    return {(row.provider_id, row.deployment_id): row for row in rows}
