"""The admin in a real browser: Debian's Chromium, headless, driven by Playwright.

Staff and a tenant admin sign in; the tenant admin creates a key, sees its secret
once and copies it, calls the API with it, chats with the playground (streaming on)
and finds the call on the dashboard and the key's creation in the audit log.
A screenshot of every page is saved under tests/screenshots/ (BROWSER_SCREENSHOTS
to put them elsewhere).
"""

import os
import re
import shutil
from pathlib import Path

import openai
import pytest
from playwright.sync_api import expect, sync_playwright

from tenants.models import AuditLog, Membership
from tests.conftest import ROOT, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("BROWSER_SCREENSHOTS", ROOT / "tests" / "screenshots"))
PASSWORD = "A-long-pass-phrase-7"


@pytest.fixture(autouse=True)
def _orm_beside_playwright(gateway, mock_upstream, monkeypatch):
    """Playwright's sync API leaves its event loop marked running in this thread between
    calls, and Django refuses ORM calls while a loop runs; the ORM calls here are plain
    synchronous test code, so allow them, for these tests only. The servers start first
    (they take this process's environment, which must not carry this)."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, gateway):
    context = browser.new_context(base_url=gateway.url, viewport={"width": 1400, "height": 1000},
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert (SHOTS / f"{name}.png").stat().st_size > 10_000


def sign_in(page, username: str) -> None:
    page.goto("/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#dashboard")).to_be_visible()


def dashboard_requests(page) -> str:
    """The dashboard's request count, freshly loaded."""
    page.goto("/admin/")
    expect(page.locator("#dashboard")).to_have_attribute("data-loaded", re.compile(r"\d+"))
    return page.locator("[data-total=requests]").inner_text()


@pytest.fixture()
def people(tenant, django_user_model):
    staff = django_user_model.objects.create_superuser("staff", "staff@example.com", PASSWORD)
    admin = django_user_model.objects.create_user("acme-admin", password=PASSWORD, is_staff=True)
    Membership.objects.create(tenant=tenant, user=admin, role="admin")
    return staff, admin


def test_tenant_admin_creates_a_key_chats_in_the_playground_and_sees_it_everywhere(
        page, gateway, mock_provider, key_client, people, tenant, other_tenant):
    _, admin = people
    sign_in(page, "acme-admin")

    # Create a key: its secret is shown once, with a copy button.
    page.goto("/admin/keys/apikey/add/")
    page.select_option("#id_tenant", str(tenant.id))
    page.fill("#id_name", "browser key")
    shot(page, "01-key-add")
    page.click("input[name=_save]")
    secret = page.locator("#api-key-secret").inner_text().strip()
    assert secret.startswith("sk-gw-")
    page.click("#copy-api-key")
    expect(page.locator("#copy-status")).to_have_text(re.compile("Copied|Selected"))
    shot(page, "02-key-secret")
    # The secret is real: the OpenAI SDK calls with it.
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0, timeout=20)
    assert client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}]).choices
    # And it is never shown again.
    page.goto("/admin/keys/apikey/")
    expect(page.locator("#result_list")).to_contain_text("browser key")
    assert secret not in page.content()

    # The playground, streaming: the answer grows chunk by chunk, then the call's facts.
    page.goto("/admin/playground/")
    page.select_option("#playground-key", page.locator("#playground-key option", has_text="browser key")
                       .get_attribute("value"))
    page.select_option("#playground-model", "gpt-test")
    page.fill("#playground-system", "You are terse.")
    page.fill("#playground-user", "Tell me a story [[mock chunks=25 chunk_delay_ms=80]]")
    assert page.is_checked("#playground-stream")
    page.click("#playground-send")
    expect(page.locator("#playground-answer")).not_to_be_empty()
    partial = page.locator("#playground-answer").inner_text()
    expect(page.locator("[data-fact=cost]")).to_have_text(re.compile(r"^\$0\.\d+"), timeout=20_000)
    answer = page.locator("#playground-answer").inner_text()
    assert len(answer) > len(partial) > 0  # it arrived in pieces, not at once
    expect(page.locator("[data-fact=status]")).to_have_text("ok")
    expect(page.locator("[data-fact=deployment]")).to_contain_text("mock / mock-gpt")
    expect(page.locator("[data-fact=attempts]")).to_have_text("1")
    expect(page.locator("[data-fact=tokens]")).to_contain_text(re.compile(r"\d+ in \+ 25 out"))
    expect(page.locator("[data-fact=ttft]")).to_have_text(re.compile(r"\d+ ms"))
    expect(page.locator("[data-fact=latency]")).to_have_text(re.compile(r"\d+ ms"))
    request_id = page.locator("[data-fact=request_id]").inner_text()
    shot(page, "03-playground")

    # The dashboard counts both calls (API and playground) once they are written.
    assert wait_until(lambda: dashboard_requests(page) == "2", timeout=15, interval=0.5)
    expect(page.locator("#by-model")).to_contain_text("gpt-test")
    expect(page.locator("#by-tenant")).to_contain_text("Acme")
    expect(page.locator("#by-tenant")).not_to_contain_text("Globex")
    expect(page.locator("#dashboard-health")).to_contain_text("gpt-test")
    assert page.locator("[data-total=cost_usd]").inner_text().startswith("$0.")
    page.click("button[data-range='1h']")
    expect(page.locator("#dashboard")).to_have_attribute("data-shown", "1h")
    expect(page.locator("[data-total=requests]")).to_have_text("2")
    shot(page, "04-dashboard-tenant-admin")

    # The usage record of the playground call, billed to the tenant.
    page.goto(f"/admin/usage/usagerecord/?q={request_id}")
    expect(page.locator("#result_list")).to_contain_text("gpt-test")
    shot(page, "05-usage")

    # The audit log: the sign-in, the key's creation and its one reveal.
    page.goto("/admin/tenants/auditlog/")
    log = page.locator("#result_list")
    for action in ("login", "create", "key.reveal"):
        expect(log).to_contain_text(action)
    assert AuditLog.objects.filter(action="key.reveal", tenant=tenant, actor=admin).count() == 1
    shot(page, "06-audit-log")


