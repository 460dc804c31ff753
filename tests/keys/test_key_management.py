"""Key lifecycle by tenant users, in the admin and the management API, seen through the gateway:
created and shown once, revoked, rotated with a grace period, last use recorded; each step audited."""

import re
import time

import httpx
import pytest

from keys import hashing
from keys import services as key_services
from keys.models import ApiKey
from tenants.models import AuditLog
from tests.conftest import user_in, wait_until
from usage.models import Limit

SECRET = re.compile(r"sk-gw-[0-9A-Za-z]{46}")


def chat_status(gateway, secret: str) -> int:
    response = httpx.post(gateway.url + "/v1/chat/completions", timeout=20,
                          headers={"authorization": f"Bearer {secret}"},
                          json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
    return response.status_code


@pytest.fixture()
def tenant_admin(client, tenant, django_user_model):
    user = user_in(tenant, "admin")
    client.force_login(user)
    return user


def test_tenant_admin_creates_a_key_in_the_admin_shown_once_that_works(client, gateway, mock_provider, tenant,
                                                                        other_tenant, tenant_admin):
    form = client.get("/admin/keys/apikey/add/").content.decode()
    assert "Acme" in form and "Globex" not in form  # only their own tenant to pick

    response = client.post("/admin/keys/apikey/add/", {
        "tenant": tenant.id, "name": "ci", "allowed_models": "[]", "expires_at_0": "", "expires_at_1": "",
        "limits-TOTAL_FORMS": "0", "limits-INITIAL_FORMS": "0"})
    page = response.content.decode()
    assert response.status_code == 200
    assert "no-store" in response["cache-control"]
    assert 'id="copy-api-key"' in page and "only time this key is shown" in page
    secret = SECRET.search(page).group()
    key = ApiKey.objects.get(name="ci")
    assert key.tenant == tenant and key.created_by == tenant_admin
    assert key.key_hash == hashing.hash_key(secret) and secret not in str(ApiKey.objects.filter(pk=key.pk).values())

    assert wait_until(lambda: chat_status(gateway, secret) == 200)
    for url in (f"/admin/keys/apikey/{key.id}/change/", "/admin/keys/apikey/", "/admin/tenants/auditlog/"):
        assert secret not in client.get(url).content.decode()

    trail = AuditLog.objects.filter(object_id=str(key.id), object_type="keys.ApiKey")
    assert sorted(trail.values_list("action", flat=True)) == ["key.create", "key.reveal"]
    for row in trail:
        assert row.actor == tenant_admin and row.tenant_id == tenant.id
        assert row.address == "127.0.0.1" and row.request_id == response["x-request-id"]
    assert trail.get(action="key.create").changes["key_hash"] == [None, "[redacted]"]


def test_bulk_revoke_in_the_admin_is_refused_by_the_gateway_within_seconds(client, gateway, mock_provider, tenant,
                                                                           tenant_admin):
    keys = [key_services.issue(tenant, f"k{i}") for i in range(3)]
    assert all(wait_until(lambda s=secret: chat_status(gateway, s) == 200) for _, secret in keys)

    client.post("/admin/keys/apikey/", {"action": "revoke_keys", "_selected_action": [k.id for k, _ in keys[:2]]})
    assert wait_until(lambda: [chat_status(gateway, s) for _, s in keys] == [401, 401, 200], timeout=5)
    revoked = AuditLog.objects.filter(action="key.revoke", actor=tenant_admin)
    assert sorted(revoked.values_list("object_id", flat=True)) == sorted(str(k.id) for k, _ in keys[:2])


def test_rotated_key_works_during_the_grace_period_and_is_refused_after(client, gateway, mock_provider, tenant,
                                                                        tenant_admin):
    old, old_secret = key_services.issue(tenant, "rotating", models_allowed=["gpt-test"])
    Limit.objects.create(tenant=tenant, api_key=old, requests_per_minute=50)
    assert wait_until(lambda: chat_status(gateway, old_secret) == 200)

    response = client.post(f"/api/manage/keys/{old.id}/rotate/", {"grace_seconds": 3},
                           content_type="application/json")
    assert response.status_code == 201
    new_secret = response.json()["secret"]
    new = ApiKey.objects.get(pk=response.json()["id"])
    rotated_at = time.monotonic()
    assert new.allowed_models == ["gpt-test"] and new.limits.get().requests_per_minute == 50

    assert chat_status(gateway, old_secret) == 200  # still within the grace period
    assert wait_until(lambda: chat_status(gateway, new_secret) == 200)
    assert wait_until(lambda: chat_status(gateway, old_secret) == 401, timeout=10)
    assert time.monotonic() - rotated_at >= 2.5  # refused because the grace ran out, not before
    assert chat_status(gateway, new_secret) == 200

    rotation = AuditLog.objects.get(action="key.rotate", object_id=str(old.id))
    assert rotation.actor == tenant_admin and set(rotation.changes) == {"expires_at", "replaced_by"}
    assert AuditLog.objects.filter(action="key.reveal", object_id=str(new.id)).exists()
    assert "secret" not in client.get(f"/api/manage/keys/{new.id}/").json()


def test_rotation_in_the_admin_shows_the_new_key_once_and_can_end_the_old_at_once(client, gateway, mock_provider,
                                                                                  tenant, tenant_admin):
    old, old_secret = key_services.issue(tenant, "rotate me")
    assert wait_until(lambda: chat_status(gateway, old_secret) == 200)
    change_page = client.get(f"/admin/keys/apikey/{old.id}/change/").content.decode()
    assert f"/admin/keys/apikey/{old.id}/rotate/" in change_page

    form = client.get(f"/admin/keys/apikey/{old.id}/rotate/").content.decode()
    assert "24 hours" in form and "None: refuse the old key at once" in form
    page = client.post(f"/admin/keys/apikey/{old.id}/rotate/", {"grace": "0"}).content.decode()
    new_secret = SECRET.search(page).group()
    assert "the gateway refuses from now on" in page and old_secret not in page

    assert wait_until(lambda: chat_status(gateway, old_secret) == 401)
    assert wait_until(lambda: chat_status(gateway, new_secret) == 200)
    old.refresh_from_db()
    assert old.state == "expired" and old.replaced_by.key_hash == hashing.hash_key(new_secret)


def test_last_use_is_recorded_off_the_request_path(gateway, mock_provider, api_key):
    key, secret = api_key
    assert key.last_used_at is None
    assert wait_until(lambda: chat_status(gateway, secret) == 200)
    assert wait_until(lambda: ApiKey.objects.get(pk=key.pk).last_used_at is not None)


def test_members_manage_their_own_keys_only(client, gateway, mock_provider, tenant, django_user_model):
    admins_key, _ = key_services.issue(tenant, "admin's key", created_by=user_in(tenant, "admin"))
    member = user_in(tenant, "member")
    client.force_login(member)

    created = client.post("/api/manage/keys/", {"name": "mine"}, content_type="application/json")
    assert created.status_code == 201 and created.json()["tenant"] == tenant.id
    mine = created.json()
    assert wait_until(lambda: chat_status(gateway, mine["secret"]) == 200)

    listing = client.get("/api/manage/keys/").json()["results"]
    assert [k["id"] for k in listing] == [mine["id"]] and "secret" not in listing[0]
    assert client.get(f"/api/manage/keys/{admins_key.id}/").status_code == 404
    assert client.post(f"/api/manage/keys/{admins_key.id}/revoke/").status_code == 404
    admin_list = client.get("/admin/keys/apikey/").content.decode()
    assert "mine" in admin_list and "admin&#x27;s key" not in admin_list and "admin's key" not in admin_list

    assert client.delete(f"/api/manage/keys/{mine['id']}/").status_code == 403  # members revoke, not delete
    assert client.post(f"/api/manage/keys/{mine['id']}/revoke/").json()["state"] == "revoked"
    assert wait_until(lambda: chat_status(gateway, mine["secret"]) == 401)
    admins_key.refresh_from_db()
    assert not admins_key.is_revoked
