"""Every role of one tenant, against every admin page and management API endpoint
holding another tenant's objects: 404 (or absent from lists), and nothing changes.

Staff run the same requests first, to prove each URL does reach the object.
"""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.sessions.models import Session

from gateway_project.urls import manage
from keys import services as key_services
from providers.models import Deployment, HealthCheck, Provider
from routing.batches.models import Batch
from routing.batches.models import File as BatchFile
from routing.models import (
    CachePolicy,
    CircuitEvent,
    Experiment,
    GuardrailCheck,
    GuardrailPolicy,
    PromptTemplate,
    Route,
    RouteRule,
    RouteTarget,
    Variant,
)
from routing.prompts import services as prompt_services
from tenants.models import AuditLog, Membership
from usage.models import (
    AnomalyMute,
    Feedback,
    Limit,
    PromptLog,
    ReportDelivery,
    SpendAnomaly,
    StoredResponse,
    UsageRecord,
    UsageRollup,
)

ROLES = ["owner", "admin", "member"]


def make_world(tenant, people: dict) -> dict:
    """One of everything a tenant owns, each named after the tenant."""
    slug = tenant.slug
    key, _ = key_services.issue(tenant, f"{slug} key", created_by=people["member"])
    provider = Provider(name=f"{slug}-provider", kind="openai", base_url="https://api.example.com/v1", tenant=tenant)
    provider.set_api_key(f"sk-{slug}-provider-secret")
    provider.save()
    deployment = Deployment.objects.create(provider=provider, public_model=f"{slug}-model", upstream_model="gpt")
    route = Route.objects.create(name=f"{slug}-route", tenant=tenant)
    RouteTarget.objects.create(route=route, deployment=deployment)
    RouteRule.objects.create(route=route, kind="keyword", value=f"{slug}-word", deployment=deployment)
    guardrail = GuardrailPolicy.objects.create(tenant=tenant, name=f"{slug}-guardrail", api_key=key)
    GuardrailCheck.objects.create(policy=guardrail, kind="terms", terms=[f"{slug}-secret-term"])
    template = PromptTemplate.objects.create(tenant=tenant, name=f"{slug}-template")
    version = prompt_services.prompt_publish(template, [{"role": "system", "content": f"{slug} secret prompt"}],
                                             label="production")
    experiment = Experiment.objects.create(tenant=tenant, name=f"{slug}-experiment", route=f"{slug}-route")
    Variant.objects.create(experiment=experiment, name=f"{slug}-variant", prompt_version=version)
    return {
        "template": template,
        "version": version,
        "experiment": experiment,
        "feedback": Feedback.objects.create(tenant=tenant, request_id=f"req_{slug}", label=f"{slug}-label"),
        "guardrail": guardrail,
        "tenant": tenant,
        "membership": Membership.objects.get(tenant=tenant, user=people["member"]),
        "owner_membership": Membership.objects.get(tenant=tenant, user=people["owner"]),
        "key": key,
        "provider": provider,
        "deployment": deployment,
        "route": route,
        "cache_policy": CachePolicy.objects.create(tenant=tenant, model=f"{slug}-model"),
        "key_limit": Limit.objects.create(tenant=tenant, api_key=key, model=f"{slug}-model", requests_per_minute=5),
        "tenant_limit": Limit.objects.create(tenant=tenant, budget_usd="10"),
        "usage": UsageRecord.objects.create(request_id=f"req_{slug}", created_at=datetime.now(UTC), tenant=tenant,
                                            api_key=key, key_prefix=key.prefix, endpoint="chat",
                                            public_model=f"{slug}-model"),
        "audit": AuditLog.objects.create(tenant=tenant, action="update", object_repr=f"{slug} thing"),
        "circuit": CircuitEvent.objects.create(deployment=deployment, state="open", reason=f"{slug} down"),
        "health": HealthCheck.objects.create(provider=provider, deployment=deployment, checked_at=datetime.now(UTC),
                                             ok=False, error=f"{slug} down"),
        "rollup": UsageRollup.objects.create(granularity="hour", bucket=datetime(2026, 11, 1, tzinfo=UTC),
                                             tenant=tenant, api_key=key, public_model=f"{slug}-model", requests=1),
        "delivery": ReportDelivery.objects.create(tenant=tenant, period="day", period_start=date(2026, 11, 1),
                                                  recipients=[f"{slug}@example.com"]),
        "prompt": PromptLog.objects.create(tenant=tenant, request_id=f"req_{slug}", prompt=f"{slug} secret plan",
                                           created_at=datetime.now(UTC),
                                           expires_at=datetime.now(UTC) + timedelta(days=1)),
        "stored": StoredResponse.objects.create(
            response_id=f"resp_{slug}", tenant=tenant, api_key=key, model=f"{slug}-model", status="completed",
            created_at=datetime.now(UTC), expires_at=datetime.now(UTC) + timedelta(days=1),
            response={"id": f"resp_{slug}", "output": [{"type": "message", "content": f"{slug} secret answer"}]}),
        "anomaly": SpendAnomaly.objects.create(
            tenant=tenant, api_key=key, key_prefix=key.prefix, public_model=f"{slug}-model",
            started_at=datetime(2026, 11, 1, tzinfo=UTC), last_hour=datetime(2026, 11, 1, tzinfo=UTC),
            metrics="spend", spend_usd="30", baseline_spend_usd="3", requests=120, baseline_requests=12, score=40),
        "mute": AnomalyMute.objects.create(tenant=tenant, api_key=key),
        "batch_file": (batch_file := BatchFile.objects.create(tenant=tenant, filename=f"{slug}.jsonl",
                                                              purpose="batch", storage_name=f"files/{slug}.jsonl")),
        "batch": Batch.objects.create(tenant=tenant, api_key=key, endpoint="/v1/chat/completions",
                                      input_file=batch_file, expires_at=datetime.now(UTC) + timedelta(days=1)),
        "user": people["member"],
    }


