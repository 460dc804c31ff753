"""The playground in a real browser (Debian's Chromium, headless, Playwright): a conversation of several
turns, a prompt template filled with its variables, and three models compared side by side, streaming at
once, each with its tokens, cost, latency and time to first token, and each billed like any call.
Screenshots go where the admin's go (tests/screenshots/, or BROWSER_SCREENSHOTS)."""

import re
from decimal import Decimal

import httpx
import pytest
from playwright.sync_api import expect

from providers.models import Deployment
from routing.prompts import services
from routing.prompts.models import PromptTemplate
from tests.conftest import usage_record, wait_until
from tests.gateway_project import test_admin_browser as admin_browser

# The admin's browser tests' fixtures: one Chromium per module, a page per test, staff and a tenant admin.
_orm_beside_playwright = admin_browser._orm_beside_playwright
browser, page, people = admin_browser.browser, admin_browser.page, admin_browser.people
shot, sign_in = admin_browser.shot, admin_browser.sign_in

SLOW = "[[mock chunks=25 chunk_delay_ms=120]]"


def last_sent(mock) -> dict:
    return httpx.get(mock.url + "/_mock/last").json()["body"]


def open_playground(page, key) -> None:
    page.goto("/admin/playground/")
    page.select_option("#playground-key", str(key.id))


def test_a_conversation_of_several_turns(page, gateway, mock, key_client, api_key, people):
    sign_in(page, "staff")
    open_playground(page, api_key[0])
    page.select_option("#playground-model", "gpt-test")
    page.fill("#playground-system", "You are terse.")
    page.fill("#playground-user", "What is a gateway?")
    page.click("#playground-send")
    expect(page.locator("[data-fact=cost]")).to_have_text(re.compile(r"^\$0\.\d+"), timeout=20_000)
    turns = page.locator("#playground-conversation .gw-turn")
    expect(turns).to_have_count(2)
    first_answer = page.locator("#playground-answer").inner_text()
    expect(turns.nth(1)).to_contain_text(first_answer)
    expect(page.locator("#playground-user")).to_have_value("")

    page.fill("#playground-user", "And why would I want one?")
    page.click("#playground-send")
    expect(turns).to_have_count(4, timeout=20_000)
    sent = last_sent(mock)["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "What is a gateway?" and sent[2]["content"] == first_answer
    assert sent[3]["content"] == "And why would I want one?"
    expect(turns.nth(3)).to_have_attribute("data-role", "assistant")
    shot(page, "11-playground-conversation")

    page.click("#playground-new")
    expect(turns).to_have_count(0)


def test_a_template_with_variables(page, gateway, mock, key_client, api_key, people, tenant):
    template = PromptTemplate.objects.create(tenant=tenant, name="support")
    services.prompt_publish(template, [{"role": "system", "content": "You help {{ customer }} with {{ product }}."}],
                            note="first", label="production")
    services.prompt_publish(template, [{"role": "system", "content": "Greet {{ customer }}."}], note="short")

    def served() -> bool:  # the gateway process has the templates once the change reached it
        response = httpx.post(gateway.url + "/v1/chat/completions", timeout=20,
                              headers={"authorization": f"Bearer {api_key[1]}"},
                              json={"model": "gpt-test", "messages": [], "gateway_prompt": {
                                  "id": "support", "variables": {"customer": "x", "product": "y"}}})
        return response.status_code == 200

    assert wait_until(served, timeout=10)
    sign_in(page, "staff")
    open_playground(page, api_key[0])
    page.select_option("#playground-template", "support")
    expect(page.locator("#playground-variables input")).to_have_count(2)  # production: v1's two variables
    page.fill("#playground-var-customer", "Ada")
    page.fill("#playground-var-product", "invoices")
    page.fill("#playground-user", "Where is my invoice?")
    page.click("#playground-send")
    expect(page.locator("[data-fact=template]")).to_have_text("support v1", timeout=20_000)
    sent = last_sent(mock)["messages"]
    assert sent[0] == {"role": "system", "content": "You help Ada with invoices."}
    assert sent[-1] == {"role": "user", "content": "Where is my invoice?"}
    record = usage_record(page.locator("[data-fact=request_id]").inner_text())
    assert (record.prompt_template, record.prompt_version, record.tenant_id) == ("support", 1, tenant.id)
    shot(page, "12-playground-template")

    page.select_option("#playground-template-version", "2")  # v2 takes one variable: the form follows
    expect(page.locator("#playground-variables input")).to_have_count(1)
    expect(page.locator("#playground-var-customer")).to_have_value("Ada")  # kept
    page.fill("#playground-var-customer", "")
    page.fill("#playground-user", "Hi")
    page.click("#playground-send")
    expect(page.locator("[data-fact=template]")).to_have_text("support v2", timeout=20_000)
    sent = last_sent(mock)["messages"]  # the template's turns first, then the conversation so far
    assert sent[0] == {"role": "system", "content": "Greet ."} and sent[-1] == {"role": "user", "content": "Hi"}
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]


