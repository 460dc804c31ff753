"""The management API as tenant users and staff use it: what it accepts, what it never
returns, what it refuses, how it is throttled and documented."""

import httpx
import pytest

from providers.models import Provider
from tenants.models import Membership, Tenant
from tests.conftest import user_in, wait_until
from usage.models import Limit

SECRET = "sk-upstream-api-secret-24680"


def test_a_route_made_through_the_api_serves_the_tenants_keys(client, gateway, mock_provider, tenant, api_key,
                                                             django_user_model):
    client.force_login(user_in(tenant, "admin"))
    shared = mock_provider.deployments.get(public_model="gpt-test")
    response = client.post("/api/manage/routes/", {
        "name": "acme-fast", "strategy": "priority", "targets": [{"deployment": shared.id}],
        "rules": [{"kind": "keyword", "value": "urgent", "deployment": shared.id}]}, content_type="application/json")
    assert response.status_code == 201, response.content
    route = response.json()
    assert route["tenant"] == tenant.id and [t["deployment"] for t in route["targets"]] == [shared.id]

    def call():
        return httpx.post(gateway.url + "/v1/chat/completions", timeout=20,
                          headers={"authorization": f"Bearer {api_key[1]}"},
                          json={"model": "acme-fast", "messages": [{"role": "user", "content": "hi"}]})

    assert wait_until(lambda: call().status_code == 200)
    assert call().headers["x-gateway-route"] == "acme-fast"


