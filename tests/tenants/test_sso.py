"""Single sign-on for the admin, against a real OpenID Connect provider (docs/sso.md).

The provider is a second Django process running django-oauth-toolkit with OIDC on
(tests/tenants/oidc_provider/), RS256-signed ID tokens, on a loopback port; the gateway
runs under `manage.py serve` configured for it; Debian's Chromium, headless, signs people
in through the provider's own login page. Screenshots go beside the admin's (tests/screenshots/).
"""

import json
import re
import secrets
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth import get_user_model
from django.test import override_settings
from playwright.sync_api import expect, sync_playwright

from tenants.models import AuditLog, Membership, SsoIdentity, Tenant
from tests.conftest import Server, free_port, start_gateway
from tests.gateway_project.test_admin_browser import CHROMIUM, SHOTS

CLIENT_ID = "llm-gateway"
IDP_PASSWORD = "idp-pass-phrase-4"  # nosec B105: a test user's password at the test provider
ROLE_MAP = "acme-admins=acme:admin,globex-readers=globex:member,platform-team=superuser"
USERS = [
    {"username": "alice", "password": IDP_PASSWORD, "email": "alice@example.com",
     "groups": ["acme-admins", "unrelated-group"]},
    {"username": "bob", "password": IDP_PASSWORD, "email": "bob@example.com"},  # no groups: no claim
    {"username": "carol", "password": IDP_PASSWORD, "email": "carol@example.com", "groups": ["wiki-editors"]},
    {"username": "root", "password": IDP_PASSWORD, "email": "root@example.com", "groups": ["platform-team"]},
    # Accounts that exist in the gateway before their first sign-in (tests of OIDC_LINK_BY_EMAIL):
    {"username": "dave", "password": IDP_PASSWORD, "email": "dave@example.com", "groups": ["acme-admins"]},
    {"username": "frank", "password": IDP_PASSWORD, "email": "frank@example.com", "groups": ["acme-admins"],
     "email_verified": False},
    {"username": "grace", "password": IDP_PASSWORD, "email": "grace@example.com", "groups": ["acme-admins"]},
    {"username": "ivy", "password": IDP_PASSWORD, "email": "ivy@example.com", "groups": ["acme-admins"]},
]


def rsa_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def idp(gateway_env, tmp_path_factory):
    """The provider, and a gateway whose admin signs in with it (the gateway's port is chosen
    first: the provider registers the gateway's exact callback address)."""
    gateway_port = free_port()
    secret = secrets.token_urlsafe(24)
    provider_port = free_port()
    issuer = f"http://127.0.0.1:{provider_port}/o"
    config = {"client_id": CLIENT_ID, "client_secret": secret, "users": USERS,
              "redirect_uri": f"http://127.0.0.1:{gateway_port}/admin/sso/callback/"}
    provider = Server(["-m", "tests.tenants.oidc_provider", "--port", "{port}", "--config", json.dumps(config)],
                      env={"OIDC_PROVIDER_DIR": str(tmp_path_factory.mktemp("idp")), "OIDC_PROVIDER_ISSUER": issuer,
                           "OIDC_RSA_PRIVATE_KEY": rsa_key_pem(), "OIDC_PROVIDER_SECRET_KEY": secrets.token_urlsafe(32)},
                      ready_path="/o/.well-known/openid-configuration", port=provider_port)
    discovery = httpx.get(provider.url + "/o/.well-known/openid-configuration").json()
    assert discovery["issuer"] == issuer and "RS256" in discovery["id_token_signing_alg_values_supported"]
    gateway = start_gateway({
        **gateway_env, "OIDC_RP_CLIENT_ID": CLIENT_ID, "OIDC_RP_CLIENT_SECRET": secret, "OIDC_OP_ISSUER": issuer,
        "OIDC_OP_AUTHORIZATION_ENDPOINT": discovery["authorization_endpoint"],
        "OIDC_OP_TOKEN_ENDPOINT": discovery["token_endpoint"], "OIDC_OP_USER_ENDPOINT": discovery["userinfo_endpoint"],
        "OIDC_OP_JWKS_ENDPOINT": discovery["jwks_uri"], "OIDC_PROVIDER_NAME": "Test IdP", "OIDC_ROLE_MAP": ROLE_MAP,
        "OIDC_LINK_BY_EMAIL": "true",
    }, port=gateway_port)
    yield provider, gateway
    gateway.stop()
    provider.stop()


@pytest.fixture()
def browser(idp, monkeypatch):
    # Playwright's sync API leaves its loop marked running in this thread; the ORM calls here are
    # plain synchronous test code (see test_admin_browser.py). Set after the servers started.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


