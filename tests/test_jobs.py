"""The Celery Beat jobs: health checks, rollups, retention and emailed cost reports,
each safe to run twice and on two workers at once; a real Celery worker and a
real SMTP server."""

import csv
import email
import email.policy
import io
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from aiosmtpd.controller import Controller
from django.contrib.auth import get_user_model
from django.db import connection

from keys.models import ApiKey
from providers import health
from providers.models import Deployment, HealthCheck
from routing import breakers
from tenants.models import AuditLog, Membership
from tests.conftest import ROOT, free_port, make_provider, wait_until
from usage import reports, retention, rollups
from usage.models import Limit, ReportDelivery, UsageRecord, UsageRollup


def record(tenant, key, when, *, model="gpt-test", provider="mock", prompt=10, completion=20, cost="0.001",
           status="ok", latency=100):
    return UsageRecord.objects.create(
        request_id=f"req_{uuid.uuid4().hex}", created_at=when, tenant=tenant, api_key=key,
        key_prefix=key.prefix if key else "", provider_name=provider, endpoint="chat.completions",
        public_model=model, prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        cost_usd=Decimal(cost), latency_ms=latency, status=status)


def test_every_job_is_scheduled_and_editable_in_the_admin(db, admin_client):
    from django_celery_beat.models import PeriodicTask

    tasks = {t.name: t for t in PeriodicTask.objects.all()}
    assert tasks["providers: health checks"].interval.every == 60
    assert tasks["usage: hourly and daily rollups"].task == "usage.tasks.rollup_usage"
    weekly = tasks["reports: weekly cost report"]
    assert weekly.crontab.day_of_week == "1" and weekly.crontab.hour == "6" and '"week"' in weekly.kwargs
    assert tasks["retention: delete expired records"].crontab.hour == "3"
    page = admin_client.get("/admin/django_celery_beat/periodictask/").content.decode()
    assert "reports: monthly cost report" in page and "providers: health checks" in page


def test_rollups_add_up_exactly_and_racing_or_rerunning_changes_nothing(transactional_db, tenant):
    key_a, _ = ApiKey.issue(tenant, "a")
    key_b, _ = ApiKey.issue(tenant, "b")
    hour = datetime(2026, 11, 20, 14, tzinfo=UTC)
    latencies = list(range(10, 510, 10))  # 50 values
    for i, latency in enumerate(latencies):
        record(tenant, key_a if i % 2 else key_b, hour + timedelta(seconds=i * 60), latency=latency,
               cost="0.000123456789", status="ok" if i % 10 else "upstream_error",
               model="gpt-test" if i < 40 else "embed-test")
    record(tenant, key_a, hour + timedelta(hours=1))  # the next hour: not in this bucket

    def run():
        try:
            rollups.rollup("hour", hour)
            rollups.rollup("day", hour)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rollups.rollup("hour", hour)  # and once more

    hourly = UsageRollup.objects.filter(granularity="hour", bucket=hour)
    assert hourly.count() == 4  # 2 keys x 2 models
    assert sum(r.requests for r in hourly) == 50 and sum(r.errors for r in hourly) == 5
    assert sum(r.cost_usd for r in hourly) == Decimal("0.000123456789") * 50
    assert sum(r.prompt_tokens for r in hourly) == 500
    day = UsageRollup.objects.filter(granularity="day", bucket=hour.replace(hour=0))
    assert sum(r.requests for r in day) == 51
    # percentile_cont over one group: key_b's gpt-test calls (even i < 40: latencies 10, 30, ..., 390).
    group = hourly.get(api_key=key_b, public_model="gpt-test")
    mine = [lat for i, lat in enumerate(latencies) if i % 2 == 0 and i < 40]
    assert group.latency_p50_ms == round(rollups._percentile(mine, 0.5)) == 200
    assert group.latency_p95_ms == round(rollups._percentile(mine, 0.95))