def test_provider_keys_are_write_only(client, tenant, django_user_model):
    client.force_login(user_in(tenant, "owner"))
    created = client.post("/api/manage/providers/", {
        "name": "acme-own", "kind": "openai", "base_url": "https://api.example.com/v1", "api_key": SECRET,
        "allow_private_network": True}, content_type="application/json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["api_key_set"] is True and "api_key" not in body and SECRET not in created.content.decode()
    assert body["tenant"] == tenant.id and body["allow_private_network"] is False  # staff's decision alone
    provider = Provider.objects.get(pk=body["id"])
    assert provider.get_api_key() == SECRET and SECRET not in provider.api_key_encrypted

    url = f"/api/manage/providers/{provider.id}/"
    assert SECRET not in client.get(url).content.decode() and SECRET not in client.get(
        "/api/manage/providers/").content.decode()
    client.patch(url, {"base_url": "https://eu.api.example.com/v1"}, content_type="application/json")
    provider.refresh_from_db()
    assert provider.get_api_key() == SECRET  # omitted: kept
    assert client.patch(url, {"api_key": ""}, content_type="application/json").json()["api_key_set"] is False

    refused = client.post("/api/manage/providers/", {"name": "inside", "kind": "openai",
                                                     "base_url": "http://127.0.0.1:8080/v1"},
                          content_type="application/json")
    assert refused.status_code == 400 and "base_url" in refused.json()


def test_members_are_added_by_owners_and_admins_with_owners_made_by_owners_only(client, tenant, other_tenant,
                                                                                django_user_model):
    owner, admin = user_in(tenant, "owner"), user_in(tenant, "admin")
    outsider = user_in(other_tenant, "member")
    client.force_login(admin)

    def add(username, role, password="A-long-pass-phrase-9"):
        return client.post("/api/manage/members/", {"username": username, "password": password, "role": role},
                           content_type="application/json")

    assert add("promoted", "owner").status_code == 403
    assert not django_user_model.objects.filter(username="promoted").exists()
    assert add(outsider.username, "member").status_code == 400  # someone from another tenant: staff's call
    assert add("weak", "member", password="123").status_code == 400
    added = add("newcomer", "member")
    assert added.status_code == 201 and "password" not in added.json() and added.json()["user"] == "newcomer"
    assert add("newcomer", "admin").status_code == 400  # already a member

    owner_row = Membership.objects.get(user=owner)
    assert client.patch(f"/api/manage/members/{owner_row.id}/", {"role": "member"},
                        content_type="application/json").status_code == 403
    assert client.delete(f"/api/manage/members/{owner_row.id}/").status_code == 403
    owner_row.refresh_from_db()
    assert owner_row.role == "owner"

    # The newcomer signs in with the first password and makes keys of their own, in this tenant.
    client.logout()
    assert client.login(username="newcomer", password="A-long-pass-phrase-9")
    assert client.get("/admin/keys/apikey/").status_code == 200
    key = client.post("/api/manage/keys/", {"name": "newcomer's"}, content_type="application/json")
    assert key.status_code == 201 and key.json()["tenant"] == tenant.id
    assert client.get("/api/manage/members/").status_code == 403  # members do not manage people


def test_owners_change_their_tenants_name_not_its_billing(client, tenant, django_user_model):
    client.force_login(user_in(tenant, "owner"))
    response = client.patch(f"/api/manage/tenants/{tenant.id}/", {
        "name": "Acme Corp", "is_active": False, "allowed_models": ["x"], "slug": "other"},
        content_type="application/json")
    assert response.status_code == 200
    tenant.refresh_from_db()
    assert (tenant.name, tenant.is_active, tenant.allowed_models, tenant.slug) == ("Acme Corp", True, [], "acme")
    assert client.post("/api/manage/tenants/", {"name": "Mine", "slug": "mine"},
                       content_type="application/json").status_code == 403
    assert client.delete(f"/api/manage/tenants/{tenant.id}/").status_code == 403
    assert client.patch(f"/api/manage/tenants/{tenant.id}/", {"time_zone": "Mars/Olympus"},
                        content_type="application/json").status_code == 400


def test_tenant_admins_set_key_limits_not_tenant_wide_ones(client, tenant, django_user_model):
    from keys import services as key_services

    key, _ = key_services.issue(tenant, "k")
    client.force_login(user_in(tenant, "admin"))
    wide = client.post("/api/manage/limits/", {"budget_usd": "1000"}, content_type="application/json")
    assert wide.status_code == 400 and "api_key" in wide.json()
    on_key = client.post("/api/manage/limits/", {"api_key": key.id, "requests_per_minute": 30},
                         content_type="application/json")
    assert on_key.status_code == 201 and on_key.json()["tenant"] == tenant.id
    assert Limit.objects.get(api_key=key).requests_per_minute == 30


def test_staff_see_and_make_shared_configuration(client, tenant, other_tenant, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", None))
    assert {t["slug"] for t in client.get("/api/manage/tenants/").json()["results"]} == {"acme", "globex"}
    shared = client.post("/api/manage/providers/", {"name": "shared", "kind": "openai",
                                                    "base_url": "https://api.example.com/v1"},
                         content_type="application/json")
    assert shared.status_code == 201 and shared.json()["tenant"] is None
    assert client.post("/api/manage/keys/", {"name": "tenantless"},
                       content_type="application/json").status_code == 400  # a key needs a tenant
    created = client.post("/api/manage/tenants/", {"name": "Initech", "slug": "initech"},
                          content_type="application/json")
    assert created.status_code == 201 and Tenant.objects.filter(slug="initech").exists()


def test_anonymous_requests_are_refused(client, tenant):
    for url in ("/api/manage/tenants/", f"/api/manage/tenants/{tenant.id}/", "/api/manage/keys/"):
        # 401 with WWW-Authenticate: the API takes HTTP basic auth as well as the admin session.
        assert client.get(url).status_code == 401


def test_the_api_is_throttled_per_user(client, tenant, django_user_model, settings):
    settings.MANAGEMENT_API_RATE = "5/m"
    client.force_login(user_in(tenant, "owner", name="throttled-owner"))
    statuses = [client.get("/api/manage/tenants/").status_code for _ in range(8)]
    assert statuses[0] == 200 and 429 in statuses
    assert statuses.count(200) <= 10  # fixed one-minute windows: at most two windows' worth
    refused = client.get("/api/manage/tenants/")
    assert refused.status_code == 429 and int(refused["retry-after"]) > 0


@pytest.mark.django_db
def test_the_schema_documents_the_management_api(client):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    for resource in ("tenants", "members", "keys", "providers", "deployments", "routes", "limits", "audit"):
        assert f"/api/manage/{resource}/" in schema["paths"]
        assert f"/api/manage/{resource}/{{id}}/" in schema["paths"]
    assert "/api/manage/keys/{id}/rotate/" in schema["paths"]
    components = schema["components"]["schemas"]
    assert components["Provider"]["properties"]["api_key"]["writeOnly"] is True
    assert components["NewApiKey"]["properties"]["secret"]["readOnly"] is True
    assert "secret" not in components["ApiKey"]["properties"]
    assert components["Member"]["properties"]["password"]["writeOnly"] is True


def test_passwords_cannot_be_guessed_through_the_api_faster_than_at_the_login_page(client, tenant,
                                                                                   django_user_model):
    import base64

    user = user_in(tenant, "admin")
    user.set_password("the-Right-password-31")
    user.save()

    def attempt(password: str, address: str = "10.9.8.7") -> int:
        token = base64.b64encode(f"{user.username}:{password}".encode()).decode()
        return client.get("/api/manage/keys/", HTTP_AUTHORIZATION=f"Basic {token}", REMOTE_ADDR=address).status_code

    statuses = [attempt(f"guess{i}") for i in range(22)]
    first_refusal = statuses.index(429)
    # ADMIN_LOGIN_RATE, 10 a minute; a burst straddling two fixed windows may get 20 through, never more.
    assert 10 <= first_refusal <= 20 and set(statuses[:first_refusal]) == {401}
    assert attempt("the-Right-password-31") == 429  # that address waits, as at the login page
    assert attempt("the-Right-password-31", address="10.9.8.8") == 200
    assert client.post("/admin/login/", {"username": user.username, "password": "guess"},
                       REMOTE_ADDR="10.9.8.7").status_code == 429  # one allowance for both doors
