"""The admin for tenant users: owners and admins run their tenant, members see their own
keys and usage, and every list, choice and save stays inside the tenant."""

import re
from datetime import UTC, datetime

import pytest

from keys import services as key_services
from providers.models import Deployment, Provider
from routing.models import Route, RouteTarget
from tenants.models import Membership, Tenant
from usage.models import Limit, UsageRecord


@pytest.fixture()
def people(tenant, django_user_model):
    users = {}
    for role in ("owner", "admin", "member"):
        users[role] = django_user_model.objects.create_user(f"acme-{role}", is_staff=True)
        Membership.objects.create(tenant=tenant, user=users[role], role=role)
    return users


def deployment(name: str, tenant=None) -> Deployment:
    provider = Provider.objects.create(name=f"{name}-provider", kind="openai", base_url="https://api.example.com/v1",
                                       tenant=tenant)
    return Deployment.objects.create(provider=provider, public_model=name, upstream_model=name)


def options(page: str, field: str) -> set[str]:
    select = re.search(rf'<select name="{field}"[^>]*>(.*?)</select>', page, re.S).group(1)
    return set(re.findall(r'<option value="([^"]*)"', select)) - {""}


def test_tenant_admin_sees_their_tenant_in_the_admin_and_nothing_else(client, people, tenant, other_tenant):
    ours, _ = key_services.issue(tenant, "acme key")
    key_services.issue(other_tenant, "globex key")
    initech = Tenant.objects.create(name="Initech", slug="initech")  # the admin's second tenant
    Membership.objects.create(tenant=initech, user=people["admin"], role="admin")
    key_services.issue(initech, "initech key")
    client.force_login(people["admin"])

    index = client.get("/admin/").content.decode()
    for section in ("/admin/keys/apikey/", "/admin/routing/route/", "/admin/usage/limit/", "/admin/usage/usagerecord/",
                    "/admin/tenants/auditlog/", "/admin/tenants/membership/", "/admin/providers/provider/"):
        assert section in index, section
    for platform in ("/admin/auth/user/", "/admin/auth/group/", "/admin/django_celery_beat/"):
        assert platform not in index
    keys = client.get("/admin/keys/apikey/").content.decode()
    assert "acme key" in keys and "initech key" in keys and "globex key" not in keys
    # The tenant filter offers their two tenants, not every tenant there is.
    assert f"tenant__id__exact={tenant.id}" in keys and f"tenant__id__exact={initech.id}" in keys
    assert f"tenant__id__exact={other_tenant.id}" not in keys and "Globex" not in keys
    assert client.get(f"/admin/keys/apikey/{ours.id}/change/").status_code == 200


def test_route_targets_are_chosen_from_own_and_shared_deployments_only(client, people, tenant, other_tenant):
    shared, own, foreign = deployment("shared-model"), deployment("acme-model", tenant), deployment("globex-model",
                                                                                                   other_tenant)
    client.force_login(people["admin"])
    form = client.get("/admin/routing/route/add/").content.decode()
    assert options(form, "targets-__prefix__-deployment") == {str(shared.id), str(own.id)}
    assert options(form, "tenant") == {str(tenant.id)}

    def add(deployment_id, tenant_id, name):
        return client.post("/admin/routing/route/add/", {
            "name": name, "tenant": tenant_id, "strategy": "priority", "max_attempts": "3", "deadline_seconds": "120",
            "is_active": "on", "targets-TOTAL_FORMS": "1", "targets-INITIAL_FORMS": "0",
            "targets-0-deployment": deployment_id, "targets-0-priority": "0", "targets-0-weight": "1",
            "targets-0-is_active": "on", "rules-TOTAL_FORMS": "0", "rules-INITIAL_FORMS": "0"})

    assert add(foreign.id, tenant.id, "sneaky").status_code == 200  # the form again, with an error
    assert add(own.id, other_tenant.id, "planted").status_code == 200
    assert not Route.objects.filter(name__in=["sneaky", "planted"]).exists()
    assert add(shared.id, tenant.id, "mine").status_code == 302
    route = Route.objects.get(name="mine")
    assert route.tenant == tenant and [t.deployment for t in route.targets.all()] == [shared]


def test_shared_routes_and_deployments_are_visible_but_read_only(client, people):
    shared_route = Route.objects.create(name="shared-route")
    RouteTarget.objects.create(route=shared_route, deployment=deployment("shared-model"))
    client.force_login(people["admin"])
    assert "shared-route" in client.get("/admin/routing/route/").content.decode()
    page = client.get(f"/admin/routing/route/{shared_route.id}/change/").content.decode()
    assert 'name="_save"' not in page and "shared-model" in page
    assert client.post(f"/admin/routing/route/{shared_route.id}/change/", {"name": "mine now"}).status_code == 403
    assert "shared-provider" not in client.get("/admin/providers/provider/").content.decode()
    shared_route.refresh_from_db()
    assert shared_route.name == "shared-route"


