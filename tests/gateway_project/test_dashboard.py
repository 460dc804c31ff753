"""The admin index's dashboard data: exact totals, a time series, breakdowns, health and
budgets, each narrowed to what the signed-in user may see."""

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis
from django.conf import settings

from keys import services as key_services
from providers.models import Deployment, HealthCheck, Provider
from tenants.models import Membership, Tenant
from usage import limits
from usage.models import Limit, UsageRecord

NOW = datetime.now(UTC)


@pytest.fixture()
def world(transactional_db, django_user_model):
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    acme, globex = Tenant.objects.create(name="Acme", slug="acme"), Tenant.objects.create(name="Globex", slug="globex")
    users = {"staff": django_user_model.objects.create_superuser("staff", "s@example.com", "x")}
    for role in ("admin", "member"):
        users[role] = django_user_model.objects.create_user(f"acme-{role}", is_staff=True)
        Membership.objects.create(tenant=acme, user=users[role], role=role)
    keys = {
        "acme": key_services.issue(acme, "acme key", created_by=users["admin"])[0],
        "member": key_services.issue(acme, "member key", created_by=users["member"])[0],
        "globex": key_services.issue(globex, "globex key")[0],
    }
    return acme, globex, users, keys


def record(key, minutes_ago, *, model="gpt", provider="openai", cost="0.001", latency=100, status="ok",
           prompt=10, completion=5):
    return UsageRecord.objects.create(
        request_id=f"req-{UsageRecord.objects.count()}", created_at=NOW - timedelta(minutes=minutes_ago),
        tenant_id=key.tenant_id, api_key=key, key_prefix=key.prefix, endpoint="chat.completions",
        public_model=model, provider_name=provider, prompt_tokens=prompt, completion_tokens=completion,
        total_tokens=prompt + completion, cost_usd=Decimal(cost), latency_ms=latency, status=status,
        http_status=200 if status == "ok" else 502)


def dashboard(client, user, **params):
    client.force_login(user)
    response = client.get("/admin/dashboard/data", params)
    assert response.status_code == 200, response.content
    return response.json()


def test_staff_see_every_tenant_exactly(client, world):
    acme, globex, users, keys = world
    for latency in (100, 200, 300, 400):
        record(keys["acme"], 5, latency=latency, cost="0.000000000001")
    record(keys["globex"], 30, model="claude", provider="anthropic", cost="1.1", status="upstream_error",
           latency=1000)
    record(keys["globex"], 60 * 30, cost="5")  # outside the last day

    data = dashboard(client, users["staff"], range="24h")
    totals = data["totals"]
    assert totals["requests"] == 5 and totals["errors"] == 1 and totals["error_rate"] == 0.2
    assert totals["tokens"] == 75 and Decimal(totals["cost_usd"]) == Decimal("1.100000000004")
    assert totals["p50_ms"] == 300 and totals["p95_ms"] == 880  # percentile_cont over 100..400 and 1000
    by_tenant = {row["name"]: row for row in data["by"]["tenant"]}
    assert by_tenant["Acme"]["requests"] == 4 and by_tenant["Globex"]["errors"] == 1
    assert [row["name"] for row in data["by"]["provider"]] == ["anthropic", "openai"]  # dearest first
    assert {row["name"] for row in data["by"]["model"]} == {"gpt", "claude"}
    assert len(data["series"]["labels"]) in (24, 25) and sum(data["series"]["requests"]) == 5
    assert sum(data["series"]["errors"]) == 1
    assert {t["name"] for t in data["filters"]["tenants"]} == {"Acme", "Globex"}

    week = dashboard(client, users["staff"], range="7d")
    assert week["totals"]["requests"] == 6 and week["range"]["step"] == "hour"
    hour = dashboard(client, users["staff"], range="1h", model="claude")
    assert hour["totals"]["requests"] == 1 and hour["range"]["step"] == "minute"
    minute = (NOW - timedelta(minutes=30)).replace(second=0, microsecond=0).isoformat()
    assert len(hour["series"]["labels"]) in (60, 61) and hour["series"]["requests"] == [
        1 if label == minute else 0 for label in hour["series"]["labels"]]
    only_globex = dashboard(client, users["staff"], range="24h", tenant=str(globex.id))
    assert only_globex["totals"]["requests"] == 1


def test_custom_range_and_bad_ranges(client, world):
    _, _, users, keys = world
    record(keys["acme"], 60 * 24 * 3)
    start = (NOW - timedelta(days=4)).isoformat()
    end = (NOW - timedelta(days=2)).isoformat()
    data = dashboard(client, users["staff"], start=start, end=end)
    assert data["totals"]["requests"] == 1 and data["range"]["step"] == "hour"
    client.force_login(users["staff"])
    for params in ({"range": "1y"}, {"start": "yesterday"}, {"start": end, "end": start}):
        refused = client.get("/admin/dashboard/data", params)
        assert refused.status_code == 400 and set(refused.json()["error"]) == {"message", "type", "param", "code"}


