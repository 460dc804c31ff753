import argparse
import os
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from providers.adapters import for_kind
from providers.models import Deployment, Provider
from providers.targets import PRICE_FIELDS
from tenants.models import Tenant


def _price(value: str) -> Decimal:
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise CommandError(f"not a price: {value!r}") from None
    if price < 0:
        raise CommandError("prices cannot be negative")
    return price


def _price_flag(field: str) -> str:
    """cache_write_1h_price_per_mtok -> cache_write_1h_price (the option's dest; --cache-write-1h-price)."""
    return field.removesuffix("_per_mtok")


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name:
            raise CommandError(f"bad {option} {value!r}: expected NAME=VALUE")
        pairs[name] = setting
    return pairs


class Command(BaseCommand):
    help = (
        "Create or update a provider and its deployments (idempotent). "
        "--model PUBLIC[=UPSTREAM] may be repeated."
    )

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--kind", required=True, choices=[k for k, _ in Provider.Kind.choices])
        parser.add_argument("--base-url", required=True)
        parser.add_argument("--api-key-env",
                            help="Environment variable holding the provider's API key; read at run time, it must "
                                 "start with PROVIDER_KEY_ENV_PREFIX or be in PROVIDER_KEY_ENV_ALLOW")
        parser.add_argument("--store-key", action="store_true",
                            help="Store the key read from --api-key-env (any variable) encrypted, "
                                 "instead of reading it at run time")
        parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                            help="A kind-specific setting, e.g. api_version=2024-10-21 for azure (repeatable)")
        parser.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                            help="An extra header sent with every upstream call (repeatable)")
        parser.add_argument("--model", action="append", default=[], metavar="PUBLIC[=UPSTREAM]")
        parser.add_argument("--embedding-model", action="append", default=[], metavar="PUBLIC[=UPSTREAM]")
        parser.add_argument("--tenant", help="Tenant slug (default: shared by all tenants)")
        for field in PRICE_FIELDS:
            label = str(Deployment._meta.get_field(field).verbose_name).removesuffix(" (USD per 1M tokens)")
            parser.add_argument("--" + _price_flag(field).replace("_", "-"), metavar="USD",
                                help=f"USD per 1M tokens: {label}. Not given: left as it is; a new deployment "
                                     "given no price at all takes the price catalogue's (providers/price_catalogue.json)")
        parser.add_argument("--long-context-threshold", type=int, metavar="TOKENS",
                            help="Prompts of more tokens than this are billed at the --long-* prices")
        parser.add_argument("--context-window", type=int, default=128_000)
        parser.add_argument("--max-output-tokens", type=int, default=16_384)
        parser.add_argument("--priority", type=int, default=0)
        parser.add_argument("--native-responses", action=argparse.BooleanOptionalAction, default=None,
                            help="Send /v1/responses calls to its chat models as Responses API calls "
                                 "(default: yes for openai and azure, no for openai_compatible)")
        parser.add_argument("--allow-private-network", action="store_true",
                            help="Let the base URL point at loopback or private addresses (a local Ollama, say)")

    @transaction.atomic
    def handle(self, name, **o):
        tenant = None
        if o["tenant"]:
            tenant = Tenant.objects.filter(slug=o["tenant"]).first()
            if tenant is None:
                raise CommandError(f"no tenant with slug {o['tenant']!r}")
        # Names are unique per tenant (shared ones among shared providers).
        provider, created = Provider.objects.get_or_create(
            name=name, tenant=tenant, defaults={"kind": o["kind"], "base_url": o["base_url"]}
        )
        provider.kind, provider.base_url = o["kind"], o["base_url"]
        provider.allow_private_network = o["allow_private_network"]
        if o["api_key_env"]:
            if o["store_key"]:
                secret = os.environ.get(o["api_key_env"])
                if not secret:
                    raise CommandError(f"${o['api_key_env']} is empty")
                provider.set_api_key(secret)
                provider.api_key_env = ""
            else:
                provider.api_key_env = o["api_key_env"]
        if o["setting"]:
            provider.settings = {**provider.settings, **_pairs(o["setting"], "--setting")}
        if o["header"]:
            provider.extra_headers = {**provider.extra_headers, **_pairs(o["header"], "--header")}
        try:
            provider.full_clean()
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        provider.save()
        if o["long_context_threshold"] is not None and o["long_context_threshold"] < 0:
            raise CommandError("--long-context-threshold cannot be negative")
        given = {field: _price(o[_price_flag(field)]) for field in PRICE_FIELDS if o[_price_flag(field)] is not None}
        if o["long_context_threshold"] is not None:
            given["long_context_threshold"] = o["long_context_threshold"] or None
        prices = {
            **given,
            "context_window": o["context_window"],
            "max_output_tokens": o["max_output_tokens"],
            "priority": o["priority"],
        }
        if o["native_responses"] and provider.kind not in Deployment.NATIVE_RESPONSES:
            raise CommandError(f"{provider.get_kind_display()} providers have no Responses API")
        specs = [(m, "chat") for m in o["model"]] + [(m, "embedding") for m in o["embedding_model"]]
        for spec, mode in specs:
            public, _, upstream_model = spec.partition("=")
            if not public:
                raise CommandError(f"bad --model {spec!r}: expected PUBLIC[=UPSTREAM]")
            if mode == "embedding" and not for_kind(provider.kind).EMBEDDINGS:
                raise CommandError(f"{provider.get_kind_display()} providers offer no embeddings")
            Deployment.objects.update_or_create(
                provider=provider, public_model=public, upstream_model=upstream_model or public,
                defaults={"mode": mode, "is_active": True, **prices,
                          **({"native_responses": o["native_responses"]} if mode == "chat" else {})},
            )
        self.stdout.write(f"{'created' if created else 'updated'}: provider {provider.name} "
                          f"with {provider.deployments.count()} deployment(s)")
