"""In the admin, secrets go in and never come out: keys shown once, provider keys write-only."""

import re

import pytest

from keys import hashing
from keys import services as key_services
from keys.models import ApiKey
from providers.models import Provider
from tenants.models import AuditLog


@pytest.fixture()
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_new_key_is_shown_once_and_only_its_hash_is_kept(staff_client, tenant):
    response = staff_client.post(
        "/admin/keys/apikey/add/",
        {"tenant": tenant.id, "name": "from admin", "allowed_models": "[]", "expires_at_0": "", "expires_at_1": "",
         "limits-TOTAL_FORMS": "0", "limits-INITIAL_FORMS": "0"},
        follow=True,
    )
    assert response.status_code == 200
    shown = re.findall(r"sk-gw-[0-9A-Za-z]{46}", response.content.decode())
    assert len(set(shown)) == 1
    secret = shown[0]
    key = ApiKey.objects.get(name="from admin")
    assert key.key_hash == hashing.hash_key(secret) and key.prefix == secret[:14]
    assert AuditLog.objects.filter(action="key.create", object_id=str(key.id)).exists()

    page = staff_client.get(f"/admin/keys/apikey/{key.id}/change/").content.decode()
    listing = staff_client.get("/admin/keys/apikey/").content.decode()
    assert secret not in page and secret not in listing
    assert key.prefix in listing
    # Nor on the pages that list keys for use: the playground offers the prefix only.
    for elsewhere in ("/admin/playground/", "/admin/", "/admin/dashboard/data", "/admin/tenants/auditlog/"):
        assert secret not in staff_client.get(elsewhere).content.decode(), elsewhere
    assert key.prefix in staff_client.get("/admin/playground/").content.decode()


@pytest.mark.django_db
def test_revoke_action_revokes_and_audits(staff_client, tenant):
    key, _ = key_services.issue(tenant, "to revoke")
    staff_client.post("/admin/keys/apikey/", {"action": "revoke_keys", "_selected_action": [key.id]}, follow=True)
    key.refresh_from_db()
    assert key.is_revoked
    assert AuditLog.objects.filter(action="key.revoke", object_id=str(key.id)).exists()


@pytest.mark.django_db
def test_provider_key_is_write_only(staff_client):
    secret = "sk-admin-typed-secret-987654"
    response = staff_client.post(
        "/admin/providers/provider/add/",
        {"name": "typed", "kind": "openai", "base_url": "https://api.example.com/v1", "api_key": secret,
         "api_key_env": "", "extra_headers": "{}", "is_active": "on",
         "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0"},
        follow=True,
    )
    assert response.status_code == 200
    provider = Provider.objects.get(name="typed")
    assert provider.get_api_key() == secret and secret not in provider.api_key_encrypted
    page = staff_client.get(f"/admin/providers/provider/{provider.id}/change/").content.decode()
    assert secret not in page

    # Saving again with the field empty keeps the key.
    staff_client.post(
        f"/admin/providers/provider/{provider.id}/change/",
        {"name": "typed", "kind": "openai", "base_url": "https://api.example.com/v1", "api_key": "",
         "api_key_env": "", "extra_headers": "{}", "is_active": "on",
         "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0"},
    )
    provider.refresh_from_db()
    assert provider.get_api_key() == secret