def new_page(browser, gateway):
    context = browser.new_context(base_url=gateway.url, viewport={"width": 1400, "height": 1000})
    return context.new_page()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sso_sign_in(page, username: str):
    """From the gateway's sign-in page through the provider's login form and back."""
    page.goto("/admin/login/?next=/admin/")
    page.click("#sso-sign-in")
    expect(page.locator("#idp-login")).to_be_visible()  # the provider's own page, on its own port
    assert page.url.startswith("http://127.0.0.1:") and "/accounts/login/" in page.url
    page.fill("#idp-username", username)
    page.fill("#idp-password", IDP_PASSWORD)
    with page.expect_navigation(url=re.compile(r"/admin/(\?.*)?$|/admin/sso/callback/")) as navigation:
        page.click("#idp-submit")
    return navigation.value


def test_sign_in_through_the_provider_gives_the_claims_role_in_the_right_tenant(browser, idp, tenant, other_tenant):
    provider, gateway = idp
    Membership.objects.create(tenant=other_tenant, user=get_user_model().objects.create_user("globex-owner",
                              is_staff=True), role="owner")
    page = new_page(browser, gateway)
    page.goto("/admin/login/")
    expect(page.locator("#sso-sign-in")).to_have_text("Sign in with Test IdP")
    expect(page.locator("#id_password")).to_be_visible()  # passwords still work beside it (the default)
    shot(page, "sso-01-login-page")

    page.click("#sso-sign-in")
    expect(page.locator("#idp-login")).to_be_visible()
    assert page.url.startswith(provider.url + "/accounts/login/")
    shot(page, "sso-02-provider-login")
    page.fill("#idp-username", "alice")
    page.fill("#idp-password", IDP_PASSWORD)
    page.click("#idp-submit")
    expect(page.locator("#dashboard")).to_be_visible()
    assert page.url.startswith(gateway.url + "/admin/")
    expect(page.locator("#user-tools")).to_contain_text("alice")
    shot(page, "sso-03-dashboard")

    # Created on first sign-in, with no password, found again by issuer and subject.
    alice = get_user_model().objects.get(username="alice")
    assert alice.email == "alice@example.com" and alice.is_staff and not alice.is_superuser
    assert not alice.has_usable_password()
    identity = SsoIdentity.objects.get(user=alice)
    assert identity.issuer == provider.url + "/o" and identity.last_login_at is not None
    # acme-admins maps to admin of Acme; the unmapped group grants nothing.
    assert list(Membership.objects.filter(user=alice).values_list("tenant__slug", "role")) == [("acme", "admin")]

    # The role reaches Acme's admin, and only Acme's: its members page, not Globex's.
    page.goto("/admin/tenants/membership/")
    members = page.locator("#result_list")
    expect(members).to_contain_text("alice")
    expect(members).not_to_contain_text("globex-owner")
    page.goto("/admin/tenants/tenant/")
    expect(page.locator("#result_list")).to_contain_text("Acme")
    expect(page.locator("#result_list")).not_to_contain_text("Globex")
    assert page.goto(f"/admin/tenants/tenant/{other_tenant.id}/change/").status == 404
    page.goto("/admin/keys/apikey/add/")
    expect(page.locator("#id_tenant option", has_text="Acme")).to_have_count(1)
    expect(page.locator("#id_tenant option", has_text="Globex")).to_have_count(0)
    shot(page, "sso-04-tenant-admin")

    # The audit log: the SSO sign-in with what the claim gave, and the membership it created.
    login = AuditLog.objects.get(action="login.sso", actor=alice)
    assert login.tenant_id == tenant.id and login.address == "127.0.0.1"
    assert login.changes == {"issuer": provider.url + "/o", "subject": identity.subject, "superuser": False,
                             "roles": {"acme": "admin"}}
    created = AuditLog.objects.get(action="create", object_type="tenants.Membership", tenant=tenant)
    assert created.actor_label == f"sso: {provider.url}/o" and created.changes["role"] == [None, "admin"]
    page.goto("/admin/tenants/auditlog/")
    expect(page.locator("#result_list")).to_contain_text("login.sso")
    shot(page, "sso-05-audit-log")

    # Signing in again finds the same user (no second account) and writes a second entry.
    page.context.clear_cookies()
    sso_sign_in(page, "alice")
    expect(page.locator("#dashboard")).to_be_visible()
    assert get_user_model().objects.filter(email="alice@example.com").count() == 1
    assert AuditLog.objects.filter(action="login.sso", actor=alice).count() == 2

    # Staff deactivate her: her session ends, and the provider's word no longer signs her in.
    get_user_model().objects.filter(pk=alice.pk).update(is_active=False)
    assert page.goto("/admin/").url.startswith(gateway.url + "/admin/login/")
    page.context.clear_cookies()
    assert sso_sign_in(page, "alice").status == 403
    expect(page.locator("#sso-refused-reason")).to_have_text("Your account in this gateway is deactivated.")
    assert Membership.objects.filter(user=alice).exists()  # refused before anything changed
    assert AuditLog.objects.get(action="login.refused").actor_label == "sso: alice"
    page.context.close()


