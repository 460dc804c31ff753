"""The dashboard and the usage API read rollups where they cover the range (usage.summaries): the
same counts and exact money as from the records alone, with the records read only for the rest."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.core.management import call_command
from django.db import connection
from django.db.models import Q
from django.http import QueryDict
from django.test.utils import CaptureQueriesContext

from gateway_project import dashboard
from tests.conftest import user_in
from tests.usage.test_jobs import record
from usage import rollups, summaries
from usage.models import UsageRecord

SHOWN = ("totals", "series", "by", "filters")


def busy_month(tenant, other_tenant, now: datetime) -> None:
    """Records over the last 30 days: two tenants, models, providers and routes, and errors."""
    for day in range(0, 30, 3):
        for hour in (1, 13, 22):
            when = now - timedelta(days=day, hours=hour, minutes=7)
            record(tenant, None, when, model="gpt-a", provider="p1", cost="0.000000123", latency=100 + day,
                   route="fast")
            record(tenant, None, when, model="gpt-b", provider="p2", cost="1.5", status="upstream_error",
                   cache_hit=True, cost_saved_usd="0.25")
            record(other_tenant, None, when + timedelta(minutes=1), model="gpt-a", provider="p1", cost="0.3")


def board(user, **params) -> dict:
    query = QueryDict(mutable=True)
    query.update(params)
    body = dashboard.data(user, query)
    for row in body["series"]["p50_ms"], body["series"]["p95_ms"]:
        row.clear()  # percentiles over several groups are approximate once rolled up
    for rows in body["by"].values():
        for row in rows:
            row.pop("p50_ms"), row.pop("p95_ms")
    body["totals"].pop("p50_ms"), body["totals"].pop("p95_ms")
    return {name: body[name] for name in SHOWN}


def roll_up_everything(since: datetime) -> None:
    call_command("rollup_usage", since=since.strftime("%Y-%m-%dT%H:%M"))
    rollups.rollup_since(since, "day")


def test_the_dashboard_reads_the_same_from_rollups_as_from_records(transactional_db, tenant, other_tenant,
                                                                     admin_user):
    now = datetime.now(UTC)
    busy_month(tenant, other_tenant, now)
    owner = user_in(tenant, "owner")
    asked = [(admin_user, {"range": "30d"}), (admin_user, {"range": "30d", "tenant": str(tenant.id)}),
             (admin_user, {"range": "7d", "model": "gpt-b"}), (owner, {"range": "30d"})]
    from_records = [board(user, **params) for user, params in asked]
    assert from_records[0]["totals"]["requests"] == 90
    assert Decimal(from_records[0]["totals"]["cost_usd"]) == 30 * Decimal("1.800000123")

    roll_up_everything(now - timedelta(days=31))
    with CaptureQueriesContext(connection) as queries:
        from_rollups = [board(user, **params) for user, params in asked]
    assert from_rollups == from_records
    assert any("usage_usagerollup" in q["sql"] for q in queries)
    assert [row["name"] for row in from_rollups[3]["by"]["tenant"]] == ["Acme"]  # the owner: their own tenant
    assert [row["name"] for row in from_rollups[0]["by"]["route"]] == ["—", "fast"]


def test_only_the_ragged_edges_and_the_open_hour_are_read_from_records(transactional_db, tenant, other_tenant):
    now = datetime.now(UTC)
    busy_month(tenant, other_tenant, now)
    roll_up_everything(now - timedelta(days=31))
    split = summaries.split(now - timedelta(days=30), now)
    start = now - timedelta(days=30)
    edges = (Q(created_at__gte=start, created_at__lt=rollups.bucket_start(start, "hour") + timedelta(hours=1))
             | Q(created_at__gte=rollups.bucket_start(now, "hour"), created_at__lt=now))
    # Hours without traffic have no rollup and are read from the records too: none are there.
    assert UsageRecord.objects.filter(split.records).count() == UsageRecord.objects.filter(edges).count()
    assert UsageRecord.objects.filter(split.records).count() < 5  # of 90 in the range


def test_the_usage_api_sums_the_same_from_rollups(transactional_db, tenant, other_tenant, admin_client):
    now = datetime.now(UTC)
    busy_month(tenant, other_tenant, now)
    start = (now - timedelta(days=30)).isoformat().replace("+00:00", "Z")
    asks = [{"start": start}, {"start": start, "group_by": "day"}, {"start": start, "group_by": "model"},
            {"start": start, "tenant": "acme", "group_by": "provider"}, {}]
    before = [admin_client.get("/api/usage/summary", ask).json() for ask in asks]
    assert Decimal(before[0]["totals"]["cost_usd"]) == 30 * Decimal("1.800000123")
    assert before[0]["totals"]["errors"] == 30
    roll_up_everything(now - timedelta(days=31))
    assert [admin_client.get("/api/usage/summary", ask).json() for ask in asks] == before
