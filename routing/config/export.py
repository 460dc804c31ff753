"""The database as a configuration file (the form routing.config.apply reads).

Fields at their model's default are left out (applying leaves them at the default too); prices are
always written, so that a fresh database does not fill them from the price catalogue. Secrets are
written as references: a provider's environment variable as {env: NAME}, a key stored encrypted as
{stored: true} (kept by apply_config where the database holds it). Key-scoped limits and policies
are not the file's and are not written.
"""

from decimal import Decimal

import yaml
from django.db import models

from providers.models import Provider
from routing.models import CachePolicy, GuardrailPolicy, Route
from tenants.models import Tenant
from usage.models import Limit

from . import apply as spec

HEADER = "# LLM gateway configuration (docs/config.md): python3 manage.py apply_config FILE\n"


def _plain(value):
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return value


def fields(obj: models.Model, names) -> dict:
    """Each of `names` whose value is not the model field's default."""
    out = {}
    for name in names:
        value, default = getattr(obj, name), obj._meta.get_field(name).get_default()
        if value != default:
            out[name] = _plain(value)
    return out


def _deployment_ref(deployment) -> str:
    return f"{deployment.provider.name}/{deployment.public_model}"


def provider(p: Provider) -> dict:
    out = {"name": p.name, "kind": p.kind, "base_url": p.base_url}
    if p.api_key_env:
        out["api_key"] = {"env": p.api_key_env}
    elif p.api_key_encrypted:
        out["api_key"] = {"stored": True}
    out |= fields(p, [name for name in spec.PROVIDER_FIELDS if name not in out])
    out["deployments"] = []
    for d in p.deployments.all().order_by("public_model", "upstream_model"):
        row = {"public_model": d.public_model}
        if d.upstream_model != d.public_model:
            row["upstream_model"] = d.upstream_model
        row |= fields(d, spec.DEPLOYMENT_FIELDS)
        row["prices"] = {name: _plain(getattr(d, column)) for name, column in spec.PRICES.items()
                         if getattr(d, column) != d._meta.get_field(column).get_default()}
        out["deployments"].append(row)
    return out


def route(r: Route) -> dict:
    out = {"name": r.name, **fields(r, spec.ROUTE_FIELDS)}
    if r.context_fallback_id:
        out["context_fallback"] = r.context_fallback.name
    out["targets"] = [_target(t) for t in r.targets.select_related("deployment__provider").order_by("id")]
    if rules := [_rule(rule) for rule in r.rules.order_by("order", "id")]:
        out["rules"] = rules
    return out


def _target(t) -> dict:
    row = {"deployment": _deployment_ref(t.deployment)}
    if t.deployment.provider.deployments.filter(public_model=t.deployment.public_model).count() > 1:
        row["upstream_model"] = t.deployment.upstream_model
    return row | fields(t, spec.TARGET_FIELDS)


def _rule(rule) -> dict:
    row = fields(rule, spec.RULE_FIELDS)
    row["kind"] = rule.kind
    if rule.deployment_id:
        row["deployment"] = _deployment_ref(rule.deployment)
    if rule.sub_route_id:
        row["sub_route"] = rule.sub_route.name
    return row


def tenant(t: Tenant) -> dict:
    out = {"slug": t.slug, **fields(t, spec.TENANT_FIELDS)}
    out["name"] = t.name
    out["members"] = [{"email": m.user.email, "role": m.role} if m.user.email else
                      {"username": m.user.get_username(), "role": m.role}
                      for m in t.memberships.select_related("user").order_by("user__email", "user__username")]
    out["providers"] = [provider(p) for p in t.providers.order_by("name")]
    out["routes"] = [route(r) for r in t.routes.order_by("name")]
    out["limits"] = [fields(limit, ("model", "period", *spec.LIMIT_FIELDS))
                     for limit in Limit.objects.filter(tenant=t, api_key=None).order_by("id")]
    out["cache"] = [fields(c, ("model", *spec.CACHE_FIELDS))
                    for c in CachePolicy.objects.filter(tenant=t, api_key=None).order_by("model", "id")]
    out["guardrails"] = [guardrail(g) for g in GuardrailPolicy.objects.filter(tenant=t, api_key=None).order_by("name")]
    return {name: value for name, value in out.items() if value != []}


def guardrail(g: GuardrailPolicy) -> dict:
    out = {"name": g.name, **fields(g, spec.POLICY_FIELDS), "checks": []}
    for check in g.checks.order_by("order", "id"):
        row = {"kind": check.kind, **fields(check, [n for n in spec.CHECK_FIELDS if n != "kind"])}
        if check.secret_encrypted:
            row["secret"] = {"stored": True}
        out["checks"].append(row)
    return out


def export() -> str:
    data = {
        "version": 1,
        "providers": [provider(p) for p in Provider.objects.filter(tenant=None).order_by("name")],
        "routes": [route(r) for r in Route.objects.filter(tenant=None).order_by("name")],
        "tenants": [tenant(t) for t in Tenant.objects.order_by("slug")],
    }
    return HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)
