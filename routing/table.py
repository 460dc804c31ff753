"""The routing table: public model name -> deployments, cached per process.

Loaded whole from the database (it is small: one row per deployment) and kept
until a change is announced (routing.invalidation) or it expires.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db.models import Q

from gateway_project.orm_thread import run_orm
from providers.crypto import SecretUnreadable
from providers.models import Deployment

from . import errors, invalidation

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """Everything the hot path needs to call one deployment, with no ORM access."""

    deployment_id: int
    provider_id: int
    provider_name: str
    tenant_id: int | None
    kind: str
    base_url: str
    api_key: str = field(repr=False)
    extra_headers: dict[str, str]
    settings: dict[str, str]
    public_model: str
    upstream_model: str
    mode: str
    context_window: int
    max_output_tokens: int
    input_price_per_mtok: Decimal
    output_price_per_mtok: Decimal
    created: int

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """Exact cost in USD (prices are per million tokens)."""
        return (
            prompt_tokens * self.input_price_per_mtok + completion_tokens * self.output_price_per_mtok
        ) / 1_000_000


class RoutingTable:
    def __init__(self, targets: list[Target]) -> None:
        self.by_model: dict[str, list[Target]] = {}
        for target in targets:
            self.by_model.setdefault(target.public_model, []).append(target)

    def targets_for(self, tenant_id: int, model: str) -> list[Target]:
        """Deployments of `model` this tenant can reach, in priority order."""
        return [t for t in self.by_model.get(model, ()) if t.tenant_id is None or t.tenant_id == tenant_id]

    def models_for(self, tenant_id: int) -> list[Target]:
        """One target per public model visible to the tenant (the first in priority)."""
        seen = []
        for targets in self.by_model.values():
            for t in targets:
                if t.tenant_id is None or t.tenant_id == tenant_id:
                    seen.append(t)
                    break
        return seen


def target_for(provider, deployment=None) -> Target:
    """A Target for one deployment of `provider` (or for the provider alone, to probe it).

    Raises SecretUnreadable when the provider secret cannot be decrypted.
    """
    d = deployment
    return Target(
        deployment_id=d.id if d else 0,
        provider_id=provider.id,
        provider_name=provider.name,
        tenant_id=provider.tenant_id,
        kind=provider.kind,
        base_url=provider.base_url.rstrip("/"),
        api_key=provider.get_api_key(),
        extra_headers=dict(provider.extra_headers or {}),
        settings=provider.effective_settings(),
        public_model=d.public_model if d else "",
        upstream_model=d.upstream_model if d else "",
        mode=d.mode if d else "chat",
        context_window=d.context_window if d else 0,
        max_output_tokens=d.max_output_tokens if d else 0,
        input_price_per_mtok=d.input_price_per_mtok if d else Decimal(0),
        output_price_per_mtok=d.output_price_per_mtok if d else Decimal(0),
        created=int(d.created_at.timestamp()) if d else 0,
    )


def _load() -> RoutingTable:
    rows = (
        Deployment.objects.filter(is_active=True, provider__is_active=True)
        .select_related("provider")
        .filter(Q(provider__tenant__isnull=True) | Q(provider__tenant__is_active=True))
        .order_by("public_model", "priority", "id")
    )
    targets = []
    for d in rows:
        try:
            targets.append(target_for(d.provider, d))
        except SecretUnreadable:
            log.error("provider %s: secret unreadable with the configured keys; skipped", d.provider.name)
    return RoutingTable(targets)


_table: RoutingTable | None = None
_table_generation = -1
_loaded_at = 0.0
_lock = asyncio.Lock()


async def current() -> RoutingTable:
    global _table, _table_generation, _loaded_at
    generation = invalidation.generation("routes")
    if (
        _table is not None
        and generation == _table_generation
        and time.monotonic() - _loaded_at < settings.GATEWAY_CONFIG_CACHE_SECONDS
    ):
        return _table
    async with _lock:
        generation = invalidation.generation("routes")
        if _table is None or generation != _table_generation or (
            time.monotonic() - _loaded_at >= settings.GATEWAY_CONFIG_CACHE_SECONDS
        ):
            _table = await run_orm(_load)
            _table_generation = generation
            _loaded_at = time.monotonic()
    return _table


async def targets_for_key(key, model: str, mode: str) -> list[Target]:
    """Authorize `key` for `model` and return its deployments for this kind of call.

    A model the tenant cannot see at all is "not found" (404), so that tenants
    cannot probe each other's private models; one it can see but this key or
    tenant may not use is "not allowed" (403).
    """
    targets = (await current()).targets_for(key.tenant_id, model)
    if not targets:
        raise errors.model_not_found(model)
    if not key.may_use(model):
        raise errors.model_not_allowed(model)
    targets = [t for t in targets if t.mode == mode]
    if not targets:
        what = "chat completions" if mode == "chat" else "embeddings"
        raise errors.bad_request(f"The model '{model}' does not support {what}.", param="model",
                                 code="model_not_supported")
    return targets