def test_members_see_only_their_own_keys_and_usage(client, people, tenant):
    mine, _ = key_services.issue(tenant, "member key", created_by=people["member"])
    theirs, _ = key_services.issue(tenant, "admin key", created_by=people["admin"])
    for key in (mine, theirs):
        UsageRecord.objects.create(request_id=f"req-{key.name.replace(' ', '-')}", created_at=datetime.now(UTC),
                                   tenant=tenant, api_key=key, key_prefix=key.prefix, endpoint="chat",
                                   public_model="m")
    client.force_login(people["member"])

    index = client.get("/admin/").content.decode()
    assert "/admin/keys/apikey/" in index and "/admin/usage/usagerecord/" in index
    for closed in ("/admin/routing/route/", "/admin/tenants/membership/", "/admin/tenants/auditlog/",
                   "/admin/providers/provider/"):
        assert closed not in index
        assert client.get(closed).status_code == 403
    keys = client.get("/admin/keys/apikey/").content.decode()
    assert "member key" in keys and "admin key" not in keys
    usage = client.get("/admin/usage/usagerecord/").content.decode()
    assert "req-member-key" in usage and "req-admin-key" not in usage
    assert client.get(f"/admin/keys/apikey/{theirs.id}/change/").status_code == 404
    assert client.get(f"/api/manage/keys/{theirs.id}/").status_code == 404

    page = client.get(f"/admin/keys/apikey/{mine.id}/change/").content.decode()
    assert 'name="_save"' in page  # their own key they may edit


def test_admins_manage_members_but_only_owners_make_or_touch_owners(client, people, tenant, django_user_model):
    client.force_login(people["admin"])
    form = client.get("/admin/tenants/membership/add/").content.decode()
    assert options(form, "role") == {"admin", "member"}

    def add(username, role):
        return client.post("/admin/tenants/membership/add/", {
            "tenant": tenant.id, "username": username, "email": "", "password": "A-long-pass-phrase-7",
            "role": role})

    assert add("new-owner", "owner").status_code in (200, 403)
    assert not django_user_model.objects.filter(username="new-owner").exists()
    assert add("new-member", "member").status_code == 302
    newcomer = django_user_model.objects.get(username="new-member")
    assert newcomer.is_staff and not newcomer.is_superuser and newcomer.check_password("A-long-pass-phrase-7")
    assert Membership.objects.get(user=newcomer).tenant == tenant

    owner_membership = Membership.objects.get(user=people["owner"])
    assert client.post(f"/admin/tenants/membership/{owner_membership.id}/change/",
                       {"role": "member"}).status_code == 403
    assert client.post(f"/admin/tenants/membership/{owner_membership.id}/delete/",
                       {"post": "yes"}).status_code == 403
    owner_membership.refresh_from_db()
    assert owner_membership.role == "owner"

    client.force_login(people["owner"])
    assert add("second-owner", "owner").status_code == 302


def test_owners_rename_their_tenant_but_billing_settings_stay_with_staff(client, people, tenant):
    client.force_login(people["owner"])
    response = client.post(f"/admin/tenants/tenant/{tenant.id}/change/", {
        "name": "Acme Corp", "slug": "hijacked", "default_model": "gpt-test", "time_zone": "Europe/Paris",
        "allowed_models": '["everything"]'})  # is_active unticked
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert (tenant.name, tenant.time_zone, tenant.default_model) == ("Acme Corp", "Europe/Paris", "gpt-test")
    assert (tenant.slug, tenant.is_active, tenant.allowed_models) == ("acme", True, [])

    client.force_login(people["admin"])
    assert client.post(f"/admin/tenants/tenant/{tenant.id}/change/", {"name": "Admin's"}).status_code == 403


def test_tenant_wide_limits_are_staffs_and_key_limits_are_the_tenants(client, people, tenant):
    key, _ = key_services.issue(tenant, "k")
    tenant_wide = Limit.objects.create(tenant=tenant, budget_usd="10")
    client.force_login(people["admin"])

    assert "10.000000" in client.get("/admin/usage/limit/").content.decode()
    assert client.post(f"/admin/usage/limit/{tenant_wide.id}/change/", {"budget_usd": "1000"}).status_code == 403
    assert client.post(f"/admin/usage/limit/{tenant_wide.id}/delete/", {"post": "yes"}).status_code == 403

    def add(api_key):
        return client.post("/admin/usage/limit/add/", {"tenant": tenant.id, "api_key": api_key, "model": "",
                                                      "period": "month", "budget_usd": "5", "alert_thresholds": "[]"})

    assert add("").status_code == 200  # the form again: a key is required
    assert add(key.id).status_code == 302
    assert Limit.objects.get(api_key=key).budget_usd == 5
    tenant_wide.refresh_from_db()
    assert tenant_wide.budget_usd == 10
