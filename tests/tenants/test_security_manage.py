"""Issue 16, the management API and the admin: members only narrow their own keys
(finding 6), basic-auth writes from another site's page are refused (8), create
answers tell nothing of other tenants' names (9), secrets are not cached (12a).

Nothing here needs a gateway process: plain `db` tests, rolled back after each.
"""

import base64
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from keys import services as key_services
from keys.models import ApiKey
from providers.models import Deployment, Provider
from routing.models import Route
from tenants.models import Membership
from tests.conftest import user_in
from usage.models import Limit

SECRET = re.compile(r"sk-gw-[0-9A-Za-z]{46}")
KEYS = "/api/manage/keys/"
LATER = datetime(2099, 1, 1, tzinfo=UTC)
PASSWORD = "A-long-enough-passphrase-42"


@pytest.fixture()
def member(client, tenant, django_user_model):
    user = user_in(tenant, "member")
    client.force_login(user)
    return user


@pytest.fixture()
def capped(tenant, member):
    """The member's key as an admin capped it: one model, an expiry in 30 days, 5 requests a minute."""
    key, _ = key_services.issue(tenant, "capped", models_allowed=["gpt-test"], created_by=member,
                          expires_at=datetime.now(UTC).replace(microsecond=0) + timedelta(days=30))
    Limit.objects.create(tenant=tenant, api_key=key, requests_per_minute=5)
    return key


def patch(client, key: ApiKey, body: dict):
    return client.patch(f"{KEYS}{key.id}/", body, content_type="application/json")


def caps_of(key: ApiKey) -> tuple:
    key.refresh_from_db()
    return key.allowed_models, key.expires_at, sorted(Limit.objects.filter(api_key=key).values_list(
        "requests_per_minute", flat=True))


# --- Finding 6: members only narrow their own keys ------------------------------------------


def test_member_cannot_widen_allowed_models_of_own_key(client, capped):
    before = caps_of(capped)
    for widened in ([], ["gpt-test", "gpt-big"], ["gpt-big"]):
        response = patch(client, capped, {"allowed_models": widened})
        assert response.status_code == 400, widened
        assert "only remove models" in response.json()["allowed_models"][0]
    assert caps_of(capped) == before


def test_member_narrows_allowed_models_of_own_key(client, tenant, member):
    key, _ = key_services.issue(tenant, "two", models_allowed=["a", "b"], created_by=member)
    assert patch(client, key, {"allowed_models": ["a"]}).status_code == 200
    assert caps_of(key)[0] == ["a"]
    uncapped, _ = key_services.issue(tenant, "all", created_by=member)  # every model: any list narrows it
    assert patch(client, uncapped, {"allowed_models": ["b"]}).status_code == 200


def test_member_cannot_move_expiry_later_or_remove_it(client, capped):
    before = caps_of(capped)
    for later in (LATER.isoformat(), None):
        response = patch(client, capped, {"expires_at": later})
        assert response.status_code == 400, later
        assert "earlier" in response.json()["expires_at"][0]
    assert caps_of(capped) == before
    sooner = capped.expires_at - timedelta(days=1)
    assert patch(client, capped, {"expires_at": sooner.isoformat()}).status_code == 200
    assert caps_of(capped)[1] == sooner


def test_member_cannot_change_limits_tenant_or_owner_of_own_key(client, capped, other_tenant, django_user_model):
    limit = Limit.objects.get(api_key=capped)
    assert client.patch(f"/api/manage/limits/{limit.id}/", {"requests_per_minute": 100000},
                        content_type="application/json").status_code == 403
    assert client.delete(f"/api/manage/limits/{limit.id}/").status_code == 403
    assert client.post("/api/manage/limits/", {"tenant": capped.tenant_id, "api_key": capped.id,
                                               "requests_per_minute": 100000},
                       content_type="application/json").status_code == 403
    patch(client, capped, {"tenant": other_tenant.id, "created_by": "someone-else"})
    capped.refresh_from_db()
    assert capped.tenant_id != other_tenant.id and capped.created_by.username == "acme-member"
    assert caps_of(capped)[2] == [5]


