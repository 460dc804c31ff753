"""A deployment as the hot path sees it: everything needed to call it, with no ORM access.

Built from a provider and one of its deployments (`target_for`) by the routing
table, and by the admin's "test connection" and the health checks, which call
a provider the way the gateway would.
"""

from dataclasses import dataclass, field
from decimal import Decimal

from .adapters.base import Usage


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
    # Prices of the other token classes (USD per 1M; None: as `PRICE_FALLBACK` says) and the
    # long-context tier: a prompt of more than long_context_threshold tokens (0: no tier) is billed
    # at the long_* prices, each None falling back to its normal-tier price.
    cached_input_price_per_mtok: Decimal | None = None
    cache_write_price_per_mtok: Decimal | None = None
    cache_write_1h_price_per_mtok: Decimal | None = None
    long_context_threshold: int = 0
    long_input_price_per_mtok: Decimal | None = None
    long_output_price_per_mtok: Decimal | None = None
    long_cached_input_price_per_mtok: Decimal | None = None
    long_cache_write_price_per_mtok: Decimal | None = None
    long_cache_write_1h_price_per_mtok: Decimal | None = None
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
        """Exact cost in USD of uncached prompt and output tokens (an estimate's, before usage is known)."""
        return self.usage_cost(Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))

    def usage_cost(self, usage: Usage) -> Decimal:
        """Exact cost in USD of `usage`, every token class at its price (prices are per million tokens)."""
        long = 0 < self.long_context_threshold < usage.prompt_tokens
        uncached, cached, write_5m, write_1h, output = self.rates(long)
        return (usage.input_tokens * uncached + usage.cached_tokens * cached + usage.cache_write_5m_tokens * write_5m
                + usage.cache_write_1h_tokens * write_1h + usage.completion_tokens * output) / 1_000_000

    def rates(self, long: bool = False) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
        """The prices of (uncached input, cache read, 5-minute cache write, 1-hour cache write, output)
        in the normal or the long-context tier, every empty one filled as PRICE_FALLBACK says."""
        uncached, output = self.input_price_per_mtok, self.output_price_per_mtok
        cached, write_5m, write_1h = (self.cached_input_price_per_mtok, self.cache_write_price_per_mtok,
                                      self.cache_write_1h_price_per_mtok)
        if long:
            uncached = _first(self.long_input_price_per_mtok, uncached)
            output = _first(self.long_output_price_per_mtok, output)
            cached = _first(self.long_cached_input_price_per_mtok, cached)
            write_5m = _first(self.long_cache_write_price_per_mtok, write_5m)
            write_1h = _first(self.long_cache_write_1h_price_per_mtok, write_1h)
        write_5m = _first(write_5m, uncached)
        return uncached, _first(cached, uncached), write_5m, _first(write_1h, write_5m), output

    def visible_to(self, tenant_id: int) -> bool:
        return self.tenant_id is None or self.tenant_id == tenant_id


def _first(price: Decimal | None, fallback: Decimal | None) -> Decimal | None:
    return fallback if price is None else price


# Which price an empty one falls back to (the rule of Target.rates, shown in the admin and the README).
# A long-context price falls back to its normal-tier price when that is set, else to the long tier's
# own fallback: with no cache-read price at all, cache reads above the threshold cost long_input.
PRICE_FALLBACK = {
    "cached_input_price_per_mtok": "input_price_per_mtok",
    "cache_write_price_per_mtok": "input_price_per_mtok",
    "cache_write_1h_price_per_mtok": "cache_write_price_per_mtok",
    "long_input_price_per_mtok": "input_price_per_mtok",
    "long_output_price_per_mtok": "output_price_per_mtok",
    "long_cached_input_price_per_mtok": "cached_input_price_per_mtok, else long_input_price_per_mtok",
    "long_cache_write_price_per_mtok": "cache_write_price_per_mtok, else long_input_price_per_mtok",
    "long_cache_write_1h_price_per_mtok": "cache_write_1h_price_per_mtok, else long_cache_write_price_per_mtok",
}
# Every price a deployment has, and the long-context threshold: what a Target copies from it.
PRICE_FIELDS = ("input_price_per_mtok", "output_price_per_mtok", *PRICE_FALLBACK)


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
        **({name: getattr(d, name) for name in PRICE_FALLBACK} if d else {}),
        long_context_threshold=(d.long_context_threshold or 0) if d else 0,
        created=int(d.created_at.timestamp()) if d else 0,
        allow_private_network=provider.allow_private_network,
        misconfigured=provider.call_problem(api_key),
        **({"priority": d.priority, "supports_vision": d.supports_vision, "supports_tools": d.supports_tools,
            "native_responses": d.speaks_responses(),
            "connect_timeout": d.connect_timeout, "first_byte_timeout": d.first_byte_timeout,
            "total_timeout": d.total_timeout} if d else {}),
    )