def test_a_group_mapped_to_superuser_makes_platform_staff_who_see_every_tenant(browser, idp, tenant, other_tenant):
    _, gateway = idp
    local = get_user_model().objects.create_user("root", password=IDP_PASSWORD)  # a local account of that name
    page = new_page(browser, gateway)
    sso_sign_in(page, "root")
    expect(page.locator("#dashboard")).to_be_visible()
    page.goto("/admin/tenants/tenant/")
    expect(page.locator("#result_list")).to_contain_text("Acme")
    expect(page.locator("#result_list")).to_contain_text("Globex")
    # The provider's "root" is a new user beside the local one, never signed in as it.
    user = SsoIdentity.objects.get().user
    assert user.username == "root-2" and user.is_superuser and user.is_staff
    local.refresh_from_db()
    assert not local.is_superuser and local.check_password(IDP_PASSWORD)
    assert AuditLog.objects.get(action="login.sso").changes["superuser"] is True
    page.context.close()


def test_a_member_declared_by_e_mail_is_the_same_account_at_their_first_sign_in(browser, idp, tenant, tmp_path):
    """OIDC_LINK_BY_EMAIL on: the configuration file's member (its address in another case) is
    joined, not doubled; an unverified address or a superuser's is never joined."""
    from io import StringIO

    from django.core.management import call_command

    provider, gateway = idp
    config = tmp_path / "gateway.yaml"
    config.write_text("version: 1\ntenants:\n  - slug: acme\n    name: Acme\n"
                      "    members:\n      - {email: Dave@Example.com, role: member}\n")
    call_command("apply_config", str(config), stdout=StringIO())
    declared = get_user_model().objects.get(username="Dave@Example.com")
    assert declared.email == "Dave@example.com"  # Django lower-cases the domain only
    page = new_page(browser, gateway)
    sso_sign_in(page, "dave")
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator("#user-tools")).to_contain_text("Dave@Example.com")  # the declared account
    assert list(get_user_model().objects.filter(email__iexact="dave@example.com")) == [declared]
    identity = SsoIdentity.objects.get()
    assert identity.user == declared and identity.issuer == provider.url + "/o"
    # The claim decides its roles from now on (acme-admins: admin), as for every SSO user.
    assert Membership.objects.get(user=declared).role == "admin"
    joined = AuditLog.objects.get(action="sso.link")
    assert joined.object_id == str(declared.pk) and joined.actor_label == f"sso: {provider.url}/o"
    assert joined.changes["email"] == "dave@example.com"
    assert AuditLog.objects.get(action="login.sso", actor=declared).changes["joined"] == "Dave@Example.com"
    page.context.clear_cookies()
    sso_sign_in(page, "dave")  # found by issuer and subject now: still one account
    expect(page.locator("#dashboard")).to_be_visible()
    assert get_user_model().objects.filter(email__iexact="dave@example.com").count() == 1
    assert AuditLog.objects.filter(action="sso.link").count() == 1
    page.context.close()

    # An address the provider does not vouch for, and a superuser's, never join an account.
    for username, local, why in [("frank", {"is_staff": True}, "does not say the e-mail address is verified"),
                                 ("grace", {"is_staff": True, "is_superuser": True}, "is a superuser")]:
        account = get_user_model().objects.create_user(f"{username}.local", f"{username}@example.com",
                                                       IDP_PASSWORD, **local)
        page = new_page(browser, gateway)
        sso_sign_in(page, username)
        expect(page.locator("#dashboard")).to_be_visible()
        expect(page.locator("#user-tools")).not_to_contain_text(f"{username}.local")
        signed_in = get_user_model().objects.get(username=username)
        assert signed_in != account and signed_in.sso_identity and not signed_in.is_superuser
        assert not SsoIdentity.objects.filter(user=account).exists()
        assert why in AuditLog.objects.get(action="login.sso", actor=signed_in).changes["not_joined"]
        account.refresh_from_db()
        assert account.check_password(IDP_PASSWORD) and account.is_superuser == local.get("is_superuser", False)
        page.context.close()
    assert AuditLog.objects.filter(action="sso.link").count() == 1