@pytest.fixture()
def world(tenant, other_tenant, django_user_model):
    def people(t):
        users = {}
        for role in ROLES:
            # No password: the tests sign in with force_login, and hashing one costs a second.
            users[role] = django_user_model.objects.create_user(f"{t.slug}-{role}", is_staff=True)
            Membership.objects.create(tenant=t, user=users[role], role=role)
        return users

    ours, theirs = people(tenant), people(other_tenant)
    staff = django_user_model.objects.create_superuser("root", "root@example.com", None)
    return {"ours": ours, "theirs": make_world(other_tenant, theirs), "mine": make_world(tenant, ours),
            "staff": staff}


# (admin URL path, object in the other tenant's world)
ADMIN_OBJECTS = [
    ("tenants/tenant", "tenant"),
    ("tenants/membership", "membership"),
    ("tenants/membership", "owner_membership"),
    ("tenants/auditlog", "audit"),
    ("keys/apikey", "key"),
    ("providers/provider", "provider"),
    ("providers/deployment", "deployment"),
    ("routing/route", "route"),
    ("routing/circuitevent", "circuit"),
    ("routing/cachepolicy", "cache_policy"),
    ("routing/guardrailpolicy", "guardrail"),
    ("usage/limit", "key_limit"),
    ("usage/limit", "tenant_limit"),
    ("usage/usagerecord", "usage"),
    ("providers/healthcheck", "health"),
    ("usage/usagerollup", "rollup"),
    ("usage/reportdelivery", "delivery"),
    ("usage/promptlog", "prompt"),
    ("usage/storedresponse", "stored"),
    ("usage/spendanomaly", "anomaly"),
    ("usage/anomalymute", "mute"),
    ("routing/file", "batch_file"),
    ("routing/batch", "batch"),
    ("routing/prompttemplate", "template"),
    ("routing/promptversion", "version"),
    ("routing/experiment", "experiment"),
    ("usage/feedback", "feedback"),
]
# Admin models no tenant owns: tenant users may not open them at all.
PLATFORM_ADMIN = [("auth/user", "user")]
PLATFORM_MODELS = {"auth.user", "auth.group", "django_celery_beat.periodictask", "django_celery_beat.intervalschedule",
                   "django_celery_beat.crontabschedule", "django_celery_beat.solarschedule",
                   "django_celery_beat.clockedschedule", "usage.usagedeadletter", "tenants.ssoidentity"}