def test_tenant_admins_and_members_see_only_their_share(client, world):
    acme, globex, users, keys = world
    record(keys["acme"], 1, cost="2")
    record(keys["member"], 1, cost="3")
    record(keys["globex"], 1, cost="7")

    admin = dashboard(client, users["admin"])
    assert admin["totals"]["requests"] == 2 and Decimal(admin["totals"]["cost_usd"]) == 5
    assert [t["name"] for t in admin["filters"]["tenants"]] == ["Acme"]
    assert "Globex" not in str(admin)
    # Asking for another tenant by id shows nothing of it.
    assert dashboard(client, users["admin"], tenant=str(globex.id))["totals"]["requests"] == 0

    member = dashboard(client, users["member"])
    assert member["totals"]["requests"] == 1 and Decimal(member["totals"]["cost_usd"]) == 3
    assert member["filters"]["tenants"] == [] and member["budgets"] == []


def test_health_and_breakers_show_and_error_texts_stay_with_staff(client, world):
    acme, globex, users, keys = world
    shared = Provider.objects.create(name="platform-openai", kind="openai", base_url="https://api.example.com/v1")
    deployment = Deployment.objects.create(provider=shared, public_model="gpt", upstream_model="gpt-4o")
    foreign = Provider.objects.create(name="globex-own", kind="openai", base_url="https://globex.example.com/v1",
                                      tenant=globex)
    Deployment.objects.create(provider=foreign, public_model="secret-model", upstream_model="x")
    HealthCheck.objects.create(provider=shared, deployment=deployment, checked_at=NOW, ok=False, status=500,
                               latency_ms=42, error="internal address 10.0.0.5 refused")

    staff = {h["model"]: h for h in dashboard(client, users["staff"])["health"]}
    assert staff["gpt"]["ok"] is False and staff["gpt"]["latency_ms"] == 42 and "10.0.0.5" in staff["gpt"]["error"]
    assert staff["gpt"]["breaker"] == "closed" and staff["secret-model"]["ok"] is None
    admin = dashboard(client, users["admin"])["health"]
    assert [h["model"] for h in admin] == ["gpt"] and admin[0]["ok"] is False and admin[0]["error"] == ""


def test_budgets_near_their_limit_are_listed_fullest_first(client, world):
    acme, globex, users, keys = world
    tight = Limit.objects.create(tenant=acme, api_key=keys["acme"], budget_usd=Decimal("1.00"))
    loose = Limit.objects.create(tenant=acme, token_quota=1000)
    Limit.objects.create(tenant=globex, budget_usd=Decimal("1.00"))

    async def spend():
        for _ in range(3):
            admission = await limits.admit(acme.id, keys["acme"].id, "gpt", lambda: (10, 1000))
            await limits.settle(admission, 200, 300_000)  # 200 tokens and $0.30 each

    asyncio.run(spend())
    budgets = dashboard(client, users["staff"])["budgets"]
    assert [(b["limit_id"], b["kind"]) for b in budgets] == [(tight.id, "budget"), (loose.id, "tokens")]
    assert budgets[0]["percent"] == 90.0 and budgets[0]["warn"] and budgets[0]["used"] == "0.900000"
    assert budgets[1]["percent"] == 60.0 and not budgets[1]["warn"] and budgets[1]["used"] == 600
    # Acme's admin sees Acme's; nobody sees Globex's limit unless staff.
    assert {b["limit_id"] for b in dashboard(client, users["admin"])["budgets"]} == {tight.id, loose.id}


def test_index_is_the_dashboard_and_needs_a_sign_in(client, world):
    _, _, users, _ = world
    assert client.get("/admin/dashboard/data").status_code == 302
    client.force_login(users["member"])
    page = client.get("/admin/").content.decode()
    assert 'id="dashboard"' in page and "vendor/chartjs/chart.umd.min.js" in page and "Playground" in page
    assert client.get("/static/vendor/chartjs/chart.umd.min.js").status_code == 200


def test_every_money_figure_is_a_plain_decimal(client, world):
    """A cost of two hundred-millionths of a dollar reads 0.00000002, never 2E-8, wherever it shows."""
    acme, globex, users, keys = world
    record(keys["acme"], 5, cost="0.00000002")
    record(keys["acme"], 6, cost="0.00000002")
    data = dashboard(client, users["staff"], range="1h")

    def money(value, path="data"):
        if isinstance(value, dict):
            return [m for k, v in value.items() for m in money(v, f"{path}.{k}")]
        if isinstance(value, list):
            return [m for i, v in enumerate(value) for m in money(v, f"{path}[{i}]")]
        return [(path, value)] if "cost" in path else []

    figures = money(data)
    assert figures, "the dashboard shows no money figure"
    for path, value in figures:
        assert isinstance(value, str) and "E" not in value.upper(), (path, value)
        Decimal(value)  # a number all the same
    assert Decimal(data["totals"]["cost_usd"]) == Decimal("0.00000004")


