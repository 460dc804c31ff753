#!/usr/bin/env python3
"""The usage ledger at scale: N records generated with COPY, then what reading and pruning them costs.

    DATABASE_URL=postgres://.../NAME python3 bench/ledger.py [--records 10000000] [--days 120]
                 [--tenants 40] [--samples 20] [--drain-events 50000] [--keep]

Recreates a database of its own beside DATABASE_URL's (`<NAME>_ledger_bench`),
migrates it (the ledger partitioned by month), adds tenants with keys and owners,
and COPYs `--records` usage records spread evenly over the last `--days` days.
It then measures, with the data warm, over `--samples` calls each:

- the same reads before the rollups exist (`--raw-samples` calls: records only),
  then the time to compute the hourly and daily rollups of the whole span;
- the admin dashboard's data (gateway_project.dashboard.data) for 30 days, as
  staff over every tenant, filtered to one tenant, and as one tenant's owner;
- the usage API (GET /api/usage/summary and /api/usage/records through DRF)
  for 30 days, over everything and for one tenant;
- dropping the oldest whole month (usage.partitions.drop_before, what the
  retention job does), its row count read beforehand;
- the drain: `--drain-events` events buffered in a Redis stream
  (BENCH_REDIS_URL, default redis://127.0.0.1:6379/14), written by
  usage.recorder.drain_all into the full table: records per second and CPU per record.

It prints one Markdown table and, unless `--keep`, drops its database.
"""

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "claude-haiku", "mistral-large", "embed-small"]
PROVIDERS = ["openai", "anthropic", "mistral"]
STATUSES = ["ok"] * 97 + ["upstream_error", "client_error", "upstream_timeout"]
CHUNK = 200_000


def admin_url(url: str) -> str:
    return url.rsplit("/", 1)[0].replace("postgres://", "postgresql://") + "/postgres"