def test_three_models_compared_side_by_side_streaming_at_once(page, gateway, mock, key_client, api_key, people,
                                                              mock_provider):
    for name in ("gpt-b", "gpt-c"):
        Deployment.objects.create(provider=mock_provider, public_model=name, upstream_model=f"mock-{name}",
                                  input_price_per_mtok="0.5", output_price_per_mtok="1.5")
    assert wait_until(lambda: {"gpt-b", "gpt-c"} <= {m.id for m in key_client.models.list()}, timeout=10)
    sign_in(page, "staff")
    open_playground(page, api_key[0])
    page.check("#playground-compare")
    for name in ("gpt-test", "gpt-b", "gpt-c"):
        page.check(f"#playground-compare-models input[data-model='{name}']")
    page.fill("#playground-user", f"Tell me a story {SLOW}")
    page.click("#playground-send")
    columns = page.locator("#playground-columns .gw-column")
    expect(columns).to_have_count(3)
    # All three are streaming at the same time: each has text while none has finished (no cost yet).
    page.wait_for_function("""() => [...document.querySelectorAll('.gw-column-answer')]
        .every(a => a.textContent.length > 0)""", timeout=20_000)
    unfinished = page.evaluate("""() => [...document.querySelectorAll('.gw-column [data-fact=cost]')]
        .filter(d => d.textContent === '–').length""")
    assert unfinished == 3
    shot(page, "13-playground-compare-streaming")

    request_ids = []
    for name in ("gpt-test", "gpt-b", "gpt-c"):
        column = page.locator(f"#playground-columns .gw-column[data-model='{name}']")
        expect(column.locator(".gw-column-model")).to_have_text(name)
        expect(column.locator("[data-fact=cost]")).to_have_text(re.compile(r"^\$0\.\d+"), timeout=30_000)
        expect(column.locator("[data-fact=tokens]")).to_contain_text(re.compile(r"\d+ in \+ 25 out"))
        expect(column.locator("[data-fact=latency]")).to_have_text(re.compile(r"^\d+ ms$"))
        expect(column.locator("[data-fact=ttft]")).to_have_text(re.compile(r"^\d+ ms$"))
        request_ids.append((name, column.locator("[data-fact=request_id]").inner_text(),
                            column.locator("[data-fact=cost]").inner_text()))
    shot(page, "14-playground-compare-done")
    for name, request_id, cost in request_ids:  # each billed like any other call
        record = usage_record(request_id)
        assert record.public_model == name and record.tenant_id == api_key[0].tenant_id and record.streamed
        assert record.cost_usd == Decimal(cost.lstrip("$"))


@pytest.mark.parametrize("picked", [1, 5])
def test_compare_wants_two_to_four_models(page, gateway, mock, key_client, api_key, people, mock_provider, picked):
    for name in ("gpt-b", "gpt-c", "gpt-d", "gpt-e"):
        Deployment.objects.create(provider=mock_provider, public_model=name, upstream_model="mock-gpt")
    assert wait_until(lambda: "gpt-e" in {m.id for m in key_client.models.list()}, timeout=10)
    sign_in(page, "staff")
    open_playground(page, api_key[0])
    page.check("#playground-compare")
    boxes = page.locator("#playground-compare-models input")
    for i in range(picked):
        boxes.nth(i).check()
    page.fill("#playground-user", "hi")
    page.click("#playground-send")
    expect(page.locator("#playground-error")).to_have_text("Compare: pick two to four models.")


def test_a_tenant_admin_moves_a_label_reads_a_diff_and_an_experiments_results(page, people, tenant, api_key):
    from datetime import UTC, datetime

    from routing.experiments.models import Experiment, Variant
    from tenants.models import AuditLog
    from usage.models import Feedback, UsageRecord

    _, admin = people
    template = PromptTemplate.objects.create(tenant=tenant, name="support")
    services.prompt_publish(template, [{"role": "system", "content": "You help {{ customer }}."}], label="production")
    v2 = services.prompt_publish(template, [{"role": "system", "content": "You help {{ customer }} briefly."}],
                                 note="shorter")
    sign_in(page, "acme-admin")
    page.goto(f"/admin/routing/prompttemplate/{template.id}/change/")
    page.select_option("#id_labels-0-version", str(v2.id))
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("changed successfully")
    assert template.labels.get(name="production").version == v2
    assert AuditLog.objects.filter(action="prompt.label", actor=admin, tenant=tenant).count() == 1

    page.goto(f"/admin/routing/promptversion/{v2.id}/change/")
    diff = page.locator("#prompt-diff")
    expect(diff).to_contain_text("You help {{ customer }} briefly.")
    expect(diff.locator(".diff_add, .diff_chg").first).to_be_visible()
    shot(page, "15-prompt-version-diff")

    experiment = Experiment.objects.create(tenant=tenant, name="shorter", route="gpt-test")
    key = api_key[0]
    for variant, latency in (("control", 120), ("short", 80)):
        Variant.objects.create(experiment=experiment, name=variant)
        UsageRecord.objects.bulk_create([UsageRecord(
            request_id=f"req_{variant}_{i}", created_at=datetime.now(UTC), tenant=tenant, api_key=key,
            endpoint="chat.completions", public_model="gpt-test", latency_ms=latency + i, ttft_ms=20 + i,
            cost_usd=Decimal("0.0001"), prompt_tokens=30, completion_tokens=40, experiment_id=experiment.id,
            variant=variant) for i in range(30)])
    Feedback.objects.create(tenant=tenant, request_id="req_short_1", score=1, label="helpful")
    page.goto(f"/admin/routing/experiment/{experiment.id}/change/")
    results = page.locator("#experiment-results")
    expect(results).to_contain_text("control")
    expect(results).to_contain_text("helpful: 1")
    expect(results.locator("tr", has_text="requests")).to_contain_text("30")
    shot(page, "16-experiment-results")
