"""Guessing is slowed, logins are throttled, and admins see limits with their current use."""

import asyncio
import time

import httpx
import pytest

from keys.hashing import generate_key
from usage import limits
from usage.models import Limit


def test_failed_key_attempts_from_one_address_slow_down_but_valid_keys_do_not(key_client, gateway, api_key,
                                                                               settings):
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    url = gateway.url + "/v1/chat/completions"

    def timed(key):
        started = time.monotonic()
        response = httpx.post(url, json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)
        return response, time.monotonic() - started

    free = [timed(generate_key()) for _ in range(settings.AUTH_FAILURES_PER_MINUTE)]
    assert all(r.status_code == 401 for r, _ in free)
    # Over the allowance, answers slow down to a second and more (the count is per minute: on a slow
    # machine the minute may roll over during the free attempts, so allow for a few more tries).
    slowed = []
    while len(slowed) < settings.AUTH_FAILURES_PER_MINUTE + 8 and (not slowed or slowed[-1][1] < 0.9):
        slowed.append(timed(generate_key()))
    assert all(r.status_code == 401 for r, _ in slowed)
    assert slowed[-1][1] >= 0.9
    response, elapsed = timed(api_key[1])
    assert response.status_code == 200 and elapsed < slowed[-1][1]


@pytest.mark.django_db
def test_admin_login_is_throttled_per_address(client, settings):
    from django.core.cache import cache

    cache.clear()
    statuses = [client.post("/admin/login/", {"username": "nobody", "password": f"guess{i}"}).status_code
                for i in range(22)]
    first_refusal = statuses.index(429)
    # 10 a minute; fixed windows mean a burst straddling two may get 20 through, never more.
    assert 10 <= first_refusal <= 20
    assert set(statuses[:first_refusal]) == {200}  # the login form again, with an error


@pytest.fixture()
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
    client.force_login(user)
    return client


def test_admin_shows_limits_with_current_use(staff_client, tenant, api_key):
    limit = Limit.objects.create(tenant=tenant, api_key=api_key[0], requests_per_minute=10, budget_usd="0.5",
                                 period="day")

    async def spend():
        admission = await limits.admit(tenant.id, api_key[0].id, "m", lambda: (10, 1500))
        await limits.settle(admission, 10, 1500)

    asyncio.run(spend())
    page = staff_client.get("/admin/usage/limit/").content.decode()
    assert "1/10 req/min" in page and "$0.001500/$0.500000 this day" in page
    key_page = staff_client.get(f"/admin/keys/apikey/{api_key[0].id}/change/").content.decode()
    assert "1/10 req/min" in key_page
    assert limit.id


def test_limits_can_be_added_to_a_key_in_the_admin(staff_client, tenant, api_key):
    key = api_key[0]
    response = staff_client.post(f"/admin/keys/apikey/{key.id}/change/", {
        "name": key.name, "allowed_models": "[]", "expires_at_0": "", "expires_at_1": "",
        "limits-TOTAL_FORMS": "1", "limits-INITIAL_FORMS": "0",
        "limits-0-model": "", "limits-0-requests_per_minute": "7", "limits-0-period": "month",
        "limits-0-alert_thresholds": "[50, 100]",
    })
    assert response.status_code == 302, [line for line in response.content.decode().splitlines() if "error" in line][:10]
    limit = Limit.objects.get(api_key=key)
    assert limit.tenant_id == tenant.id and limit.requests_per_minute == 7
