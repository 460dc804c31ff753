"""The audit trail: every write in the admin and the management API, logins and failed
logins; actor, tenant, address, request id and a field-by-field diff, secrets redacted;
read-only and filterable in the admin."""

import json

from keys import services as key_services
from providers.models import Provider
from routing.models import Route
from tenants.models import AuditLog, Tenant
from tests.conftest import user_in
from usage.models import Limit

PROVIDER_SECRET = "sk-upstream-audit-secret-1234"
HEADER_SECRET = "Bearer sk-header-audit-secret-5678"


def all_audit_text() -> str:
    return json.dumps(list(AuditLog.objects.values()), default=str)


def test_admin_edit_is_recorded_field_by_field_with_secrets_redacted(client, tenant, django_user_model):
    admin_user = user_in(tenant, "admin")
    client.force_login(admin_user)
    provider = Provider(name="acme-openai", kind="openai", base_url="https://api.example.com/v1", tenant=tenant)
    provider.set_api_key("sk-first-secret-0000")
    provider.save()

    response = client.post(f"/admin/providers/provider/{provider.id}/change/", {
        "name": "acme-openai", "kind": "openai", "base_url": "https://eu.api.example.com/v1",
        "api_key": PROVIDER_SECRET, "api_key_env": "", "extra_headers": json.dumps({"Authorization": HEADER_SECRET}),
        "settings": "{}", "tenant": tenant.id, "is_active": "on",
        "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0"}, headers={"x-request-id": "audit-test-1"})
    assert response.status_code == 302

    row = AuditLog.objects.get(action="update", object_type="providers.Provider")
    assert row.changes == {
        "api_key_encrypted": ["[redacted]", "[redacted]"],
        "base_url": ["https://api.example.com/v1", "https://eu.api.example.com/v1"],
        "extra_headers": [{}, {"Authorization": "[redacted]"}],
    }
    assert (row.actor, row.actor_label, row.tenant_id) == (admin_user, "acme-admin", tenant.id)
    assert row.address == "127.0.0.1" and row.request_id == "audit-test-1" == response["x-request-id"]
    assert PROVIDER_SECRET not in all_audit_text() and "sk-header-audit" not in all_audit_text()


def test_creates_and_deletes_in_the_admin_are_recorded(client, tenant, django_user_model):
    client.force_login(user_in(tenant, "owner"))
    response = client.post("/admin/routing/route/add/", {
        "name": "fast", "tenant": tenant.id, "strategy": "latency", "max_attempts": "2", "deadline_seconds": "30",
        "is_active": "on", "targets-TOTAL_FORMS": "0", "targets-INITIAL_FORMS": "0",
        "rules-TOTAL_FORMS": "0", "rules-INITIAL_FORMS": "0"})
    assert response.status_code == 302, response.content.decode()[:2000]
    route = Route.objects.get(name="fast")
    created = AuditLog.objects.get(action="create", object_id=str(route.id), object_type="routing.Route")
    assert created.changes["strategy"] == [None, "latency"] and created.tenant_id == tenant.id

    assert client.post(f"/admin/routing/route/{route.id}/delete/", {"post": "yes"}).status_code == 302
    deleted = AuditLog.objects.get(action="delete", object_id=str(route.id))
    assert deleted.changes["name"] == ["fast", None] and deleted.object_repr == "fast (acme)"


def test_management_api_writes_are_recorded_with_the_api_user(client, tenant, django_user_model):
    user = user_in(tenant, "admin")
    key, _ = key_services.issue(tenant, "k")
    limit = Limit.objects.create(tenant=tenant, api_key=key, requests_per_minute=10)
    client.force_login(user)

    response = client.patch(f"/api/manage/limits/{limit.id}/", {"requests_per_minute": 20},
                            content_type="application/json")
    assert response.status_code == 200
    row = AuditLog.objects.get(action="update", object_type="usage.Limit")
    assert row.changes == {"requests_per_minute": [10, 20]}
    assert row.actor == user and row.request_id == response["x-request-id"] and row.tenant_id == tenant.id

    response = client.post("/api/manage/providers/", {
        "name": "acme-own", "kind": "openai", "base_url": "https://api.example.com/v1", "api_key": PROVIDER_SECRET},
        content_type="application/json")
    assert response.status_code == 201, response.content
    assert AuditLog.objects.filter(action="create", object_type="providers.Provider", actor=user).exists()
    assert PROVIDER_SECRET not in all_audit_text()


def test_logins_and_failed_logins_are_recorded(client, tenant, django_user_model):
    user = user_in(tenant, "admin")
    user.set_password("a-long-test-password")
    user.save()
    address = {"REMOTE_ADDR": "10.20.30.40"}  # its own login throttle bucket

    client.post("/admin/login/", {"username": "acme-admin", "password": "wrong"}, **address)
    failed = AuditLog.objects.get(action="login.failed")
    assert (failed.actor_label, failed.address, failed.actor) == ("acme-admin", "10.20.30.40", None)
    assert "wrong" not in all_audit_text()

    response = client.post("/admin/login/", {"username": "acme-admin", "password": "a-long-test-password"}, **address)
    assert response.status_code == 302
    login = AuditLog.objects.get(action="login")
    assert (login.actor, login.tenant_id, login.address) == (user, tenant.id, "10.20.30.40")
    assert login.request_id == response["x-request-id"]

    client.post("/admin/logout/", **address)
    assert AuditLog.objects.filter(action="logout", actor=user).exists()