def test_a_deactivated_account_with_the_address_refuses_the_sign_in_rather_than_making_another(
        browser, idp, tenant):
    _, gateway = idp
    account = get_user_model().objects.create_user("ivy.local", "ivy@example.com", is_staff=True, is_active=False)
    page = new_page(browser, gateway)
    assert sso_sign_in(page, "ivy").status == 403
    expect(page.locator("#sso-refused-reason")).to_have_text("Your account in this gateway is deactivated.")
    assert list(get_user_model().objects.filter(email__iexact="ivy@example.com")) == [account]
    assert not SsoIdentity.objects.exists() and not AuditLog.objects.filter(action="sso.link").exists()
    assert AuditLog.objects.get(action="login.refused").changes["reason"] == "Your account in this gateway is deactivated."
    page.context.close()


@pytest.mark.parametrize("username, claim", [("bob", []), ("carol", ["wiki-editors"])])
def test_a_user_without_a_mapped_role_claim_is_refused_with_a_page_that_says_why(
        browser, idp, tenant, username, claim):
    _, gateway = idp
    page = new_page(browser, gateway)
    response = sso_sign_in(page, username)
    assert response.status == 403
    expect(page.locator("#sso-refused h1")).to_have_text("Sign-in refused")
    reason = page.locator("#sso-refused-reason")
    expect(reason).to_contain_text("Your account at Test IdP has no role in this gateway")
    expect(reason).to_contain_text("\u201cgroups\u201d claim")
    expect(page.locator("#sso-try-again")).to_have_attribute("href", "/admin/login/")
    shot(page, f"sso-06-refused-{username}")
    # Nobody was signed in or created.
    assert page.goto("/admin/").url.startswith(gateway.url + "/admin/login/")
    assert not get_user_model().objects.filter(username=username).exists()
    refusal = AuditLog.objects.get(action="login.refused")
    assert refusal.actor is None and refusal.actor_label == f"sso: {username}"
    assert refusal.changes["groups"] == claim and "no role in this gateway" in refusal.changes["reason"]
    assert not AuditLog.objects.filter(action__in=["login", "login.sso", "login.failed"]).exists()
    page.context.close()


def test_a_callback_that_was_not_started_here_is_refused_and_audited(idp, transactional_db):
    _, gateway = idp
    answer = httpx.get(gateway.url + "/admin/sso/callback/?code=stolen&state=forged")
    assert answer.status_code == 403
    assert "started in another browser session or has expired" in answer.text
    answer = httpx.get(gateway.url + "/admin/sso/callback/?error=access_denied&error_description=user+cancelled")
    assert answer.status_code == 403 and "Test IdP did not sign you in: access_denied (user cancelled)" in answer.text
    assert AuditLog.objects.filter(action="login.refused").count() == 2


# --- The rules behind it, in process ------------------------------------------------------


def test_the_claim_gives_each_tenant_its_highest_mapped_role_and_nothing_for_unknown_tenants(tenant, other_tenant):
    from tenants import sso

    Tenant.objects.create(name="Dormant", slug="dormant", is_active=False)
    with override_settings(OIDC_ROLE_MAP={"a": "acme:member", "b": "acme:owner", "c": "globex:admin",
                                          "d": "nowhere:admin", "e": "dormant:owner", "root": "superuser"}):
        grants = sso.grants_for({"groups": ["a", "b", "d", "e", "zzz"]})
        assert grants.roles == {tenant.id: "owner"} and not grants.superuser
        assert sso.grants_for({"groups": "root"}).superuser
        assert not sso.grants_for({"groups": {"c": True}}).anything  # not a list of names: no values
        assert not sso.grants_for({}).anything


@pytest.mark.parametrize("target", ["acme", "acme:boss", ":admin", "superusers"])
def test_a_malformed_role_map_stops_the_process(target):
    from django.core.exceptions import ImproperlyConfigured

    from tenants import sso

    with override_settings(OIDC_ROLE_MAP={"group": target}), pytest.raises(ImproperlyConfigured, match="group="):
        sso.role_map()