def test_health_checks_are_kept_shown_and_open_or_close_breakers(transactional_db, mock, admin_client):
    make_provider("openai", mock.url, name="good")
    make_provider("openai", "http://127.0.0.1:9", name="dead")
    unlisted = make_provider("openai", mock.url, name="unlisted")
    Deployment.objects.filter(provider=unlisted).update(upstream_model="no-such-model")

    checks = health.check_all()
    by_name = {(c.provider.name, c.deployment.public_model if c.deployment else None): c for c in checks}
    assert by_name[("good", None)].ok and by_name[("good", None)].models_found >= 3
    assert by_name[("good", "chat-good")].ok
    assert not by_name[("dead", None)].ok and "could not connect" in by_name[("dead", None)].error
    assert not by_name[("unlisted", "chat-unlisted")].ok
    assert "does not list the model 'no-such-model'" in by_name[("unlisted", "chat-unlisted")].error
    assert HealthCheck.objects.count() == len(checks)

    dead = Deployment.objects.get(public_model="chat-dead")
    assert breakers.shared_state(dead.id).startswith("open")
    assert breakers.shared_state(by_name[("good", "chat-good")].deployment.id) == "closed"

    # The provider comes back; once the cooldown has run out, the next check closes the breaker.
    dead.provider.base_url = mock.url + "/v1"
    dead.provider.save()
    breakers.force(dead.id, time.time() - 1, "open", "cooldown over (test)")
    health.check_all()
    assert breakers.shared_state(dead.id) == "closed"

    page = admin_client.get("/admin/providers/provider/").content.decode()
    assert "last health check" in page.lower() and "ok (" in page
    assert "health check failed" in "".join(
        __import__("routing.models", fromlist=["CircuitEvent"]).CircuitEvent.objects.values_list("reason", flat=True))


def test_a_real_celery_worker_runs_the_jobs_from_the_broker(transactional_db, tenant, gateway_env, mock):
    from providers.tasks import check_health
    from usage.tasks import rollup_usage

    make_provider("openai", mock.url, name="probed")
    record(tenant, None, datetime.now(UTC))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "gateway_project", "worker", "--pool=solo", "--loglevel=WARNING",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env={**__import__("os").environ, **gateway_env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        rollup_usage.delay()
        check_health.delay()
        assert wait_until(lambda: UsageRollup.objects.filter(tenant=tenant).count() == 2, timeout=60)
        assert wait_until(lambda: HealthCheck.objects.filter(provider__name="probed", ok=True).exists(), timeout=60)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_retention_deletes_what_expired_per_tenant_in_batches(transactional_db, tenant, other_tenant, settings):
    settings.USAGE_RETENTION_DAYS, settings.AUDIT_RETENTION_DAYS, settings.HEALTH_RETENTION_DAYS = 30, 60, 14
    settings.RETENTION_BATCH = 3
    tenant.retention_days = 7
    tenant.save()
    now = datetime.now(UTC)
    for days, count in ((1, 2), (10, 4), (40, 5)):
        for _ in range(count):
            record(tenant, None, now - timedelta(days=days))
            record(other_tenant, None, now - timedelta(days=days))
    for days in (10, 90):
        entry = AuditLog.record("test", tenant=tenant)
        AuditLog.objects.filter(pk=entry.pk).update(created_at=now - timedelta(days=days))
        entry = AuditLog.record("test", tenant=other_tenant)
        AuditLog.objects.filter(pk=entry.pk).update(created_at=now - timedelta(days=days))
    provider = make_provider("openai", "http://127.0.0.1:9", name="old")
    HealthCheck.objects.create(provider=provider, checked_at=now - timedelta(days=20), ok=True)
    HealthCheck.objects.create(provider=provider, checked_at=now - timedelta(days=1), ok=True)

    deleted = retention.cleanup()
    assert deleted == {"usage records": 4 + 5 + 5, "audit entries": 3, "health checks": 1, "rollups": 0}
    assert UsageRecord.objects.filter(tenant=tenant).count() == 2  # 7 days
    assert UsageRecord.objects.filter(tenant=other_tenant).count() == 2 + 4  # 30 days
    assert AuditLog.objects.filter(tenant=other_tenant).count() == 1
    assert retention.cleanup() == {"usage records": 0, "audit entries": 0, "health checks": 0, "rollups": 0}


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content,
                                                                          policy=email.policy.default)))
        return "250 OK"


@pytest.fixture()
def smtp(settings):
    """A real SMTP server on loopback, and Django pointed at it."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    yield inbox
    controller.stop()


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
    user("sam", is_staff=True)
    acme_key, _ = ApiKey.issue(tenant, "backend")
    globex_key, _ = ApiKey.issue(other_tenant, "globex")
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