# (API resource, object, a body that would move or change it)
API_OBJECTS = [
    ("tenants", "tenant", {"name": "taken over"}),
    ("members", "membership", {"role": "owner"}),
    ("members", "owner_membership", {"role": "member"}),
    ("keys", "key", {"name": "taken over", "allowed_models": ["x"]}),
    ("providers", "provider", {"base_url": "https://evil.example.com/v1", "api_key": "sk-stolen"}),
    ("deployments", "deployment", {"upstream_model": "other"}),
    ("routes", "route", {"name": "taken-over", "targets": []}),
    ("guardrails", "guardrail", {"is_active": False, "checks": []}),
    ("limits", "key_limit", {"requests_per_minute": 100000}),
    ("cache-policies", "cache_policy", {"mode": "off", "ttl_seconds": 5}),
    ("limits", "tenant_limit", {"budget_usd": "100000"}),
    ("prompts", "template", {"name": "taken-over", "description": "x"}),
    ("experiments", "experiment", {"route": "taken-over", "variants": []}),
    ("audit", "audit", {"action": "nothing"}),
]


def snapshot() -> dict:
    """Every row of every table but sessions, to prove nothing changed."""
    return {m._meta.label: list(m._base_manager.order_by("pk").values())
            for m in apps.get_models() if m is not Session}


def test_every_admin_model_and_api_resource_is_in_the_matrix():
    covered = {path.replace("/", ".") for path, _ in ADMIN_OBJECTS}
    registered = {m._meta.label_lower for m in admin.site._registry}
    assert registered - covered == registered & PLATFORM_MODELS, registered - covered - PLATFORM_MODELS
    assert {prefix for prefix, *_ in manage.registry} == {resource for resource, *_ in API_OBJECTS}


def _staff_reaches(client, world, url: str) -> None:
    client.force_login(world["staff"])
    assert client.get(url).status_code == 200, url
    client.logout()


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("path", "name"), ADMIN_OBJECTS)
def test_admin_pages_of_another_tenant_are_not_found(client, world, role, path, name):
    obj = world["theirs"][name]
    base = f"/admin/{path}/"
    _staff_reaches(client, world, f"{base}{obj.pk}/change/")
    client.force_login(world["ours"][role])
    before = snapshot()

    listing = client.get(base)
    assert listing.status_code in (200, 403)
    assert f"{base}{obj.pk}/change/" not in listing.content.decode()
    assert "globex" not in listing.content.decode().lower()
    for url in (f"{base}{obj.pk}/change/", f"{base}{obj.pk}/delete/", f"{base}{obj.pk}/history/"):
        assert client.get(url).status_code == 404, url
    assert client.post(f"{base}{obj.pk}/change/", {"name": "taken over", "role": "owner"}).status_code == 404
    assert client.post(f"{base}{obj.pk}/delete/", {"post": "yes"}).status_code == 404
    # Bulk actions on a forged selection of the other tenant's ids.
    for action in ("delete_selected", "revoke_keys", "rotate_key"):
        client.post(base, {"action": action, "_selected_action": [obj.pk], "post": "yes"})
    if path == "keys/apikey":
        for url in (f"{base}{obj.pk}/rotate/", f"{base}{obj.pk}/revoke/"):
            assert client.get(url).status_code == 404
            assert client.post(url, {"grace": "0"}).status_code == 404

    assert snapshot() == before


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("path", "name"), PLATFORM_ADMIN)
def test_platform_admin_pages_are_closed_to_tenant_users(client, world, role, path, name):
    obj = world["theirs"][name]
    base = f"/admin/{path}/"
    _staff_reaches(client, world, f"{base}{obj.pk}/change/")
    client.force_login(world["ours"][role])
    before = snapshot()
    assert client.get(base).status_code == 403
    for url in (f"{base}{obj.pk}/change/", f"{base}{obj.pk}/delete/"):
        assert client.get(url).status_code in (403, 404)
        assert client.post(url, {"username": "taken", "post": "yes"}).status_code in (403, 404)
    assert snapshot() == before


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("resource", "name", "body"), API_OBJECTS)
def test_api_objects_of_another_tenant_are_not_found(client, world, role, resource, name, body):
    obj = world["theirs"][name]
    base = f"/api/manage/{resource}/"
    _staff_reaches(client, world, f"{base}{obj.pk}/")
    client.force_login(world["ours"][role])
    before = snapshot()

    listing = client.get(base)
    assert listing.status_code in (200, 403)
    if listing.status_code == 200:
        assert obj.pk not in [row["id"] for row in listing.json()["results"]]
        assert "globex" not in listing.content.decode().lower()
    url = f"{base}{obj.pk}/"
    assert client.get(url).status_code == 404
    # The audit trail takes no writes at all, from anyone: 405 whatever the id.
    refused = 405 if resource == "audit" else 404
    assert client.patch(url, body, content_type="application/json").status_code == refused
    assert client.put(url, body, content_type="application/json").status_code == refused
    assert client.delete(url).status_code == refused
    if resource == "keys":
        assert client.post(f"{url}revoke/").status_code == 404
        assert client.post(f"{url}rotate/", {"grace_seconds": 0}, content_type="application/json").status_code == 404

    assert snapshot() == before