def test_staff_see_every_tenant_on_the_dashboard(page, gateway, key_client, people, other_tenant):
    key_client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    sign_in(page, "staff")
    expect(page.locator("#dashboard-tenant option")).to_have_count(3)  # all, Acme, Globex
    assert wait_until(lambda: dashboard_requests(page) == "1", timeout=15, interval=0.5)
    expect(page.locator("#by-tenant")).to_contain_text("Acme")
    for link in ("#nav-playground", "a[href='/admin/auth/user/']", "a[href='/admin/tenants/auditlog/']"):
        expect(page.locator(link).first).to_be_visible()
    shot(page, "07-dashboard-staff")
    page.goto("/admin/playground/")
    expect(page.locator("#playground-key option")).to_have_count(1)
    shot(page, "08-playground-staff")


def test_the_dashboard_draws_the_forecast_and_a_tenant_admin_acknowledges_an_anomaly(page, people, tenant, api_key):
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from usage.models import SpendAnomaly, UsageRecord

    key = api_key[0]
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    UsageRecord.objects.bulk_create([
        UsageRecord(request_id=f"req_forecast_{d}", created_at=today - timedelta(days=d), tenant=tenant, api_key=key,
                    key_prefix=key.prefix, endpoint="chat.completions", public_model="gpt-big",
                    cost_usd=Decimal(6 + d % 3)) for d in range(1, 8)])  # $6-8 a day: $7 on average
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    SpendAnomaly.objects.create(tenant=tenant, api_key=key, key_prefix=key.prefix, public_model="gpt-big",
                                started_at=hour, last_hour=hour, metrics="spend, requests", spend_usd="30",
                                baseline_spend_usd="3", requests=120, baseline_requests=12, score=40)
    sign_in(page, "acme-admin")
    page.click("button[data-range='30d']")
    expect(page.locator("#dashboard")).to_have_attribute("data-shown", "30d")
    expect(page.locator("#dashboard-forecast")).to_have_text(re.compile(r"^\$\d"))
    expect(page.locator("#dashboard-forecast-range")).to_contain_text("$")
    labels = page.evaluate("Chart.getChart('chart-cost').data.datasets.map(d => d.label)")
    assert labels == ["cost (USD)", "forecast at the current rate"]
    assert page.evaluate("Chart.getChart('chart-cost').data.datasets[1].data[0]") == 7
    expect(page.locator("#dashboard-anomalies")).to_contain_text(key.prefix)
    expect(page.locator("#dashboard-anomalies")).to_contain_text("$30")
    shot(page, "09-dashboard-forecast-anomalies")

    page.click("#dashboard-anomalies a")
    expect(page.locator("#content")).to_contain_text("10.0x the median of $3.00")
    shot(page, "10-spend-anomaly")
    page.goto("/admin/usage/spendanomaly/")
    page.check("#result_list input.action-select")
    page.select_option("select[name=action]", "acknowledge")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("1 anomalies acknowledged")
    page.goto("/admin/")
    expect(page.locator("#dashboard")).to_have_attribute("data-loaded", re.compile(r"\d+"))
    expect(page.locator("#dashboard-anomalies")).to_contain_text("Nothing in this range.")