def test_members_new_key_inherits_the_caps_of_their_keys(client, capped):
    created = client.post(KEYS, {"name": "fresh"}, content_type="application/json")
    assert created.status_code == 201, created.content
    fresh = ApiKey.objects.get(pk=created.json()["id"])
    assert caps_of(fresh) == (["gpt-test"], capped.expires_at, [5])

    for wider, field in (({"allowed_models": ["gpt-big"]}, "allowed_models"),
                         ({"expires_at": LATER.isoformat()}, "expires_at")):
        response = client.post(KEYS, {"name": "wider", **wider}, content_type="application/json")
        assert response.status_code == 400 and field in response.json(), wider
    assert not ApiKey.objects.filter(name="wider").exists()


def test_revoking_a_capped_key_does_not_shed_its_caps(client, capped):
    assert client.post(f"{KEYS}{capped.id}/revoke/").status_code == 200
    created = client.post(KEYS, {"name": "after revoking"}, content_type="application/json")
    assert created.status_code == 201
    assert caps_of(ApiKey.objects.get(pk=created.json()["id"])) == (["gpt-test"], capped.expires_at, [5])


def test_members_first_key_is_free_and_admins_still_widen(client, tenant, member, django_user_model, capped):
    admin = Client()
    admin.force_login(user_in(tenant, "admin"))
    body = {"allowed_models": [], "expires_at": None}
    assert admin.patch(f"{KEYS}{capped.id}/", body, content_type="application/json").status_code == 200
    assert caps_of(capped)[:2] == ([], None)
    other = Client()
    other.force_login(user_in(tenant, "member", name="newcomer"))
    created = other.post(KEYS, {"name": "first"}, content_type="application/json")
    assert created.status_code == 201 and created.json()["allowed_models"] == []


def test_rotation_copies_caps_and_a_rotated_key_is_not_rotated_again(client, capped):
    response = client.post(f"{KEYS}{capped.id}/rotate/", {"grace_seconds": 600}, content_type="application/json")
    assert response.status_code == 201
    new = ApiKey.objects.get(pk=response.json()["id"])
    assert caps_of(new) == (["gpt-test"], capped.expires_at, [5])
    # An admin narrows the replacement; the old key, in its grace period, must not be a way back.
    again = client.post(f"{KEYS}{capped.id}/rotate/", {"grace_seconds": 0}, content_type="application/json")
    assert again.status_code == 400 and "rotated already" in again.json()["detail"]
    assert ApiKey.objects.filter(name="capped").count() == 2


def admin_form(key: ApiKey, **changes) -> dict:
    key.refresh_from_db()
    expires = changes.pop("expires_at", key.expires_at)
    return {"name": key.name, "allowed_models": json.dumps(changes.pop("allowed_models", key.allowed_models)),
            "default_model": key.default_model,
            "expires_at_0": expires.strftime("%Y-%m-%d") if expires else "",
            "expires_at_1": expires.strftime("%H:%M:%S") if expires else "",
            "limits-TOTAL_FORMS": "0", "limits-INITIAL_FORMS": "0", **changes}


def test_member_cannot_widen_own_key_in_the_admin(client, capped):
    url = f"/admin/keys/apikey/{capped.id}/change/"
    before = caps_of(capped)
    for changes in ({"allowed_models": []}, {"allowed_models": ["gpt-test", "gpt-big"]}, {"expires_at": LATER},
                    {"expires_at": None}):
        response = client.post(url, admin_form(capped, **changes))
        assert response.status_code == 200, changes  # the form again, with the reason
        assert "may only" in response.content.decode()
    assert caps_of(capped) == before
    # The key's limits are shown, not editable: a forged inline row changes nothing.
    limit = Limit.objects.get(api_key=capped)
    forged = {**admin_form(capped), "limits-TOTAL_FORMS": "1", "limits-INITIAL_FORMS": "1",
              "limits-0-id": str(limit.id), "limits-0-api_key": str(capped.id), "limits-0-requests_per_minute": "9999",
              "limits-0-period": "month", "limits-0-alert_thresholds": "[]"}
    client.post(url, forged)
    assert caps_of(capped) == before
    sooner = capped.expires_at - timedelta(days=2)
    assert client.post(url, admin_form(capped, expires_at=sooner)).status_code == 302
    assert caps_of(capped)[1] == sooner


def test_members_new_key_in_the_admin_inherits_caps(client, tenant, capped):
    page = client.post("/admin/keys/apikey/add/", {
        **admin_form(capped, allowed_models=[], expires_at=None), "name": "from the admin", "tenant": tenant.id})
    assert page.status_code == 200 and SECRET.search(page.content.decode())
    fresh = ApiKey.objects.get(name="from the admin")
    assert caps_of(fresh) == (["gpt-test"], capped.expires_at, [5])
    wider = client.post("/admin/keys/apikey/add/", {
        **admin_form(capped, allowed_models=["gpt-big"]), "name": "wider", "tenant": tenant.id})
    assert wider.status_code == 200 and "may not allow gpt-big" in wider.content.decode()
    assert not ApiKey.objects.filter(name="wider").exists()