THEIR_PARENTS = [
    ("members", {"tenant": "tenant", "username": "intruder", "password": "A-long-pass-phrase-1", "role": "member"}),
    ("keys", {"tenant": "tenant", "name": "planted"}),
    ("providers", {"tenant": "tenant", "name": "planted", "kind": "openai", "base_url": "https://api.example.com"}),
    ("deployments", {"provider": "provider", "public_model": "planted", "upstream_model": "planted"}),
    ("routes", {"tenant": "tenant", "name": "planted"}),
    ("routes", {"name": "planted", "targets": [{"deployment": "deployment"}]}),
    ("limits", {"api_key": "key", "requests_per_minute": 1}),
    ("limits", {"tenant": "tenant", "api_key": "key", "requests_per_minute": 1}),
    ("prompts", {"tenant": "tenant", "name": "planted"}),
    ("experiments", {"tenant": "tenant", "name": "planted", "route": "x"}),
    ("experiments", {"name": "planted", "route": "x", "variants": [{"name": "v", "prompt_version": "version"}]}),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("resource", "body"), THEIR_PARENTS)
def test_api_cannot_create_in_another_tenant(client, world, role, resource, body):
    def resolve(value):
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return world["theirs"][value].pk if value in world["theirs"] else value

    client.force_login(world["ours"][role])
    before = snapshot()
    response = client.post(f"/api/manage/{resource}/", resolve(body), content_type="application/json")
    assert response.status_code in (400, 403), response.content
    assert snapshot() == before


AUTOCOMPLETE = [("usage", "limit", "tenant"), ("usage", "limit", "api_key"), ("routing", "routetarget", "deployment"),
                ("routing", "route", "context_fallback"), ("tenants", "membership", "user"),
                ("providers", "deployment", "provider"), ("tenants", "auditlog", "tenant")]


@pytest.mark.parametrize("role", ROLES)
def test_autocomplete_offers_nothing_of_another_tenant(client, world, role):
    client.force_login(world["staff"])
    everything = [client.get("/admin/autocomplete/", {"app_label": a, "model_name": m, "field_name": f,
                                                       "term": "globex"}).json()["results"] for a, m, f in AUTOCOMPLETE]
    assert all(everything)  # staff find the other tenant's rows: the queries do reach them
    client.force_login(world["ours"][role])
    for app_label, model_name, field_name in AUTOCOMPLETE:
        response = client.get("/admin/autocomplete/", {"app_label": app_label, "model_name": model_name,
                                                       "field_name": field_name, "term": "globex"})
        assert response.status_code == 403 or response.json()["results"] == [], (model_name, field_name)


@pytest.mark.parametrize("role", ROLES)
def test_dashboard_and_playground_show_nothing_of_another_tenant(client, world, role):
    import orjson

    theirs = world["theirs"]
    client.force_login(world["staff"])
    seen_by_staff = client.get("/admin/dashboard/data", {"tenant": theirs["tenant"].id}).content.decode()
    assert "globex-model" in seen_by_staff and theirs["key"].name in client.get("/admin/playground/").content.decode()
    client.force_login(world["ours"][role])
    before = snapshot()
    for params in ({}, {"tenant": theirs["tenant"].id}, {"model": "globex-model"}, {"range": "30d"}):
        body = client.get("/admin/dashboard/data", params).content.decode()
        assert "globex" not in body.lower() and "Globex" not in body, params
    assert theirs["key"].name not in client.get("/admin/playground/").content.decode()
    call = client.post("/admin/playground/call", orjson.dumps({"key": theirs["key"].id, "model": "globex-model",
                                                               "messages": [{"role": "user", "content": "hi"}]}),
                       content_type="application/json")
    assert call.status_code == 404 and call.json()["error"]["code"] == "key_not_found"
    assert snapshot() == before
