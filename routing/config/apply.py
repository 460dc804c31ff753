"""Applying a configuration file: every object it names made as the file says, in one transaction.

Each object is found by its natural key (a tenant by slug, a provider by tenant and name, a
deployment by provider and model names, a route by tenant and name, a limit by tenant and its place
in the list, a cache policy by tenant and model, a guardrail policy by tenant and name, a member by
e-mail), changed field by field where it differs, checked with the model's own `full_clean` (what
the admin checks) and saved row by row: every save is audited and reaches the gateway processes'
caches through the same signals as an admin edit. A field the file leaves out takes the model's
default, so applying the same file twice changes nothing. With `prune`, what the file no longer
names is deleted too; key-scoped limits, cache and guardrail policies are never the file's (keys
are not in it) and are left alone.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, models, transaction

from providers import http_headers
from providers.models import Deployment, Provider
from routing.models import CachePolicy, GuardrailCheck, GuardrailPolicy, Route, RouteRule, RouteTarget
from tenants import audit, members
from tenants.models import Membership, Tenant
from usage.models import Limit

from . import schema
from .schema import ConfigError, Problem

PRICES = {"input": "input_price_per_mtok", "output": "output_price_per_mtok",
          "cached_input": "cached_input_price_per_mtok", "cache_write": "cache_write_price_per_mtok",
          "cache_write_1h": "cache_write_1h_price_per_mtok", "long_context_threshold": "long_context_threshold",
          "long_input": "long_input_price_per_mtok", "long_output": "long_output_price_per_mtok",
          "long_cached_input": "long_cached_input_price_per_mtok",
          "long_cache_write": "long_cache_write_price_per_mtok",
          "long_cache_write_1h": "long_cache_write_1h_price_per_mtok"}
TENANT_FIELDS = ("name", "is_active", "allowed_models", "default_model", "time_zone", "retention_days",
                 "log_prompts", "prompt_retention_days")
PROVIDER_FIELDS = ("kind", "base_url", "allow_private_network", "extra_headers", "settings", "is_active")
DEPLOYMENT_FIELDS = ("mode", "context_window", "max_output_tokens", "priority", "supports_vision", "supports_tools",
                     "native_responses", "connect_timeout", "first_byte_timeout", "total_timeout", "is_active")
ROUTE_FIELDS = ("strategy", "hedge_after_ms", "max_attempts", "deadline_seconds", "is_active")
TARGET_FIELDS = ("weight", "priority", "is_active")
RULE_FIELDS = ("kind", "value", "header")
LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "max_concurrent", "token_quota", "budget_usd",
                "alert_thresholds", "offline_credit_usd")
CACHE_FIELDS = ("mode", "ttl_seconds", "expiry", "endpoints", "cache_tool_calls", "max_answer_bytes",
                "hits_count_against_limits", "semantic_threshold", "semantic_embedding_model")
POLICY_FIELDS = ("route", "is_active", "restore", "hold_back_chars")
CHECK_FIELDS = ("kind", "stage", "action", "failure_mode", "pii_types", "phone_region", "terms", "patterns", "model",
                "categories", "url", "allow_private_network", "timeout_ms")
HIDDEN = "[secret]"  # how a diff shows a secret
ROWS = ("targets", "rules", "checks", "secrets")  # replaced as a whole, shown as lists


@dataclass
class Change:
    verb: str  # "create", "update" or "delete"
    what: str
    fields: dict = field(default_factory=dict)  # name: (old, new), secrets shown as HIDDEN

    def __str__(self) -> str:
        mark = {"create": "+", "update": "~", "delete": "-"}[self.verb]
        if self.verb != "update" or not self.fields:
            return f"{mark} {self.what}"
        return f"{mark} {self.what}: " + ", ".join(
            f"{name} {old if name in ROWS else _shown(old)} -> {new if name in ROWS else _shown(new)}"
            for name, (old, new) in self.fields.items())


def _shown(value) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, models.Model):
        return str(value)
    return repr(value) if isinstance(value, str) else str(value)


def _same(old, new) -> bool:
    if isinstance(old, Decimal) or isinstance(new, Decimal):
        return (old is None) == (new is None) and (old is None or Decimal(old) == Decimal(new))
    return old == new


def given(spec, name: str, model, default: Callable | None = None):
    """The file's value for `name`, else the model field's default (or `default()`)."""
    if name in spec.model_fields_set:
        return getattr(spec, name)
    return default() if default is not None else model._meta.get_field(name).get_default()


def read_secret(ref: schema.SecretRef, base: Path) -> str:
    path = Path(ref.file).expanduser()
    text = (path if path.is_absolute() else base / path).read_text()
    return text.strip()


class Applier:
    """One application of a file. Call `run()` inside a transaction; it raises ConfigError when any
    object is refused, leaving the caller to roll back."""

    def __init__(self, config: schema.Config, lines: schema.Lines, source: str, prune: bool) -> None:
        self.config, self.lines, self.source, self.prune = config, lines, source, prune
        self.base = Path(source).resolve().parent
        self.changes: list[Change] = []
        self.problems: list[Problem] = []
        self.kept: list[str] = []  # not named by the file, left alone (no --prune)

    # --- bookkeeping ---

    def problem(self, loc: tuple, message: str) -> None:
        self.problems.append(Problem(schema.dotted(loc), self.lines.line(loc), message))

    def sync(self, obj: models.Model, desired: dict, what: str, loc: tuple, keys: dict | None = None,
             secret_change: tuple | None = None) -> bool:
        """Make `obj` as `desired` says; validate and save it if it is new or changed. False if refused."""
        created = obj.pk is None
        changed = {}
        for name, value in desired.items():
            old = getattr(obj, name)
            if created or not _same(old, value):
                changed[name] = (old, value)
                setattr(obj, name, value)
        if secret_change is not None:
            changed["api_key" if isinstance(obj, Provider) else "secret"] = secret_change
        if not created and not changed:
            return True
        try:
            obj.full_clean()
            with transaction.atomic():  # a savepoint: a row another writer took meanwhile is one more problem
                obj.save()
        except ValidationError as error:
            self._refused(error, loc, keys or {})
            return False
        except IntegrityError as error:
            self.problem(loc, f"the database refused it: {error}".splitlines()[0])
            return False
        self.changes.append(Change("create" if created else "update", what, {} if created else changed))
        return True

    def _refused(self, error: ValidationError, loc: tuple, keys: dict) -> None:
        if not hasattr(error, "error_dict"):
            self.problem(loc, " ".join(error.messages))
            return
        for name, errors in error.message_dict.items():
            where = loc if name == NON_FIELD_ERRORS else (*loc, *keys.get(name, (name,)))
            self.problem(where, " ".join(errors))

    def delete(self, obj: models.Model, what: str) -> None:
        if self.prune:
            obj.delete()
            self.changes.append(Change("delete", what))
        else:
            self.kept.append(what)

    # --- the whole file ---

    def run(self) -> list[Change]:
        config = self.config
        tenants = {}
        for n, spec in enumerate(config.tenants):
            if (tenant := self.tenant(spec, ("tenants", n))) is not None:
                tenants[spec.slug] = tenant
        shared = self.providers(None, config.providers, ("providers",))
        owned = {spec.slug: self.providers(tenants[spec.slug], spec.providers, ("tenants", n, "providers"))
                 for n, spec in enumerate(config.tenants) if spec.slug in tenants}
        self.routes(None, config.routes, ("routes",), shared, {})
        for n, spec in enumerate(config.tenants):
            if (tenant := tenants.get(spec.slug)) is None:
                continue
            loc = ("tenants", n)
            self.routes(tenant, spec.routes, (*loc, "routes"), owned[spec.slug], shared)
            self.members(tenant, spec.members, (*loc, "members"))
            self.limits(tenant, spec.limits, (*loc, "limits"))
            self.cache_policies(tenant, spec.cache, (*loc, "cache"))
            self.guardrails(tenant, spec.guardrails, (*loc, "guardrails"))
        for tenant in Tenant.objects.exclude(slug__in=[spec.slug for spec in config.tenants]):
            self.delete(tenant, f"tenant {tenant.slug} (with its keys, members, providers, routes and policies)")
        if self.problems:
            raise ConfigError(self.source, self.problems)
        return self.changes

    # --- tenants and members ---

    def tenant(self, spec: schema.Tenant, loc: tuple) -> Tenant | None:
        tenant = Tenant.objects.filter(slug=spec.slug).first() or Tenant(slug=spec.slug)
        desired = {name: given(spec, name, Tenant, (lambda: spec.slug) if name == "name" else None)
                   for name in TENANT_FIELDS}
        return tenant if self.sync(tenant, desired, f"tenant {spec.slug}", loc) else None

    def members(self, tenant: Tenant, specs: list[schema.Member], loc: tuple) -> None:
        named = set()
        for n, spec in enumerate(specs):
            if (user := self.user(spec, (*loc, n))) is None:
                continue
            membership = Membership.objects.filter(tenant=tenant, user=user).first()
            if membership is None:
                membership = members.member_add(tenant, user.get_username(), spec.role)
            named.add(membership.user_id)
            self.sync(membership, {"role": spec.role}, f"member {spec.email or spec.username} of {tenant.slug}",
                      (*loc, n))
        for membership in Membership.objects.filter(tenant=tenant).exclude(user_id__in=named).select_related("user"):
            self.delete(membership, f"member {membership.user.email or membership.user} of {tenant.slug}")

    def user(self, spec: schema.Member, loc: tuple):
        """The user with this e-mail address (or username), or a new one named by it who signs in once
        an admin sets a password (or through single sign-on): the file holds no passwords."""
        users = get_user_model()._default_manager
        if spec.username:
            user = users.filter(username=spec.username).first()
            if user is None:
                user = users.create_user(spec.username, "", None, is_staff=True)
                self.changes.append(Change("create", f"user {spec.username}"))
            return user
        try:
            validate_email(spec.email)
        except ValidationError:
            self.problem((*loc, "email"), f"{spec.email!r} is not an e-mail address")
            return None
        user = users.filter(email__iexact=spec.email).order_by("id").first() or \
            users.filter(username=spec.email).first()
        if user is None:
            user = users.create_user(spec.email[:150], spec.email, None, is_staff=True)
            self.changes.append(Change("create", f"user {spec.email}"))
        return user

    # --- providers and deployments ---

    def providers(self, tenant: Tenant | None, specs: list[schema.Provider], loc: tuple) -> dict[str, Provider]:
        found = {}
        for n, spec in enumerate(specs):
            if (provider := self.provider(tenant, spec, (*loc, n))) is not None:
                found[spec.name] = provider
                self.deployments(provider, spec.deployments, (*loc, n, "deployments"))
        for provider in Provider.objects.filter(tenant=tenant).exclude(name__in=[spec.name for spec in specs]):
            self.delete(provider, f"provider {_owned(provider.name, tenant)} (with its deployments)")
        return found

    def provider(self, tenant: Tenant | None, spec: schema.Provider, loc: tuple) -> Provider | None:
        provider = Provider.objects.filter(tenant=tenant, name=spec.name).first() or Provider(tenant=tenant,
                                                                                              name=spec.name)
        desired = {name: given(spec, name, Provider) for name in PROVIDER_FIELDS}
        desired["extra_headers"] = desired["extra_headers"] or {}
        desired["settings"] = desired["settings"] or {}
        secret_change = self.provider_key(provider, spec.api_key, desired, (*loc, "api_key"))
        if secret_change is False:
            return None
        keys = {"api_key_env": ("api_key", "env")}
        ok = self.sync(provider, desired, f"provider {_owned(spec.name, tenant)}", loc, keys, secret_change or None)
        return provider if ok else None

    def provider_key(self, provider: Provider, ref: schema.SecretRef | None, desired: dict, loc: tuple):
        """Put the key reference in `desired` (api_key_env) and a file's key on the provider; the
        change to show (old, new), None for none, or False when the key cannot be had."""
        desired["api_key_env"] = ref.env if ref is not None and ref.env else ""
        stored = provider.api_key_encrypted
        if ref is not None and ref.stored:
            if not stored:
                self.problem(loc, "no key is stored for this provider in this database: give {env: ...} or {file: ...}")
                return False
            return None
        new_key = ""
        if ref is not None and ref.file:
            try:
                new_key = read_secret(ref, self.base)
            except OSError as exc:
                self.problem((*loc, "file"), f"cannot read the key: {exc.strerror or exc}")
                return False
            if reason := http_headers.value_problem("The API key", new_key):  # what the API refuses too
                self.problem((*loc, "file"), reason)
                return False
        if new_key == (provider.get_api_key() if stored else ""):
            return None
        provider.set_api_key(new_key)
        return (HIDDEN if stored else "", HIDDEN if new_key else "")

    def deployments(self, provider: Provider, specs: list[schema.Deployment], loc: tuple) -> None:
        named = []
        for n, spec in enumerate(specs):
            upstream = spec.upstream_model or spec.public_model
            named.append((spec.public_model, upstream))
            deployment = (Deployment.objects.filter(provider=provider, public_model=spec.public_model,
                                                    upstream_model=upstream).first()
                          or Deployment(provider=provider, public_model=spec.public_model, upstream_model=upstream))
            desired = {name: given(spec, name, Deployment) for name in DEPLOYMENT_FIELDS}
            if spec.prices is not None:
                desired |= {column: given(spec.prices, name, Deployment, lambda column=column: Deployment._meta
                                          .get_field(column).get_default()) for name, column in PRICES.items()}
            keys = {column: ("prices", name) for name, column in PRICES.items()}
            self.sync(deployment, desired, f"deployment {spec.public_model} on {_owned(provider.name, provider.tenant)}",
                      (*loc, n), keys)
        for deployment in provider.deployments.all():
            if (deployment.public_model, deployment.upstream_model) not in named:
                self.delete(deployment, f"deployment {deployment.public_model} ({deployment.upstream_model}) on "
                                        f"{_owned(provider.name, provider.tenant)}")

    # --- routes ---

    def routes(self, tenant, specs: list[schema.Route], loc: tuple, own: dict, shared: dict) -> None:
        found = {}
        for n, spec in enumerate(specs):
            route = Route.objects.filter(tenant=tenant, name=spec.name).first() or Route(tenant=tenant, name=spec.name)
            desired = {name: given(spec, name, Route) for name in ROUTE_FIELDS}
            if self.sync(route, desired, f"route {_owned(spec.name, tenant)}", (*loc, n)):
                found[spec.name] = route
        # Second pass: routes may name each other (a context fallback, a rule's sub-route).
        for n, spec in enumerate(specs):
            if (route := found.get(spec.name)) is None:
                continue
            fallback = self.route_named(tenant, spec.context_fallback, (*loc, n, "context_fallback"))
            if fallback is not False:
                self.sync(route, {"context_fallback": fallback}, f"route {_owned(spec.name, tenant)}", (*loc, n))
            self.targets(route, spec, (*loc, n), own, shared)
            self.rules(route, spec, (*loc, n), own, shared)
        for route in Route.objects.filter(tenant=tenant).exclude(name__in=[spec.name for spec in specs]):
            self.delete(route, f"route {_owned(route.name, tenant)}")

    def route_named(self, tenant, name: str | None, loc: tuple):
        """The route `name` (the tenant's, else a shared one), None for no name, False if unknown."""
        if not name:
            return None
        route = (Route.objects.filter(tenant=tenant, name=name).first() if tenant is not None else None) \
            or Route.objects.filter(tenant=None, name=name).first()
        if route is None:
            self.problem(loc, f"no route {name!r}")
            return False
        return route

    def deployment_named(self, ref: str, upstream: str | None, loc: tuple, own: dict, shared: dict):
        provider_name, slash, model = ref.partition("/")
        provider = own.get(provider_name) or shared.get(provider_name)
        if not slash or provider is None:
            self.problem(loc, f"{ref!r} names no deployment: write provider/public_model, a provider of this file")
            return None
        found = list(provider.deployments.filter(public_model=model, **({"upstream_model": upstream} if upstream else {})))
        if len(found) != 1:
            self.problem(loc, f"{provider_name} has {'no' if not found else 'several'} deployment(s) of {model!r}"
                              + ("" if not found else ": name its upstream_model"))
            return None
        return found[0]

    def targets(self, route: Route, spec: schema.Route, loc: tuple, own: dict, shared: dict) -> None:
        desired = []
        for n, target in enumerate(spec.targets):
            deployment = self.deployment_named(target.deployment, target.upstream_model,
                                               (*loc, "targets", n, "deployment"), own, shared)
            if deployment is not None:
                desired.append({"deployment": deployment,
                                **{name: given(target, name, RouteTarget) for name in TARGET_FIELDS}})
        current = [{"deployment": t.deployment, **{name: getattr(t, name) for name in TARGET_FIELDS}}
                   for t in route.targets.order_by("id")]
        self.replace(route, f"route {_owned(route.name, route.tenant)}", "targets", RouteTarget, current, desired, (*loc, "targets"))

    def rules(self, route: Route, spec: schema.Route, loc: tuple, own: dict, shared: dict) -> None:
        desired = []
        for n, rule in enumerate(spec.rules):
            row = {"order": n, **{name: given(rule, name, RouteRule) for name in RULE_FIELDS},
                   "deployment": None, "sub_route": None}
            if rule.deployment:
                row["deployment"] = self.deployment_named(rule.deployment, rule.upstream_model,
                                                          (*loc, "rules", n, "deployment"), own, shared)
            if rule.sub_route:
                row["sub_route"] = self.route_named(route.tenant, rule.sub_route, (*loc, "rules", n, "sub_route")) or None
            desired.append(row)
        current = [{"order": r.order, **{name: getattr(r, name) for name in RULE_FIELDS},
                    "deployment": r.deployment, "sub_route": r.sub_route} for r in route.rules.order_by("order", "id")]
        self.replace(route, f"route {_owned(route.name, route.tenant)}", "rules", RouteRule, current, desired, (*loc, "rules"))

    def replace(self, owner, what: str, relation: str, model, current: list[dict], desired: list[dict], loc: tuple,
                secrets: list[str] | None = None, same_secrets: bool = True) -> None:
        """Replace the rows of `owner.<relation>` when they differ from `desired` (as the API does)."""
        if current == desired and same_secrets:
            return
        getattr(owner, relation).all().delete()
        link = _parent_field(model, owner)
        for n, values in enumerate(desired):
            row = model(**{link: owner}, **values)
            if secrets is not None and secrets[n]:
                row.set_secret(secrets[n])
            try:
                row.full_clean()
            except ValidationError as error:
                self._refused(error, (*loc, n), {})
                continue
            row.save()
        fields = {relation: (_rows_text(model, current), _rows_text(model, desired))}
        if not same_secrets:
            fields["secrets"] = (HIDDEN, f"{HIDDEN} (changed)")
        self.changes.append(Change("update", what, fields))

    # --- limits and policies ---

    def limits(self, tenant: Tenant, specs: list[schema.Limit], loc: tuple) -> None:
        """A tenant's limits have no name: the file's n-th is the tenant's n-th (oldest first)."""
        rows = list(Limit.objects.filter(tenant=tenant, api_key=None).order_by("id"))
        for n, spec in enumerate(specs):
            limit = rows[n] if n < len(rows) else Limit(tenant=tenant)
            desired = {name: given(spec, name, Limit) for name in ("model", "period", *LIMIT_FIELDS)}
            desired["alert_thresholds"] = desired["alert_thresholds"] or []
            self.sync(limit, desired, f"limit #{n + 1} on {tenant.slug}{_for(spec.model)}", (*loc, n))
        for limit in rows[len(specs):]:
            self.delete(limit, f"limit on {tenant.slug}{_for(limit.model)} ({_limit_text(limit)})")

    def cache_policies(self, tenant: Tenant, specs: list[schema.CachePolicy], loc: tuple) -> None:
        kept = set()
        for n, spec in enumerate(specs):
            policy = (CachePolicy.objects.filter(tenant=tenant, api_key=None, model=spec.model).order_by("id").first()
                      or CachePolicy(tenant=tenant, model=spec.model))
            desired = {name: given(spec, name, CachePolicy) for name in CACHE_FIELDS}
            if self.sync(policy, desired, f"cache policy on {tenant.slug}{_for(spec.model)}", (*loc, n)):
                kept.add(policy.pk)
        for policy in CachePolicy.objects.filter(tenant=tenant, api_key=None).exclude(pk__in=kept):
            self.delete(policy, f"cache policy on {tenant.slug}{_for(policy.model)}")

    def guardrails(self, tenant: Tenant, specs: list[schema.GuardrailPolicy], loc: tuple) -> None:
        kept = set()
        for n, spec in enumerate(specs):
            policy = (GuardrailPolicy.objects.filter(tenant=tenant, api_key=None, name=spec.name).order_by("id").first()
                      or GuardrailPolicy(tenant=tenant, name=spec.name))
            desired = {name: given(spec, name, GuardrailPolicy) for name in POLICY_FIELDS}
            if not self.sync(policy, desired, f"guardrail policy {spec.name} of {tenant.slug}", (*loc, n)):
                continue
            kept.add(policy.pk)
            self.checks(policy, spec.checks, (*loc, n, "checks"))
        for policy in GuardrailPolicy.objects.filter(tenant=tenant, api_key=None).exclude(pk__in=kept):
            self.delete(policy, f"guardrail policy {policy.name} of {tenant.slug}")

    def checks(self, policy: GuardrailPolicy, specs: list[schema.GuardrailCheck], loc: tuple) -> None:
        rows = list(policy.checks.order_by("order", "id"))
        current = [{"order": c.order, **{name: getattr(c, name) for name in CHECK_FIELDS}} for c in rows]
        current_secrets = [c.secret() for c in rows]
        desired, secrets = [], []
        for n, spec in enumerate(specs):
            desired.append({"order": n, **{name: given(spec, name, GuardrailCheck) for name in CHECK_FIELDS}})
            secrets.append(self.check_secret(spec.secret, current_secrets[n] if n < len(rows) else "",
                                             (*loc, n, "secret")))
        self.replace(policy, f"guardrail policy {policy.name} of {policy.tenant.slug}", "checks", GuardrailCheck, current, desired, loc, secrets, current_secrets == secrets)

    def check_secret(self, ref: schema.SecretRef | None, stored: str, loc: tuple) -> str:
        """A webhook's HMAC key, read as apply_config runs and stored encrypted as the admin stores it."""
        if ref is None:
            return ""
        if ref.env:
            return os.environ.get(ref.env, "")
        if ref.stored:
            if not stored:
                self.problem(loc, "no secret is stored for this check in this database: give {env: ...} or {file: ...}")
            return stored
        try:
            return read_secret(ref, self.base)
        except OSError as exc:
            self.problem((*loc, "file"), f"cannot read the secret: {exc.strerror or exc}")
            return ""


def _rows_text(model, rows: list[dict]) -> str:
    """Rows as a diff shows them, their defaults left out: [mock/mock-gpt; mock/mock-mini priority=1]."""
    def shown(name, value):
        if isinstance(value, Deployment):
            return f"{value.provider.name}/{value.public_model}"
        return f"{name}={_shown(value)}"

    return "[" + "; ".join(" ".join(shown(name, value) for name, value in row.items()
                                    if name != "order" and value not in (None, "", [], {})
                                    and value != model._meta.get_field(name).get_default()) for row in rows) + "]"


def _parent_field(model, owner) -> str:
    """The name of `model`'s foreign key to `owner`'s model (route, policy)."""
    return next(f.name for f in model._meta.concrete_fields if f.is_relation and f.related_model is type(owner)
                and f.name != "sub_route")


def _owned(name: str, tenant) -> str:
    return f"{name} ({tenant.slug})" if tenant is not None else f"{name} (shared)"


def _limit_text(limit: Limit) -> str:
    parts = [f"{name}={_shown(getattr(limit, name))}" for name in LIMIT_FIELDS
             if getattr(limit, name) not in (None, [])]
    return ", ".join(parts) + f" per {limit.period}"


def _for(model: str) -> str:
    return f" for {model}" if model else ""


def apply(path: str, *, prune: bool = False, dry_run: bool = False, actor=None) -> tuple[list[Change], list[str]]:
    """Apply the file at `path`: (changes made, objects not named and kept). With `dry_run`, the
    same work is done and rolled back. ConfigError, and nothing changed, when any part is refused."""
    config, lines = schema.read(path)
    with audit.acting(actor, label=f"apply_config {Path(path).name}"[:200]), transaction.atomic():
        applier = Applier(config, lines, path, prune)
        changes = applier.run()
        if changes and not dry_run:
            audit.record("config.apply", changes={"file": str(path), "prune": prune,
                                                  "changes": [str(change) for change in changes]})
        if dry_run:
            transaction.set_rollback(True)
    return changes, applier.kept