def recreate(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop(url: str) -> None:
    from django.db import connections

    connections.close_all()
    with psycopg.connect(admin_url(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def setup_tenants(count: int) -> list[dict]:
    from django.contrib.auth import get_user_model

    from keys.services import issue
    from tenants.models import Membership, Tenant

    tenants = []
    for n in range(count):
        tenant = Tenant.objects.create(name=f"Tenant {n}", slug=f"t{n}")
        owner = get_user_model().objects.create_user(f"owner{n}", is_staff=True)
        Membership.objects.create(tenant=tenant, user=owner, role="owner")
        keys = [issue(tenant, f"k{i}", created_by=owner)[0] for i in range(4)]
        tenants.append({"tenant": tenant, "owner": owner, "keys": [(k.id, k.prefix) for k in keys]})
    return tenants


def generate(url: str, tenants: list[dict], records: int, days: int) -> float:
    """COPY `records` rows spread over the last `days` days; return the seconds it took."""
    from usage.recorder import _COLUMNS  # noqa: PLC2701 (the drain's own column order)

    columns = [name for name, _ in _COLUMNS]
    now = datetime.now(UTC)
    start = now - timedelta(days=days)
    step = days * 86400 / records
    keys = [(t["tenant"].id, key_id, prefix) for t in tenants for key_id, prefix in t["keys"]]
    started = time.perf_counter()
    with psycopg.connect(url.replace("postgres://", "postgresql://")) as conn:
        conn.execute("SET synchronous_commit = off")
        sql = f"COPY usage_usagerecord ({', '.join(columns)}) FROM STDIN"
        for first in range(0, records, CHUNK):
            lines = []
            for i in range(first, min(first + CHUNK, records)):
                tenant_id, key_id, prefix = keys[(i * 7919) % len(keys)]
                model, provider = MODELS[i % len(MODELS)], PROVIDERS[i % len(PROVIDERS)]
                prompt, completion = 50 + i % 950, 10 + i % 490
                created = (start + timedelta(seconds=i * step)).isoformat()
                status = STATUSES[i % len(STATUSES)]
                row = {"request_id": f"req_{i:012d}", "client_request_id": "", "created_at": created,
                       "tenant_id": tenant_id, "api_key_id": key_id, "key_prefix": prefix, "provider_id": "\\N",
                       "provider_name": provider, "deployment_id": "\\N", "endpoint": "chat.completions",
                       "route": model, "strategy": "", "attempts": 1, "public_model": model, "upstream_model": model,
                       "prompt_tokens": prompt, "completion_tokens": completion,
                       "total_tokens": prompt + completion, "cached_tokens": 0, "cache_write_tokens": 0,
                       "cache_write_1h_tokens": 0, "reasoning_tokens": 0, "tokens_estimated": "f",
                       "cost_usd": f"0.{(prompt * 15 + completion * 60):012d}", "latency_ms": 200 + i % 1800,
                       "ttft_ms": "\\N", "status": status, "http_status": 200 if status == "ok" else 502,
                       "error_type": "", "streamed": "t" if i % 3 else "f", "cache_hit": "f",
                       "cost_saved_usd": "0", "guardrails": "\\N", "prompt_template": "", "prompt_version": "\\N",
                       "experiment_id": "\\N", "variant": "", "batch_id": ""}
                lines.append("\t".join(str(row[c]) for c in columns))
            with conn.cursor() as cursor, cursor.copy(sql) as copy:
                copy.write("\n".join(lines) + "\n")
            conn.commit()
            print(f"  {min(first + CHUNK, records):,} records", file=sys.stderr, flush=True)
        conn.execute("ANALYZE usage_usagerecord")
    return time.perf_counter() - started


def timed(call, samples: int) -> tuple[float, float]:
    """(p50, p95) in ms of `samples` calls after one warm-up call."""
    call()
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(len(times) * 0.95) - 1)]


def reads(tenants: list[dict], samples: int, staff_name: str) -> list[tuple[str, float, float]]:
    from django.contrib.auth import get_user_model
    from django.http import QueryDict
    from rest_framework.test import APIClient

    from gateway_project import dashboard

    staff = get_user_model().objects.create_user(staff_name, is_staff=True, is_superuser=True)
    one = tenants[0]
    month = {"range": "30d"}
    end = datetime.now(UTC)
    span = {"start": (end - timedelta(days=30)).isoformat(), "end": end.isoformat()}
    client = APIClient()

    def api(user, path, params):
        client.force_authenticate(user)

        def call():
            response = client.get(path, params)
            assert response.status_code == 200, response.content[:300]
        return call

    def board(user, params):
        query = QueryDict(mutable=True)
        query.update(params)
        return lambda: dashboard.data(user, query)

    cases = [
        ("dashboard, 30 days, staff, all tenants", board(staff, month)),
        ("dashboard, 30 days, staff, one tenant", board(staff, {**month, "tenant": str(one["tenant"].id)})),
        ("dashboard, 30 days, a tenant's owner", board(one["owner"], month)),
        ("usage API summary, 30 days, staff, all tenants", api(staff, "/api/usage/summary", span)),
        ("usage API summary by day, 30 days, one tenant",
         api(staff, "/api/usage/summary", {**span, "tenant": one["tenant"].slug, "group_by": "day"})),
        ("usage API summary by model, 30 days, a tenant's owner",
         api(one["owner"], "/api/usage/summary", {**span, "group_by": "model"})),
        ("usage API records (first page), 30 days, one tenant",
         api(staff, "/api/usage/records", {**span, "tenant": one["tenant"].slug})),
    ]
    out = []
    for name, call in cases:
        p50, p95 = timed(call, samples)
        out.append((name, p50, p95))
        print(f"  {name}: p95 {p95:.0f} ms", file=sys.stderr, flush=True)
    return out


def drop_month() -> tuple[str, int, float]:
    from django.db import connection

    from usage import partitions

    oldest = min(partitions.existing())
    name = partitions.name_of(oldest)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {name}")  # noqa: S608 (a partition's name)
        rows = cursor.fetchone()[0]
    started = time.perf_counter()
    dropped = partitions.drop_before(datetime(*partitions.next_month(oldest).timetuple()[:3], tzinfo=UTC))
    seconds = time.perf_counter() - started
    assert dropped == [name], dropped
    return name, rows, seconds


def drain(tenants: list[dict], events: int) -> tuple[float, float]:
    """(records per second, ms of CPU per record) of the drain writing `events` buffered events."""
    import orjson

    from gateway_project.lib.redis_pool import sync_redis
    from usage import recorder

    client = sync_redis()
    tenant_id, (key_id, prefix) = tenants[0]["tenant"].id, tenants[0]["keys"][0]
    stream = recorder.stream_of({"tenant_id": tenant_id})
    client.delete(stream)
    pipe = client.pipeline(transaction=False)
    for i in range(events):
        pipe.xadd(stream, {"e": orjson.dumps({
            "request_id": f"req_{uuid.uuid4().hex}", "client_request_id": "", "ts": time.time(),
            "tenant_id": tenant_id, "api_key_id": key_id, "key_prefix": prefix, "provider_id": None,
            "provider_name": "openai", "deployment_id": None, "endpoint": "chat.completions", "route": "gpt-4o",
            "strategy": "", "attempts": 1, "public_model": "gpt-4o", "upstream_model": "gpt-4o",
            "prompt_tokens": 120, "completion_tokens": 40 + i % 50, "total_tokens": 160 + i % 50,
            "cached_tokens": 0, "cache_write_tokens": 0, "cache_write_1h_tokens": 0, "reasoning_tokens": 0,
            "tokens_estimated": False, "cost_usd": "0.000042", "latency_ms": 300, "ttft_ms": None, "status": "ok",
            "http_status": 200, "error_type": "", "streamed": False, "cache_hit": False, "cost_saved_usd": "0",
            "guardrails": None})})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    cpu, wall = time.process_time(), time.perf_counter()
    written = recorder.drain_all()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert written == events, (written, events)
    return written / wall, cpu * 1000 / written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=120, help="the records span the last N days")
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument("--samples", type=int, default=20, help="calls per read measured")
    parser.add_argument("--raw-samples", type=int, default=3,
                        help="calls per read measured before the rollups exist (records only); 0 skips")
    parser.add_argument("--drain-events", type=int, default=50_000)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    opts = parser.parse_args()

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gateway")
    url = base + "_ledger_bench"
    os.environ.update(DATABASE_URL=url, REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
                      LOG_LEVEL="WARNING", DEBUG="false")
    recreate(url)
    import django

    django.setup()
    from django.core.management import call_command

    try:
        call_command("migrate", verbosity=0)
        from usage import partitions

        partitions.ensure(first=datetime.now(UTC) - timedelta(days=opts.days))
        tenants = setup_tenants(opts.tenants)
        print(f"generating {opts.records:,} records…", file=sys.stderr, flush=True)
        load = generate(url, tenants, opts.records, opts.days)
        raw = reads(tenants, opts.raw_samples, "bench-staff-raw") if opts.raw_samples else []
        rolled = time.perf_counter()
        from usage import rollups

        since = datetime.now(UTC) - timedelta(days=opts.days + 1)
        rollups.rollup_since(since, "hour")
        rollups.rollup_since(since, "day")
        rolled = time.perf_counter() - rolled
        measured = reads(tenants, opts.samples, "bench-staff")
        name, rows, seconds = drop_month()
        rate, cpu = drain(tenants, opts.drain_events)
        print(f"\n{opts.records:,} usage records over {opts.days} days, {opts.tenants} tenants, "
              f"{len(partitions.existing())} monthly partitions left, {os.cpu_count()} CPUs\n")
        print("| measure | p50 | p95 |\n| --- | ---: | ---: |")
        print(f"| generate with COPY | {opts.records / load:,.0f} records/s | {load:.0f} s in all |")
        print(f"| compute the hourly and daily rollups of {opts.days} days | {rolled:.0f} s in all | - |")
        for what, p50, p95 in raw:
            print(f"| {what}, before any rollup (records only) | {p50:.0f} ms | {p95:.0f} ms |")
        for what, p50, p95 in measured:
            print(f"| {what} | {p50:.0f} ms | {p95:.0f} ms |")
        print(f"| drop the oldest month ({name}, {rows:,} records) | {seconds * 1000:.0f} ms | - |")
        print(f"| drain {opts.drain_events:,} buffered events into the full table | {rate:,.0f} records/s "
              f"| {cpu:.4f} ms CPU per record |")
    finally:
        if not opts.keep:
            drop(url)


if __name__ == "__main__":
    main()
