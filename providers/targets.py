"""A deployment as the hot path sees it: everything needed to call it, with no ORM access.

Built from a provider and one of its deployments (`target_for`) by the routing
table, and by the admin's "test connection" and the health checks, which call
a provider the way the gateway would.
"""

from dataclasses import dataclass, field
from decimal import Decimal


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
    priority: int = 0
    weight: int = 1
    supports_vision: bool = True
    supports_tools: bool = True
    native_responses: bool = False  # /v1/responses calls go to it as Responses API calls
    connect_timeout: float | None = None
    first_byte_timeout: float | None = None
    total_timeout: float | None = None
    allow_private_network: bool = False
    # Why calls to it cannot be sent (a bad header saved before headers were checked): "" if they can.
    misconfigured: str = ""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """Exact cost in USD (prices are per million tokens)."""
        return (
            prompt_tokens * self.input_price_per_mtok + completion_tokens * self.output_price_per_mtok
        ) / 1_000_000

    def visible_to(self, tenant_id: int) -> bool:
        return self.tenant_id is None or self.tenant_id == tenant_id


def target_for(provider, deployment=None) -> Target:
    """A Target for one deployment of `provider` (or for the provider alone, to probe it).

    Raises SecretUnreadable when the provider secret cannot be decrypted.
    """
    d = deployment
    api_key = provider.get_api_key()
    return Target(
        deployment_id=d.id if d else 0,
        provider_id=provider.id,
        provider_name=provider.name,
        tenant_id=provider.tenant_id,
        kind=provider.kind,
        base_url=provider.base_url.rstrip("/"),
        api_key=api_key,
        # A row saved unchecked may hold any JSON: call_problem() then refuses its calls.
        extra_headers=dict(provider.extra_headers) if isinstance(provider.extra_headers, dict) else {},
        settings=provider.effective_settings(),
        public_model=d.public_model if d else "",
        upstream_model=d.upstream_model if d else "",
        mode=d.mode if d else "chat",
        context_window=d.context_window if d else 0,
        max_output_tokens=d.max_output_tokens if d else 0,
        input_price_per_mtok=d.input_price_per_mtok if d else Decimal(0),
        output_price_per_mtok=d.output_price_per_mtok if d else Decimal(0),
        created=int(d.created_at.timestamp()) if d else 0,
        allow_private_network=provider.allow_private_network,
        misconfigured=provider.call_problem(api_key),
        **({"priority": d.priority, "supports_vision": d.supports_vision, "supports_tools": d.supports_tools,
            "native_responses": d.speaks_responses(),
            "connect_timeout": d.connect_timeout, "first_byte_timeout": d.first_byte_timeout,
            "total_timeout": d.total_timeout} if d else {}),
    )
