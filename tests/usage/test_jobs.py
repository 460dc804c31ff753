"""The Celery Beat jobs: health checks, rollups, retention and emailed cost reports,
each safe to run twice and on two workers at once; a real Celery worker and a
real SMTP server."""

import csv
import io
import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management import call_command

from keys import services as key_services
from providers.models import HealthCheck
from tenants.models import Membership
from tests.conftest import ROOT, free_port, make_provider, user_in, wait_until
from usage import reports
from usage.models import Limit, ReportDelivery, UsageRecord, UsageRollup


def record(tenant, key, when, *, model="gpt-test", provider="mock", prompt=10, completion=20, cost="0.001",
           status="ok", latency=100, **counts):
    """A usage record; `counts` its other token columns (cached_tokens, cache_write_tokens, ...)."""
    return UsageRecord.objects.create(
        request_id=f"req_{uuid.uuid4().hex}", created_at=when, tenant=tenant, api_key=key,
        key_prefix=key.prefix if key else "", provider_name=provider, endpoint="chat.completions",
        public_model=model, prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        cost_usd=Decimal(cost), latency_ms=latency, status=status, **counts)


def test_every_job_is_scheduled_and_editable_in_the_admin(db, admin_client):
    from django_celery_beat.models import PeriodicTask

    tasks = {t.name: t for t in PeriodicTask.objects.all()}
    health = tasks["providers: health checks"]
    assert (health.task, health.interval.every, health.interval.period) == ("providers.tasks.check_health", 60,
                                                                            "seconds")
    rollup = tasks["usage: hourly and daily rollups"]
    assert (rollup.task, rollup.interval.every) == ("usage.tasks.rollup_usage", 300)
    cleanup = tasks["retention: delete expired records"]
    assert cleanup.task == "usage.tasks.cleanup_retention"
    assert (cleanup.crontab.minute, cleanup.crontab.hour, cleanup.crontab.day_of_month,
            cleanup.crontab.day_of_week) == ("30", "3", "*", "*")  # daily
    weekly = tasks["reports: weekly cost report"]
    assert weekly.crontab.day_of_week == "1" and weekly.crontab.hour == "6" and '"week"' in weekly.kwargs
    assert all(t.enabled for t in tasks.values())
    page = admin_client.get("/admin/django_celery_beat/periodictask/").content.decode()
    assert "reports: monthly cost report" in page and "providers: health checks" in page

    # An admin slows the health checks down; the next migrate (a deploy) keeps that and adds nothing twice.
    from django_celery_beat.models import IntervalSchedule

    health.interval = IntervalSchedule.objects.create(every=120, period="seconds")
    health.save()
    call_command("migrate", verbosity=0)
    assert PeriodicTask.objects.count() == len(tasks)
    assert PeriodicTask.objects.get(name="providers: health checks").interval.every == 120


