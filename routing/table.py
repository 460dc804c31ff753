"""The routing table: public model names -> routes -> deployments, cached per process.

Loaded whole from the database (it is small) and kept until a change is
announced (gateway_project.lib.config_cache) or it expires. A name is served by the
tenant's Route of that name, else a shared Route, else the deployments that
carry the name as their public model (priority order).
"""

import logging
from dataclasses import dataclass, replace

from django.db.models import Q

from gateway_project.lib import config_cache, errors
from providers.crypto import SecretUnreadable
from providers.models import Deployment
from providers.targets import Target, target_for

from .cache import policies as cache_policies
from .models import Route, RouteRule, RouteTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ContentRule:
    """A route's rule (routing.models.RouteRule) as the hot path sees it."""

    kind: str
    value: str
    header: str
    deployment_id: int | None
    sub_route: str | None


@dataclass(frozen=True, slots=True)
class RouteSpec:
    name: str
    strategy: str
    targets: tuple[Target, ...]
    rules: tuple[ContentRule, ...] = ()
    hedge_after_ms: int | None = None
    max_attempts: int = 3
    deadline_seconds: float = 120.0
    context_fallback: str | None = None
    explicit: bool = False


class RoutingTable:
    def __init__(self, targets: list[Target], routes: list[tuple[int | None, RouteSpec]] = (),
                 cache_policies: dict | None = None) -> None:
        # The response cache's policies by tenant (routing/cache/policies.py): configuration that
        # changes with the routes', read on the path without a query.
        self.cache_policies = cache_policies or {}
        self.by_model: dict[str, list[Target]] = {}
        for target in targets:
            self.by_model.setdefault(target.public_model, []).append(target)
        self.routes: dict[tuple[int | None, str], RouteSpec] = {(tenant, r.name): r for tenant, r in routes}

    def targets_for(self, tenant_id: int, model: str) -> list[Target]:
        """Deployments carrying `model` as their public name that this tenant can reach."""
        return [t for t in self.by_model.get(model, ()) if t.visible_to(tenant_id)]

    def route_for(self, tenant_id: int, model: str) -> RouteSpec | None:
        spec = self.routes.get((tenant_id, model)) or self.routes.get((None, model))
        if spec is not None:
            visible = tuple(t for t in spec.targets if t.visible_to(tenant_id))
            return spec if len(visible) == len(spec.targets) else _replace_targets(spec, visible)
        targets = self.targets_for(tenant_id, model)
        return RouteSpec(model, Route.Strategy.PRIORITY, tuple(targets)) if targets else None

    def models_for(self, tenant_id: int) -> list[tuple[str, int, str]]:
        """(name, created, owned_by) of every name the tenant can call."""
        seen: dict[str, tuple[str, int, str]] = {}
        for targets in self.by_model.values():
            for t in targets:
                if t.visible_to(tenant_id):
                    seen.setdefault(t.public_model, (t.public_model, t.created, t.provider_name))
                    break
        for (tenant, name), spec in self.routes.items():
            if tenant in (None, tenant_id) and any(t.visible_to(tenant_id) for t in spec.targets):
                seen[name] = (name, min((t.created for t in spec.targets), default=0), "gateway")
        return sorted(seen.values())


def _replace_targets(spec: RouteSpec, targets: tuple[Target, ...]) -> RouteSpec:
    return replace(spec, targets=targets)


def _target(d: Deployment) -> Target | None:
    try:
        return target_for(d.provider, d)
    except SecretUnreadable:
        log.error("provider %s: secret unreadable with the configured keys; skipped", d.provider.name)
        return None


_LIVE = Q(is_active=True, provider__is_active=True) & (
    Q(provider__tenant__isnull=True) | Q(provider__tenant__is_active=True)
)


def load() -> RoutingTable:
    """The routing table as the database holds it now (sync, ORM)."""
    deployments = Deployment.objects.filter(_LIVE).select_related("provider").order_by(
        "public_model", "priority", "id")
    targets = [t for d in deployments if (t := _target(d)) is not None]
    by_id = {t.deployment_id: t for t in targets}
    route_targets: dict[int, list[Target]] = {}
    for rt in RouteTarget.objects.filter(is_active=True, deployment_id__in=by_id).order_by("priority", "id"):
        base = by_id[rt.deployment_id]
        route_targets.setdefault(rt.route_id, []).append(
            replace(base, priority=rt.priority, weight=rt.weight))
    rules: dict[int, list[ContentRule]] = {}
    for rule in RouteRule.objects.select_related("sub_route").order_by("order", "id"):
        rules.setdefault(rule.route_id, []).append(ContentRule(
            rule.kind, rule.value, rule.header.lower(), rule.deployment_id,
            rule.sub_route.name if rule.sub_route_id else None))
    routes = []
    for route in Route.objects.filter(is_active=True).select_related("context_fallback"):
        routes.append((route.tenant_id, RouteSpec(
            name=route.name, strategy=route.strategy, targets=tuple(route_targets.get(route.id, ())),
            rules=tuple(rules.get(route.id, ())), hedge_after_ms=route.hedge_after_ms,
            max_attempts=route.max_attempts, deadline_seconds=route.deadline_seconds,
            context_fallback=route.context_fallback.name if route.context_fallback_id else None, explicit=True,
        )))
    return RoutingTable(targets, routes, cache_policies.load())




_table = config_cache.Reloaded("routes", load, "routing table")


async def current() -> RoutingTable:
    return await _table.get()


def loaded() -> RoutingTable | None:
    """The table as this process last loaded it (no reload): for a step after authorize, which loaded it."""
    return _table.value


async def route_for_key(key, model: str, mode: str) -> RouteSpec:
    """Authorize `key` for `model` and return the route serving it for this kind of call.

    A name the tenant cannot see at all is "not found" (404), so that tenants
    cannot probe each other's private models; one it can see but this key or
    tenant may not use is "not allowed" (403).
    """
    spec = (await current()).route_for(key.tenant_id, model)
    if spec is None or not spec.targets:
        raise errors.model_not_found(model)
    if not key.may_use(model):
        raise errors.model_not_allowed(model)
    targets = tuple(t for t in spec.targets if t.mode == mode)
    if not targets:
        what = {"chat": "chat completions", "embedding": "embeddings"}.get(mode, mode)
        raise errors.bad_request(f"The model '{model}' does not support {what}.", param="model",
                                 code="model_not_supported")
    return spec if len(targets) == len(spec.targets) else _replace_targets(spec, targets)


async def route_named(tenant_id: int, name: str) -> RouteSpec | None:
    return (await current()).route_for(tenant_id, name)