def test_roles_follow_the_claim_and_an_identity_that_lost_every_role_loses_its_memberships(tenant, other_tenant):
    from tenants import sso

    user = get_user_model().objects.create_user("dave", is_staff=True)
    Membership.objects.create(tenant=tenant, user=user, role="owner")
    sso.roles_apply(user, sso.Grants(roles={other_tenant.id: "member"}))
    assert list(Membership.objects.filter(user=user).values_list("tenant__slug", "role")) == [("globex", "member")]
    sso.roles_apply(user, sso.Grants())
    user.refresh_from_db()
    assert not Membership.objects.filter(user=user).exists() and not user.is_staff


def test_which_existing_account_a_first_sign_in_joins(tenant):
    from tenants import sso

    users = get_user_model().objects
    member = users.create_user("ann@example.com", "Ann@Example.com", is_staff=True)
    verified = {"sub": "1", "email": "ann@example.com", "email_verified": True}
    assert sso.account_to_join(verified) == (None, "joining accounts by e-mail address is off (OIDC_LINK_BY_EMAIL)")
    with override_settings(OIDC_LINK_BY_EMAIL=True):
        assert sso.account_to_join(verified) == (member, "")
        assert sso.account_to_join({**verified, "email_verified": "true"}) == (member, "")  # Cognito's string
        assert sso.account_to_join({**verified, "email": "nobody@example.com"}) == (None, "")
        for unverified in [{"email_verified": False}, {"email_verified": "false"}, {"email_verified": None}]:
            assert "verified" in sso.account_to_join({**verified, **unverified})[1]
        root = users.create_user("root", "root@example.com", is_staff=True, is_superuser=True)
        assert "superuser" in sso.account_to_join({**verified, "email": "root@example.com"})[1]
        with override_settings(OIDC_LINK_SUPERUSERS=True):
            assert sso.account_to_join({**verified, "email": "root@example.com"}) == (root, "")
        SsoIdentity.objects.create(user=member, issuer="https://idp.example", subject="someone-else")
        assert "another identity" in sso.account_to_join(verified)[1]
        users.create_user("bea", "bea@example.com")
        users.create_user("bea2", "BEA@example.com")
        assert "more than one" in sso.account_to_join({**verified, "email": "bea@example.com"})[1]


def _token(key_pem: str, **claims) -> str:
    now = int(time.time())
    body = {"iss": "https://idp.example", "aud": CLIENT_ID, "sub": "42", "iat": now, "exp": now + 60, **claims}
    return jwt.encode(body, key_pem, algorithm="RS256", headers={"kid": "k"})


@override_settings(OIDC_RP_CLIENT_ID=CLIENT_ID, OIDC_RP_CLIENT_SECRET="x", OIDC_OP_ISSUER="https://idp.example",  # nosec B106
                   OIDC_OP_TOKEN_ENDPOINT="https://idp.example/token", OIDC_OP_USER_ENDPOINT="https://idp.example/u",
                   OIDC_OP_JWKS_ENDPOINT="https://idp.example/jwks", OIDC_RP_SIGN_ALGO="RS256")
def test_an_id_token_for_another_client_or_from_another_issuer_is_refused():
    from tenants import sso

    pem = rsa_key_pem()
    public = serialization.load_pem_private_key(pem.encode(), None).public_key()
    backend = sso.SsoBackend()
    assert backend.get_payload_data(_token(pem), public)["sub"] == "42"
    for bad, message in [({"aud": "another-client"}, "(?i)audience"), ({"iss": "https://evil.example"}, "issuer"),
                         ({"exp": int(time.time()) - 3600}, "expired")]:
        with pytest.raises(sso.Refused, match=message):
            backend.get_payload_data(_token(pem, **bad), public)
    with pytest.raises(sso.Refused, match="not RS256"):
        backend.get_payload_data(jwt.encode({"sub": "42"}, "x" * 32, algorithm="HS256"), "x" * 32)


def test_password_sign_in_can_be_switched_off(client, transactional_db):
    get_user_model().objects.create_user("erin", password=IDP_PASSWORD, is_staff=True)
    with override_settings(ADMIN_PASSWORD_LOGIN=False):
        page = client.get("/admin/login/")
        assert b"Password sign-in is switched off" in page.content and b'name="password"' not in page.content
        refused = client.post("/admin/login/", {"username": "erin", "password": IDP_PASSWORD})
        assert refused.status_code == 403 and b"Password sign-in is switched off" in refused.content
    assert not AuditLog.objects.filter(action="login").exists()
    signed_in = client.post("/admin/login/", {"username": "erin", "password": IDP_PASSWORD})  # the default: on
    assert signed_in.status_code == 302 and AuditLog.objects.filter(action="login").count() == 1