def test_password_changes_are_recorded_but_never_the_password(client, django_user_model):
    staff = django_user_model.objects.create_superuser("root", "root@example.com", None)
    someone = django_user_model.objects.create_user("someone")
    client.force_login(staff)
    new = "brand-new-Pass-phrase-42"
    response = client.post(f"/admin/auth/user/{someone.id}/password/",
                           {"password1": new, "password2": new, "usable_password": "true"})
    assert response.status_code == 302
    row = AuditLog.objects.get(action="update", object_type="auth.User", object_id=str(someone.id))
    assert row.changes == {"password": ["[redacted]", "[redacted]"]}
    assert new not in all_audit_text()
    someone.refresh_from_db()
    assert someone.password not in all_audit_text()


def test_audit_admin_is_read_only_and_filterable(client, tenant, other_tenant, django_user_model):
    AuditLog.objects.create(tenant=tenant, action="key.revoke", actor_label="alice", object_repr="acme thing")
    AuditLog.objects.create(tenant=tenant, action="create", actor_label="bob", object_repr="acme other")
    AuditLog.objects.create(tenant=other_tenant, action="key.revoke", actor_label="mallory", object_repr="globex x")
    row = AuditLog.objects.first()

    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", None))
    assert client.get("/admin/tenants/auditlog/add/").status_code == 403
    assert client.post(f"/admin/tenants/auditlog/{row.id}/change/", {"action": "nothing"}).status_code == 403
    assert client.post(f"/admin/tenants/auditlog/{row.id}/delete/", {"post": "yes"}).status_code == 403
    assert AuditLog.objects.filter(pk=row.pk, action=row.action).exists()

    by_action = client.get("/admin/tenants/auditlog/?action=key.revoke").content.decode()
    assert "acme thing" in by_action and "globex x" in by_action and "acme other" not in by_action
    by_actor = client.get("/admin/tenants/auditlog/?actor_label=bob").content.decode()
    assert "acme other" in by_actor and "acme thing" not in by_actor
    by_tenant = client.get(f"/admin/tenants/auditlog/?tenant__id__exact={other_tenant.id}").content.decode()
    assert "globex x" in by_tenant and "acme" not in by_tenant.replace("acme-", "")
    today = row.created_at
    by_day = client.get(f"/admin/tenants/auditlog/?created_at__year={today.year}&created_at__month={today.month}"
                        f"&created_at__day={today.day}").content.decode()
    assert "acme thing" in by_day

    # A tenant admin sees their tenant's rows only, and no other tenant in the filters.
    client.force_login(user_in(tenant, "admin"))
    page = client.get("/admin/tenants/auditlog/").content.decode()
    assert "acme thing" in page and "globex" not in page.lower() and "mallory" not in page
    listing = client.get("/api/manage/audit/?action=key.revoke").json()["results"]
    assert [r["object"] for r in listing] == ["acme thing"]


def test_deleting_a_tenant_keeps_its_trail(client, tenant, django_user_model):
    key, _ = key_services.issue(tenant, "doomed")
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", None))
    assert client.post(f"/admin/tenants/tenant/{tenant.id}/delete/", {"post": "yes"}).status_code == 302
    assert not Tenant.objects.filter(pk=tenant.pk).exists()
    gone = AuditLog.objects.filter(action="delete", tenant_id=tenant.id)
    assert {(r.object_type, r.object_id) for r in gone} >= {("tenants.Tenant", str(tenant.id)),
                                                             ("keys.ApiKey", str(key.id))}
    assert "doomed" in client.get("/admin/tenants/auditlog/").content.decode()


def test_group_and_permission_changes_are_recorded(client, django_user_model):
    from django.contrib.auth.models import Group

    staff = django_user_model.objects.create_superuser("root", "root@example.com", None)
    someone = django_user_model.objects.create_user("someone", is_staff=True)
    group = Group.objects.create(name="support")
    client.force_login(staff)
    joined = someone.date_joined
    response = client.post(f"/admin/auth/user/{someone.id}/change/", {
        "username": "someone", "first_name": "", "last_name": "", "email": "", "is_active": "on", "is_staff": "on",
        "groups": [group.id], "user_permissions": [], "last_login_0": "", "last_login_1": "",
        "date_joined_0": f"{joined:%Y-%m-%d}", "date_joined_1": f"{joined:%H:%M:%S}"})
    assert response.status_code == 302
    row = AuditLog.objects.get(object_type="auth.User", object_id=str(someone.id), changes__has_key="groups")
    assert row.changes == {"groups": {"added": [group.id]}} and row.actor == staff
