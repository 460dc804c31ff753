"""Which cache policy covers a call, from the routing table's copy of the policies (no query on the path)."""

from dataclasses import dataclass

from ..models import CachePolicy


@dataclass(frozen=True, slots=True)
class Policy:
    """A CachePolicy as the hot path reads it."""

    id: int
    tenant_id: int
    api_key_id: int | None
    model: str
    mode: str
    ttl_seconds: int
    sliding: bool
    endpoints: frozenset[str]
    cache_tool_calls: bool
    max_answer_bytes: int
    hits_count_against_limits: bool
    semantic_threshold: float
    semantic_embedding_model: str

    @property
    def exact(self) -> bool:
        return self.mode in (CachePolicy.Mode.EXACT, CachePolicy.Mode.BOTH)

    @property
    def semantic(self) -> bool:
        return self.mode in (CachePolicy.Mode.SEMANTIC, CachePolicy.Mode.BOTH)


def load() -> dict[int, tuple[Policy, ...]]:
    """Every tenant's policies, most specific first (sync, ORM; called by routing.table.load)."""
    by_tenant: dict[int, list[Policy]] = {}
    for p in CachePolicy.objects.all():
        by_tenant.setdefault(p.tenant_id, []).append(Policy(
            p.id, p.tenant_id, p.api_key_id, p.model, p.mode, p.ttl_seconds,
            p.expiry == CachePolicy.Expiry.SLIDING, frozenset(p.endpoints or ()), p.cache_tool_calls,
            p.max_answer_bytes, p.hits_count_against_limits, p.semantic_threshold,
            p.semantic_embedding_model))
    return {tenant: tuple(sorted(policies, key=_specificity)) for tenant, policies in by_tenant.items()}


def _specificity(policy: Policy) -> int:
    return -(2 * (policy.api_key_id is not None) + bool(policy.model))


def covering(policies: dict[int, tuple[Policy, ...]], tenant_id: int, key_id: int, model: str,
             endpoint: str) -> Policy | None:
    """The policy for this call, or None when none caches it (the most specific match decides)."""
    for policy in policies.get(tenant_id, ()):
        if policy.api_key_id not in (None, key_id) or policy.model not in ("", model):
            continue
        if policy.mode == CachePolicy.Mode.OFF or endpoint not in policy.endpoints:
            return None
        return policy
    return None