def test_the_cost_chart_carries_the_forecast_of_what_the_user_may_see(client, world):
    acme, globex, users, keys = world
    today = NOW.date()
    for days_ago in range(1, 8):  # $7 a day on Acme's key, $100 a day on Globex's, at noon UTC
        noon = datetime.combine(today - timedelta(days=days_ago), datetime.min.time(), UTC) + timedelta(hours=12)
        minutes = (NOW - noon).total_seconds() / 60
        record(keys["acme"], minutes, cost="7")
        record(keys["globex"], minutes, cost="100")
    month_start = today.replace(day=1)
    last_day = (month_start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    spent = 7 * sum(1 for d in range(1, 8) if today - timedelta(days=d) >= month_start)

    seen = dashboard(client, users["admin"], range="30d")["forecast"]
    assert (seen["rate_per_day_usd"], seen["rate_days"], seen["per_step_usd"]) == ("7.000000", 7, "7.000000")
    assert Decimal(seen["month_to_date_usd"]) == spent and seen["last_day"] == last_day.isoformat()
    days_left = Decimal((datetime.combine(last_day + timedelta(days=1), datetime.min.time(), UTC)
                         - datetime.now(UTC)).total_seconds()) / 86400
    assert abs(Decimal(seen["month_end_usd"]) - (spent + 7 * days_left)) < Decimal("0.01")
    assert seen["low_usd"] == seen["month_end_usd"] == seen["high_usd"]  # every day alike: no range
    # The line goes on to the month's end: one label for each day after today.
    assert [label[:10] for label in seen["future_labels"]] == [
        (today + timedelta(days=i)).isoformat() for i in range(1, (last_day - today).days + 1)]
    # By the hour, the rate per hour; staff's forecast counts Globex too.
    assert dashboard(client, users["admin"], range="24h")["forecast"]["per_step_usd"] == "0.291667"
    assert dashboard(client, users["admin"], range="24h")["forecast"]["future_labels"] == []
    assert dashboard(client, users["staff"], range="30d")["forecast"]["rate_per_day_usd"] == "107.000000"


def test_cache_hit_rate_and_money_saved_per_tenant_and_route(client, world):
    acme, globex, users, keys = world
    record(keys["acme"], 5, cost="0.002")
    for _ in range(3):
        hit = record(keys["acme"], 4, cost="0")
        UsageRecord.objects.filter(pk=hit.pk).update(cache_hit=True, cost_saved_usd=Decimal("0.002"), route="gpt")
    record(keys["globex"], 5)

    data = dashboard(client, users["staff"], range="24h")
    assert data["totals"]["cache_hits"] == 3 and data["totals"]["cache_hit_rate"] == 0.6
    assert Decimal(data["totals"]["cost_saved_usd"]) == Decimal("0.006")
    by_tenant = {row["name"]: row for row in data["by"]["tenant"]}
    assert by_tenant["Acme"]["cache_hit_rate"] == 0.75 and by_tenant["Globex"]["cache_hits"] == 0
    by_route = {row["name"]: row for row in data["by"]["route"]}
    assert by_route["gpt"]["cache_hits"] == 3 and Decimal(by_route["gpt"]["cost_saved_usd"]) == Decimal("0.006")
    theirs = dashboard(client, users["admin"], range="24h")  # Acme's admin: Acme's figures only
    assert theirs["totals"]["requests"] == 4 and theirs["totals"]["cache_hits"] == 3


def test_guardrail_blocks_and_redactions_are_counted_per_tenant_and_check(client, world):
    acme, globex, users, keys = world

    def decided(key, *actions):
        row = record(key, 1)
        row.guardrails = {"action": actions[0], "ms": 0.1, "checks": [
            {"check": f"p/pii#{n}", "kind": "pii", "stage": "input", "action": a, "findings": {"email": 1}, "ms": 0.1}
            for n, a in enumerate(actions, 1)]}
        row.save()

    decided(keys["acme"], "blocked")
    decided(keys["acme"], "blocked", "redacted")
    decided(keys["globex"], "flagged")
    staff = dashboard(client, users["staff"])["guardrails"]
    assert {(g["tenant"], g["check"], g["blocked"], g["redacted"], g["flagged"]) for g in staff} == {
        ("Acme", "p/pii#1", 2, 0, 0), ("Acme", "p/pii#2", 0, 1, 0), ("Globex", "p/pii#1", 0, 0, 1)}
    admin = dashboard(client, users["admin"])["guardrails"]
    assert {g["tenant"] for g in admin} == {"Acme"}
