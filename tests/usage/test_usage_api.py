"""The usage API: scoped per tenant and role, filtered, paginated, documented, throttled."""

import base64
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from rest_framework.test import APIClient

from keys import services as key_services
from tenants.models import Membership
from tests.usage.test_jobs import record


@pytest.fixture()
def world(transactional_db, tenant, other_tenant):
    users = get_user_model().objects
    people = {
        "staff": users.create_superuser("staff", "staff@example.com", "pw-staff-1"),
        "owner": users.create_user("owner", "owner@example.com", "pw-owner-1", is_staff=True),
        "member": users.create_user("member", "member@example.com", "pw-member-1"),
        "rival": users.create_user("rival", "rival@example.com", "pw-rival-1", is_staff=True),
    }
    Membership.objects.create(tenant=tenant, user=people["owner"], role="owner")
    Membership.objects.create(tenant=tenant, user=people["member"], role="member")
    Membership.objects.create(tenant=other_tenant, user=people["rival"], role="owner")
    team_key, _ = key_services.issue(tenant, "team", created_by=people["owner"])
    own_key, _ = key_services.issue(tenant, "mine", created_by=people["member"])
    rival_key, _ = key_services.issue(other_tenant, "rival", created_by=people["rival"])
    start = datetime(2026, 11, 10, 9, tzinfo=UTC)
    for i in range(5):
        record(tenant, team_key, start + timedelta(hours=i), model="gpt-test", provider="openai", cost="0.010000")
    for i in range(3):
        record(tenant, own_key, start + timedelta(days=1, hours=i), model="claude", provider="anthropic",
               cost="0.020000", status="ok" if i else "upstream_error")
    for i in range(4):
        record(other_tenant, rival_key, start + timedelta(hours=i), model="secret-model", provider="globex-ai")
    cache.clear()  # throttling counters
    return people, {"team": team_key, "mine": own_key, "rival": rival_key}


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def all_records(client, query="") -> list[dict]:
    found, url = [], f"/api/usage/records?page_size=2{query}"
    while url:
        page = client.get(url).json()
        found += page["results"]
        url = page["next"]
    return found


def test_each_role_sees_only_what_it_may(world):
    people, keys = world
    assert len(all_records(client_for(people["staff"]))) == 12
    owners = all_records(client_for(people["owner"]))
    assert len(owners) == 8 and {r["tenant"] for r in owners} == {"acme"}
    mine = all_records(client_for(people["member"]))
    assert len(mine) == 3 and {r["key_prefix"] for r in mine} == {keys["mine"].prefix}
    rival = client_for(people["rival"])
    assert {r["tenant"] for r in all_records(rival)} == {"globex"}
    # Asking for another tenant's data by name gives nothing, not an error that confirms it exists.
    assert all_records(rival, "&tenant=acme") == []
    assert rival.get("/api/usage/summary?tenant=acme").json()["totals"]["requests"] == 0


def test_filters_and_cursor_pagination(world):
    people, keys = world
    staff = client_for(people["staff"])
    pages = all_records(staff)
    assert len({r["request_id"] for r in pages}) == 12  # no duplicates across pages
    assert [r["created_at"] for r in pages] == sorted((r["created_at"] for r in pages), reverse=True)
    assert len(all_records(staff, "&model=claude")) == 3
    assert len(all_records(staff, "&provider=openai")) == 5
    assert len(all_records(staff, f"&key={keys['rival'].prefix}")) == 4
    assert len(all_records(staff, "&start=2026-11-11&end=2026-11-12")) == 3
    assert len(all_records(staff, "&start=2026-11-10T10:00:00Z&end=2026-11-10T12:00:00Z")) == 4  # 2 + 2
    response = staff.get("/api/usage/records?start=yesterday")
    assert response.status_code == 400 and "start" in response.json()


def test_summary_totals_and_groups(world):
    people, _ = world
    owner = client_for(people["owner"])
    summary = owner.get("/api/usage/summary?group_by=model").json()
    assert summary["totals"]["requests"] == 8 and summary["totals"]["errors"] == 1
    assert Decimal(summary["totals"]["cost_usd"]) == Decimal("0.11")
    assert {g["model"]: g["requests"] for g in summary["groups"]} == {"claude": 3, "gpt-test": 5}
    by_day = owner.get("/api/usage/summary?group_by=day").json()["groups"]
    assert [g["requests"] for g in by_day] == [5, 3]
    assert owner.get("/api/usage/summary?group_by=colour").status_code == 400


def test_basic_auth_works_and_strangers_are_refused(world):
    anonymous = APIClient()
    assert anonymous.get("/api/usage/records").status_code in (401, 403)
    basic = APIClient()
    basic.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"owner:pw-owner-1").decode())
    assert basic.get("/api/usage/summary").json()["totals"]["requests"] == 8
    basic.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"owner:wrong").decode())
    assert basic.get("/api/usage/summary").status_code == 401


def test_the_api_is_documented_with_a_local_swagger_ui(world):
    schema = APIClient().get("/api/schema/?format=json").json()
    assert "/api/usage/records" in schema["paths"] and "/api/usage/summary" in schema["paths"]
    params = {p["name"] for p in schema["paths"]["/api/usage/records"]["get"]["parameters"]}
    assert {"start", "end", "key", "model", "provider", "tenant", "cursor", "page_size"} <= params
    page = APIClient().get("/api/docs/").content.decode()
    assert "swagger-ui" in page and "/static/drf_spectacular_sidecar/" in page and "cdn" not in page.lower()


def test_the_api_is_throttled(world, settings):
    people, _ = world
    settings.MANAGEMENT_API_RATE = "3/m"
    owner = client_for(people["owner"])
    statuses = [owner.get("/api/usage/summary").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = owner.get("/api/usage/summary")
    assert refused.status_code == 429 and int(refused["retry-after"]) > 0
