import re
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from tenants.models import Tenant

from . import crypto, http_headers, key_env, netguard, price_catalogue
from .adapters import for_kind
from .targets import PRICE_FALLBACK


class Provider(models.Model):
    """An upstream account: an API base URL and the secret to call it with."""

    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        AZURE = "azure", "Azure OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        GEMINI = "gemini", "Google Gemini"
        COHERE = "cohere", "Cohere"
        OLLAMA = "ollama", "Ollama"
        HUGGINGFACE = "huggingface", "Hugging Face (TGI / Inference Endpoints)"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible (vLLM, Groq, Mistral, …)"

    # Per-kind settings an admin may put in `settings`, with their defaults.
    SETTINGS: dict[str, dict[str, str]] = {
        "azure": {"api_version": "2024-10-21"},
        # anthropic_thinking: "budget" (thinking.budget_tokens) or "adaptive" (Claude 4.6 and later;
        # Opus 4.7 and the Claude 5 models take nothing else).
        "anthropic": {"anthropic_version": "2023-06-01", "anthropic_thinking": "budget"},
        "cohere": {"embed_input_type": "search_document"},
        "gemini": {"api_version": "v1beta"},
    }

    name = models.CharField(max_length=100, help_text="Unique in its tenant (or among shared providers).")
    kind = models.CharField(max_length=32, choices=Kind.choices, default=Kind.OPENAI_COMPATIBLE)
    base_url = models.URLField(max_length=500, help_text="For example https://api.openai.com/v1")
    api_key_encrypted = models.TextField(blank=True, editable=False)
    api_key_env = models.CharField(
        max_length=100,
        blank=True,
        help_text="Read the secret from this environment variable instead of storing it. Staff only; "
                  "the name must start with PROVIDER_KEY_ENV_PREFIX (GATEWAY_PROVIDER_KEY_ by default) "
                  "or be in PROVIDER_KEY_ENV_ALLOW.",
    )
    extra_headers = models.JSONField(default=dict, blank=True, help_text="Sent with every upstream call.")
    settings = models.JSONField(
        default=dict,
        blank=True,
        help_text='Kind-specific settings, e.g. {"api_version": "2024-10-21"} for Azure OpenAI. See docs/providers.md.',
    )
    tenant = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="providers",
        help_text="Empty: shared by every tenant.",
    )
    is_active = models.BooleanField(default=True)
    allow_private_network = models.BooleanField(
        default=False,
        help_text="Let this provider's base URL point at loopback, private or link-local addresses "
                  "(a local Ollama or vLLM, say). Only staff can set it, for the URL's scheme, host and "
                  "port: anyone else moving the provider elsewhere clears it. See docs/security.md.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # What only staff may grant, with the value that withdraws it. Each was granted
    # for the base URL's origin (scheme, host, port): see moved_grants().
    STAFF_GRANTS = {"allow_private_network": False, "api_key_env": ""}
    # Setting values go into URLs and headers (Anthropic's version): a plain token.
    _SETTING_VALUE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")

    class Meta:
        ordering = ["name"]
        # Per tenant, not global: a name taken elsewhere must not refuse a tenant's
        # create, or the refusal tells it that the name exists in another tenant.
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="provider_unique_name_per_tenant"),
            models.UniqueConstraint(fields=["name"], condition=models.Q(tenant__isnull=True),
                                    name="provider_unique_shared_name"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.base_url:
            try:
                netguard.check_url(self.base_url, self.allow_private_network)
            except netguard.UnsafeAddress as exc:
                raise ValidationError({"base_url": str(exc)}) from None
        if self.api_key_env and (reason := key_env.refusal(self.api_key_env)):
            raise ValidationError({"api_key_env": reason})
        if reason := self.settings_problem():
            raise ValidationError({"settings": reason})
        if reason := http_headers.problem(self.extra_headers):
            raise ValidationError({"extra_headers": reason})

    def settings_problem(self) -> str:
        if not isinstance(self.settings, dict):
            return "Expected a JSON object."
        allowed = self.SETTINGS.get(self.kind, {})
        unknown = sorted(set(self.settings) - set(allowed))
        if unknown:
            known = ", ".join(allowed) or "none"
            return f"Unknown setting(s) for {self.kind}: {', '.join(unknown)} (known: {known})."
        return self._setting_values_problem()

    # Settings that take one of a few values.
    SETTING_CHOICES: dict[str, tuple[str, ...]] = {"anthropic_thinking": ("budget", "adaptive")}

    def _setting_values_problem(self) -> str:
        for name, value in self.effective_settings().items():
            if not isinstance(value, str) or not self._SETTING_VALUE.match(value):
                return f"{name} must be a short string of letters, digits, '.', '_' or '-'."
            if name in self.SETTING_CHOICES and value not in self.SETTING_CHOICES[name]:
                return f"{name} must be one of: {', '.join(self.SETTING_CHOICES[name])}."
        return ""

    def call_problem(self, api_key: str) -> str:
        """Why calls to this provider cannot be sent as it is configured ("" when they can):
        a row saved before its headers and settings were checked, or a key with a line break."""
        if not isinstance(self.settings, dict):
            return "Its settings are not a JSON object."
        return (http_headers.problem(self.extra_headers) or self._setting_values_problem()
                or http_headers.value_problem("The API key", api_key))

    def moved_grants(self, base_url: str) -> dict[str, object]:
        """The staff grants that moving this provider to `base_url` withdraws.

        Staff allow a provider onto private networks, or give it a key from the
        gateway's environment, for the host its URL names; when anyone else points
        it at another scheme, host or port, the grant does not follow (a path may change).
        """
        if netguard.origin(base_url) == netguard.origin(self.base_url or ""):
            return {}
        return {name: off for name, off in self.STAFF_GRANTS.items() if getattr(self, name) != off}

    def effective_settings(self) -> dict[str, str]:
        """The kind's defaults overlaid with what the admin set."""
        own = self.settings if isinstance(self.settings, dict) else {}  # else call_problem() says so
        return {**self.SETTINGS.get(self.kind, {}), **own}

    def set_api_key(self, secret: str) -> None:
        self.api_key_encrypted = crypto.encrypt(secret) if secret else ""

    def get_api_key(self) -> str:
        if self.api_key_env:
            return key_env.read(self.api_key_env)
        return crypto.decrypt(self.api_key_encrypted) if self.api_key_encrypted else ""

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted or self.api_key_env)