# --- Finding 8: basic-auth writes from another site's page ------------------------------------


@pytest.fixture()
def basic(tenant, django_user_model):
    user_in(tenant, "admin", name="scripted", password=PASSWORD)
    token = base64.b64encode(f"scripted:{PASSWORD}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


@pytest.mark.parametrize("headers", [
    {"HTTP_ORIGIN": "http://evil.example"},
    {"HTTP_ORIGIN": "null"},  # a sandboxed frame or a data: page
    {"HTTP_ORIGIN": "http://testserver.evil.example"},
    {"HTTP_SEC_FETCH_SITE": "cross-site"},
    {"HTTP_SEC_FETCH_SITE": "same-site"},
], ids=["origin", "null-origin", "lookalike-origin", "sec-fetch-cross-site", "sec-fetch-same-site"])
def test_cross_site_form_post_with_basic_auth_is_refused(db, basic, headers):
    response = Client().post(KEYS, {"name": "planted"}, **basic, **headers)  # a form post, url-encoded
    assert response.status_code == 403
    assert "Cross-site request refused" in response.json()["detail"]
    assert not ApiKey.objects.filter(name="planted").exists()


def test_https_referer_from_another_site_is_refused(db, basic, settings):
    settings.SECURE_SSL_REDIRECT = False
    response = Client().post(KEYS, {"name": "planted"}, secure=True, HTTP_REFERER="https://evil.example/page",
                             **basic)
    assert response.status_code == 403 and not ApiKey.objects.filter(name="planted").exists()


@pytest.mark.parametrize("headers", [
    {},  # curl, httpx, the SDKs: no browser headers
    {"HTTP_ORIGIN": "http://testserver", "HTTP_SEC_FETCH_SITE": "same-origin"},  # the browsable API
    {"HTTP_ORIGIN": "https://console.example.com"},  # in CSRF_TRUSTED_ORIGINS
    {"HTTP_ORIGIN": "https://ops.tools.example.com"},  # a wildcard there
    {"HTTP_SEC_FETCH_SITE": "none"},  # typed by the user
], ids=["script", "same-origin", "trusted", "trusted-wildcard", "sec-fetch-none"])
def test_basic_auth_writes_from_scripts_and_trusted_pages_pass(db, basic, settings, headers):
    settings.CSRF_TRUSTED_ORIGINS = ["https://console.example.com", "https://*.tools.example.com"]
    response = Client().post(KEYS, {"name": "scripted"}, content_type="application/json", **basic, **headers)
    assert response.status_code == 201, response.content
    assert Client().get(KEYS, HTTP_ORIGIN="http://evil.example", **basic).status_code == 200  # reads are not writes


def test_session_writes_keep_djangos_csrf_check(tenant, member):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(member)
    response = browser.post(KEYS, {"name": "no token"}, content_type="application/json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


# --- Finding 9: create answers tell nothing of other tenants' names ---------------------------


@pytest.fixture()
def tenant_admin(client, tenant, other_tenant, django_user_model):
    user = user_in(tenant, "admin")
    user_in(other_tenant, "member", name="their-person")
    client.force_login(user)
    return user


def answer(response) -> tuple:
    return response.status_code, response.json()


def test_adding_a_member_answers_alike_for_a_free_name_and_another_tenants(client, tenant, tenant_admin):
    def add(username: str, **body):
        return answer(client.post("/api/manage/members/", {"tenant": tenant.id, "username": username, **body},
                                  content_type="application/json"))

    assert add("their-person") == add("nobody-has-this") == (
        400, {"password": ["A new user needs a first password."]})
    assert add("their-person", password="short") == add("nobody-has-this", password="short")
    taken = add("their-person", password=PASSWORD)
    assert taken == (400, {"username": ["That username is not available; pick another."]})
    assert not Membership.objects.filter(tenant=tenant, user__username="their-person").exists()


def provider_body(name: str, **body) -> dict:
    return {"name": name, "kind": "openai", "base_url": "https://api.example.com/v1", **body}


def test_provider_names_are_per_tenant(client, tenant, other_tenant, tenant_admin):
    Provider.objects.create(name="theirs", kind="openai", base_url="https://api.example.com/v1", tenant=other_tenant)
    Provider.objects.create(name="shared-one", kind="openai", base_url="https://api.example.com/v1")
    for name in ("theirs", "shared-one"):
        created = client.post("/api/manage/providers/", provider_body(name), content_type="application/json")
        assert created.status_code == 201, created.content
    again = client.post("/api/manage/providers/", provider_body("theirs"), content_type="application/json")
    assert answer(again) == (400, {"name": ["This tenant has a provider of that name already."]})
    # Asking for a shared provider: refused alike whether the name is a shared one's or free.
    shared = [answer(client.post("/api/manage/providers/", provider_body(name, tenant=None),
                                 content_type="application/json")) for name in ("shared-one", "free-name")]
    assert shared[0] == shared[1] and shared[0][0] == 400
    mine = Provider.objects.get(name="theirs", tenant=tenant)
    renamed = client.patch(f"/api/manage/providers/{mine.id}/", {"name": "shared-one"},
                           content_type="application/json")
    assert answer(renamed) == (400, {"name": ["This tenant has a provider of that name already."]})


def test_route_names_and_references_answer_alike(client, tenant, other_tenant, tenant_admin):
    Route.objects.create(name="theirs", tenant=other_tenant)
    Route.objects.create(name="shared-route")
    for name in ("theirs", "shared-route"):
        created = client.post("/api/manage/routes/", {"name": name}, content_type="application/json")
        assert created.status_code == 201, created.content
    shared = [answer(client.post("/api/manage/routes/", {"name": name, "tenant": None},
                                 content_type="application/json")) for name in ("shared-route", "free-route")]
    assert shared[0] == shared[1] and shared[0][0] == 400


def test_ids_of_other_tenants_rows_answer_as_missing_ones(client, tenant, other_tenant, tenant_admin):
    provider = Provider.objects.create(name="p", kind="openai", base_url="https://api.example.com/v1",
                                       tenant=other_tenant)
    route = Route.objects.create(name="r", tenant=other_tenant)
    missing = 10**6
    asks = [  # (resource, field, another tenant's id)
        ("deployments", {"public_model": "m", "upstream_model": "m"}, "provider", provider.id),
        ("routes", {"name": "x"}, "context_fallback", route.id),
        ("keys", {"name": "k"}, "tenant", other_tenant.id),
    ]
    for resource, body, field, theirs in asks:
        def ask(row_id, resource=resource, body=body, field=field):
            status, error = answer(client.post(f"/api/manage/{resource}/", {**body, field: row_id},
                                               content_type="application/json"))
            return status, json.dumps(error).replace(str(row_id), "N")

        assert ask(theirs) == ask(missing), resource
        assert ask(theirs)[0] == 400
    assert not Deployment.objects.filter(public_model="m").exists()


def test_owner_cannot_take_another_tenants_slug(client, tenant, other_tenant, django_user_model):
    client.force_login(user_in(tenant, "owner"))
    response = client.patch(f"/api/manage/tenants/{tenant.id}/", {"slug": "globex"}, content_type="application/json")
    assert response.status_code == 200 and response.json()["slug"] == "acme"


# --- Finding 12a: secrets are not kept by caches ----------------------------------------------


def no_store(response) -> bool:
    return "no-store" in response.get("Cache-Control", "") and response.get("Pragma") == "no-cache"


def test_responses_carrying_a_key_secret_are_not_cached(client, tenant, member):
    created = client.post(KEYS, {"name": "cached?"}, content_type="application/json")
    assert created.status_code == 201 and "secret" in created.json() and no_store(created)
    rotated = client.post(f"{KEYS}{created.json()['id']}/rotate/", {"grace_seconds": 0},
                          content_type="application/json")
    assert rotated.status_code == 201 and "secret" in rotated.json() and no_store(rotated)

    page = client.post("/admin/keys/apikey/add/", {"tenant": tenant.id, "name": "admin-made", "allowed_models": "[]",
                                                   "expires_at_0": "", "expires_at_1": "",
                                                   "limits-TOTAL_FORMS": "0", "limits-INITIAL_FORMS": "0"})
    assert SECRET.search(page.content.decode()) and no_store(page)
    key = ApiKey.objects.get(name="admin-made")
    page = client.post(f"/admin/keys/apikey/{key.id}/rotate/", {"grace": "0"})
    assert SECRET.search(page.content.decode()) and no_store(page)