def test_a_real_celery_worker_runs_the_jobs_from_the_broker(transactional_db, tenant, gateway_env, mock, settings):
    from gateway_project.celery import app
    from providers.tasks import check_health
    from usage.tasks import cleanup_retention, rollup_usage

    make_provider("openai", mock.url, name="probed")
    record(tenant, None, datetime.now(UTC))
    expired = record(tenant, None, datetime.now(UTC) - timedelta(days=settings.USAGE_RETENTION_DAYS + 1))
    app.control.purge()  # nothing but what this test sends
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "gateway_project", "worker", "--pool=solo", "--loglevel=WARNING",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env={**os.environ, **gateway_env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for task in (rollup_usage, rollup_usage, check_health, cleanup_retention):
            task.delay()
        assert wait_until(lambda: not UsageRecord.objects.filter(pk=expired.pk).exists(), timeout=60)
        # Run twice: still one hourly and one daily row, counting the one request left.
        assert [(r.granularity, r.requests) for r in UsageRollup.objects.filter(tenant=tenant).order_by(
            "granularity")] == [
            ("day", 1), ("hour", 1)]
        assert HealthCheck.objects.filter(provider__name="probed", ok=True).count() == 3  # provider, chat, embed
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert worker.returncode == 0, worker.stderr.read().decode()[-2000:]


def user(name: str, **extra):
    return get_user_model().objects.create_user(name, f"{name}@example.com", "x", **extra)


def parts(message):
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    attachment = next(message.iter_attachments())
    rows = list(csv.DictReader(io.StringIO(attachment.get_content())))
    return text, html, attachment.get_filename(), rows


def test_cost_reports_reach_each_tenants_admins_and_staff_once(transactional_db, smtp, tenant, other_tenant):
    tenant.time_zone = "Europe/Paris"
    tenant.save()
    for name, who, role in (("olga", tenant, "owner"), ("adam", tenant, "admin"), ("mia", tenant, "member"),
                            ("gus", other_tenant, "owner")):
        Membership.objects.create(tenant=who, user=user(name), role=role)
    user("sam", is_staff=True, is_superuser=True)
    user_in(tenant, "member", name="tess", email="tess@example.com")  # in the admin (is_staff), not staff
    acme_key, _ = key_services.issue(tenant, "backend")
    globex_key, _ = key_services.issue(other_tenant, "globex")
    Limit.objects.create(tenant=tenant, budget_usd=Decimal("1.00"), period="month")
    day = datetime(2026, 11, 19, 12, tzinfo=UTC)  # the report of 2026-11-19, sent on the 20th
    for _ in range(3):
        record(tenant, acme_key, day, cost="0.250000", model="gpt-test", provider="openai")
    record(tenant, acme_key, day, cost="0.100000", model="claude", provider="anthropic")
    record(tenant, acme_key, day - timedelta(days=1), cost="0.500000")  # the day before: the comparison
    record(tenant, acme_key, datetime(2026, 11, 19, 23, 30, tzinfo=UTC))  # 00:30 on the 20th in Paris
    record(other_tenant, globex_key, day, cost="9.000000", model="secret-model", provider="globex-ai")

    sent = reports.send_reports("day", today=date(2026, 11, 20))
    assert sent == 3 and len(smtp.messages) == 3
    by_to = {tuple(sorted(to)): message for to, message in smtp.messages}
    acme = by_to[("adam@example.com", "olga@example.com")]
    assert ("gus@example.com",) in by_to and ("sam@example.com",) in by_to  # no member gets a report

    text, html, filename, rows = parts(acme)
    assert acme["subject"] == "[LLM Gateway] Acme: daily cost report, 2026-11-19"
    assert "Requests: 4 (+300.0% on the period before)" in text and "Cost:     $0.850000 (+70.0%" in text
    assert "gpt-test: 3 requests, 90 tokens, $0.750000" in text and "claude" in text
    assert "whole tenant, Calendar month: $1.350000 of $1.000000 (135%)" in text  # as of the report's end
    assert "<strong>$0.850000</strong>" in html
    assert filename == "usage-acme-day-2026-11-19.csv"
    assert sum(int(r["requests"]) for r in rows) == 4
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal("0.85")
    assert {r["tenant"] for r in rows} == {"acme"}
    raw = acme.as_string()
    assert "globex" not in raw and "secret-model" not in raw and "9.000000" not in raw  # nothing of another tenant

    overall = by_to[("sam@example.com",)]
    text, _, _, rows = parts(overall)
    assert "Requests: 6" in text and "Globex: 1 requests, $9.000000" in text
    assert {r["tenant"] for r in rows} == {"acme", "globex"}

    # The job runs again (or on a second worker): nothing is sent twice.
    assert reports.send_reports("day", today=date(2026, 11, 20)) == 0 and len(smtp.messages) == 3
    assert ReportDelivery.objects.filter(sent_at__isnull=False).count() == 3
    assert reports.send_reports("week", today=date(2026, 11, 23)) == 3
    assert reports.send_reports("month", today=date(2026, 12, 1)) == 3
    weekly = [m for _, m in smtp.messages if "weekly" in m["subject"]]
    assert weekly and "2026-11-16 to 2026-11-22" in weekly[0]["subject"]


def test_a_failed_send_is_retried_on_the_next_run(transactional_db, tenant, settings, smtp):
    Membership.objects.create(tenant=tenant, user=user("olga"), role="owner")
    record(tenant, None, datetime(2026, 11, 19, 12, tzinfo=UTC))
    port = settings.EMAIL_PORT
    settings.EMAIL_PORT = free_port()  # nobody listens there
    assert reports.send_reports("day", today=date(2026, 11, 20)) == 0
    assert not ReportDelivery.objects.filter(tenant=tenant).exists()
    settings.EMAIL_PORT = port
    assert reports.send_reports("day", today=date(2026, 11, 20)) == 1
    assert [to for to, _ in smtp.messages] == [["olga@example.com"]]