def _price(name: str, help_text: str) -> models.DecimalField:
    """An optional price (USD per 1M tokens) that falls back to another when empty (providers.targets)."""
    return models.DecimalField(name, max_digits=14, decimal_places=6, null=True, blank=True,
                               validators=[MinValueValidator(0)], help_text=help_text)


class Deployment(models.Model):
    """One model served by one provider, under a public name clients use."""

    class Mode(models.TextChoices):
        CHAT = "chat", "Chat completions"
        EMBEDDING = "embedding", "Embeddings"
        MODERATION = "moderation", "Moderation (OpenAI's /v1/moderations)"

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="deployments")
    public_model = models.CharField(max_length=200, db_index=True, help_text="The name clients ask for.")
    upstream_model = models.CharField(max_length=200, help_text="The name the provider knows.")
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.CHAT)
    context_window = models.PositiveIntegerField(default=128_000)
    max_output_tokens = models.PositiveIntegerField(default=16_384)
    input_price_per_mtok = models.DecimalField(
        "input price (USD per 1M tokens)",
        max_digits=14,
        decimal_places=6,
        default=Decimal(0),
        validators=[MinValueValidator(0)],
    )
    output_price_per_mtok = models.DecimalField(
        "output price (USD per 1M tokens)",
        max_digits=14,
        decimal_places=6,
        default=Decimal(0),
        validators=[MinValueValidator(0)],
    )
    cached_input_price_per_mtok = _price(
        "cached input price (USD per 1M tokens)", "Prompt tokens read from the provider's cache. Empty: the input price.")
    cache_write_price_per_mtok = _price(
        "cache write price, 5 minutes (USD per 1M tokens)",
        "Prompt tokens written to the cache (Anthropic's 5-minute writes). Empty: the input price.")
    cache_write_1h_price_per_mtok = _price(
        "cache write price, 1 hour (USD per 1M tokens)",
        "Prompt tokens written to the cache for 1 hour (Anthropic). Empty: the 5-minute write price.")
    long_context_threshold = models.PositiveIntegerField(
        null=True, blank=True, help_text="Prompts of more tokens than this (cache reads and writes included) are "
                                         "billed at the long-context prices below. Empty: one tier.")
    long_input_price_per_mtok = _price(
        "long-context input price (USD per 1M tokens)", "Empty: the input price.")
    long_output_price_per_mtok = _price(
        "long-context output price (USD per 1M tokens)", "Empty: the output price.")
    long_cached_input_price_per_mtok = _price(
        "long-context cached input price (USD per 1M tokens)",
        "Empty: the cached input price, or without one the long-context input price.")
    long_cache_write_price_per_mtok = _price(
        "long-context cache write price, 5 minutes (USD per 1M tokens)",
        "Empty: the 5-minute write price, or without one the long-context input price.")
    long_cache_write_1h_price_per_mtok = _price(
        "long-context cache write price, 1 hour (USD per 1M tokens)",
        "Empty: the 1-hour write price, or without one the long-context 5-minute write price.")
    priority = models.IntegerField(default=0, help_text="Lower is tried first.")
    supports_vision = models.BooleanField(default=True, help_text="Accepts image parts.")
    supports_tools = models.BooleanField(default=True, help_text="Accepts tools.")
    native_responses = models.BooleanField(
        null=True, blank=True, verbose_name="native Responses API",
        help_text="Send /v1/responses calls as Responses API calls. Empty: yes for OpenAI and Azure, no for "
                  "OpenAI-compatible servers (few have it); other kinds always go through the chat form.",
    )
    connect_timeout = models.FloatField(null=True, blank=True, help_text="Seconds; empty: the gateway default.")
    first_byte_timeout = models.FloatField(null=True, blank=True, help_text="Seconds; empty: the gateway default.")
    total_timeout = models.FloatField(null=True, blank=True, help_text="Seconds; empty: the gateway default.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["public_model", "priority", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "public_model", "upstream_model"], name="deployment_unique_model"
            )
        ]

    def __str__(self) -> str:
        return f"{self.public_model} → {self.provider.name}/{self.upstream_model}"

    # Kinds that may speak the Responses API natively, and whether they do when the deployment does not say.
    NATIVE_RESPONSES = {"openai": True, "azure": True, "openai_compatible": False}

    def speaks_responses(self) -> bool:
        """Whether /v1/responses calls reach this deployment as Responses API calls (docs/responses.md)."""
        by_kind = self.NATIVE_RESPONSES.get(self.provider.kind)
        if by_kind is None:
            return False
        return by_kind if self.native_responses is None else self.native_responses

    def save(self, *args, **kwargs) -> None:
        if self._state.adding and not self.has_prices():
            price_catalogue.fill(self)
        super().save(*args, **kwargs)

    def has_prices(self) -> bool:
        """Whether any price or the long-context threshold is set (the catalogue then fills nothing)."""
        return bool(self.input_price_per_mtok or self.output_price_per_mtok or self.long_context_threshold
                    or any(getattr(self, name) is not None for name in PRICE_FALLBACK))

    def clean(self) -> None:
        provider = self.provider if self.provider_id else None
        if provider and self.native_responses and provider.kind not in self.NATIVE_RESPONSES:
            raise ValidationError({"native_responses": f"{provider.get_kind_display()} providers have no "
                                                       "Responses API; their calls go through the chat form."})
        if provider and self.mode == self.Mode.EMBEDDING and not for_kind(provider.kind).EMBEDDINGS:
            raise ValidationError({"mode": f"{provider.get_kind_display()} providers offer no embeddings."})
        if provider and self.mode == self.Mode.MODERATION and not hasattr(for_kind(provider.kind),
                                                                          "moderations_request"):
            raise ValidationError({"mode": f"{provider.get_kind_display()} providers offer no moderation API."})


class HealthCheck(models.Model):
    """One probe of a provider (its model list) or of one of its deployments.

    Written by the `providers.tasks.check_health` job; failures open the
    deployment's circuit breaker fleet-wide, successes close a half-open one.
    """

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="health_checks")
    deployment = models.ForeignKey(
        Deployment, null=True, blank=True, on_delete=models.CASCADE, related_name="health_checks",
        help_text="Empty: the provider itself.",
    )
    checked_at = models.DateTimeField(db_index=True)
    ok = models.BooleanField()
    status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="HTTP status, if it answered.")
    latency_ms = models.PositiveIntegerField(default=0)
    models_found = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-checked_at"]
        indexes = [models.Index(fields=["provider", "deployment", "-checked_at"])]

    def __str__(self) -> str:
        return f"{self.provider} {'ok' if self.ok else 'failed'} at {self.checked_at:%Y-%m-%d %H:%M:%S}"
