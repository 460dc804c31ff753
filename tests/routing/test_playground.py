"""The admin's playground, over HTTP against a real gateway process: a signed-in user
calls with a key they may use, the answer streams in, and the call is billed to the
key's tenant like any API call."""

import re
from decimal import Decimal

import httpx
import orjson
import pytest

from keys import services as key_services
from tenants.models import Membership
from tests.conftest import usage_record, wait_until

PASSWORD = "A-long-pass-phrase-7"


def signed_in(gateway, user) -> httpx.Client:
    client = httpx.Client(base_url=gateway.url, timeout=20)
    client.get("/admin/login/")
    response = client.post("/admin/login/?next=/admin/", data={
        "username": user.username, "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"]})
    assert response.status_code == 302, response.text[:500]
    return client


def play(client: httpx.Client, **form) -> httpx.Response:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "Say hello"}], "stream": True, **form}
    return client.post("/admin/playground/call", content=orjson.dumps(body),
                       headers={"content-type": "application/json", "x-csrftoken": client.cookies["csrftoken"]})


def sse(text: str) -> tuple[list[dict], dict]:
    chunks, gateway = [], {}
    for block in text.split("\n\n"):
        data = "".join(line[6:] for line in block.splitlines() if line.startswith("data: "))
        if not data or data == "[DONE]":
            continue
        if block.startswith("event: gateway"):
            gateway = orjson.loads(data)
        else:
            chunks.append(orjson.loads(data))
    return chunks, gateway


@pytest.fixture()
def staff(transactional_db, django_user_model):
    return django_user_model.objects.create_superuser("staff", "staff@example.com", PASSWORD)


@pytest.fixture()
def ready(gateway, mock_provider, api_key, key_client):
    """The gateway serves gpt-test (key_client waits until it does)."""
    return api_key[0]


def test_staff_stream_in_the_playground_and_the_tenant_is_billed(gateway, staff, ready, mock):
    client = signed_in(gateway, staff)
    response = play(client, key=ready.id, temperature=0.2, max_tokens=50)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks, facts = sse(response.text)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert len(chunks) > 3 and text
    assert facts["status"] == "ok" and facts["attempts"] == 1 and facts["provider_name"] == "mock"
    assert facts["upstream_model"] == "mock-gpt" and facts["deployment_id"] == int(response.headers["x-gateway-deployment"])
    assert facts["prompt_tokens"] > 0 and facts["completion_tokens"] > 0
    assert Decimal(facts["cost_usd"]) > 0 and facts["ttft_ms"] is not None and facts["latency_ms"] >= facts["ttft_ms"]

    record = usage_record(facts["request_id"])
    assert record is not None and record.tenant_id == ready.tenant_id and record.api_key_id == ready.id
    assert record.cost_usd == Decimal(facts["cost_usd"]) and record.streamed
    assert record.completion_tokens == facts["completion_tokens"]
    # What the upstream was sent is what the form said.
    sent = httpx.get(mock.url + "/_mock/last").json()["body"]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50


def test_json_answer_carries_the_same_facts(gateway, staff, ready):
    client = signed_in(gateway, staff)
    page = client.get("/admin/playground/").text
    choices = orjson.loads(re.search(r'id="playground-choices" type="application/json">(.*?)</script>', page).group(1))
    # The key's chat models are offered; its embedding model is not.
    assert [c["models"] for c in choices if c["id"] == ready.id] == [["gpt-test"]]
    response = play(client, key=ready.id, stream=False)
    assert response.status_code == 200
    body = response.json()
    assert body["response"]["choices"][0]["message"]["content"]
    assert body["gateway"]["total_tokens"] == body["response"]["usage"]["total_tokens"]
    record = usage_record(body["gateway"]["request_id"])
    assert record is not None and not record.streamed and record.tenant_id == ready.tenant_id


def test_members_use_only_their_own_keys(gateway, ready, tenant, other_tenant, django_user_model):
    member = django_user_model.objects.create_user("acme-member", password=PASSWORD, is_staff=True)
    Membership.objects.create(tenant=tenant, user=member, role="member")
    mine, _ = key_services.issue(tenant, "member key", created_by=member)
    foreign, _ = key_services.issue(other_tenant, "globex key")
    client = signed_in(gateway, member)

    page = client.get("/admin/playground/").text
    assert "member key" in page and "test key" not in page and "globex key" not in page
    for key in (ready, foreign):  # a colleague's key, another tenant's key: as if absent
        refused = play(client, key=key.id)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "key_not_found"
    allowed = play(client, key=mine.id)
    assert allowed.status_code == 200
    _, facts = sse(allowed.text)
    assert usage_record(facts["request_id"]).api_key_id == mine.id


def test_bad_calls_get_clear_errors_and_nothing_is_billed(gateway, staff, ready):
    from usage.models import UsageRecord

    client = signed_in(gateway, staff)
    before = UsageRecord.objects.count()
    assert play(client, key=ready.id, model="no-such-model").status_code == 404
    bad = play(client, key=ready.id, temperature=7)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
    assert play(client, key="1").json()["error"]["param"] == "key"
    no_csrf = client.post("/admin/playground/call", content=b"{}", headers={"content-type": "application/json"})
    assert no_csrf.status_code == 403
    anonymous = httpx.post(gateway.url + "/admin/playground/call", content=b"{}")
    assert anonymous.status_code == 403
    # Refused calls are recorded as errors (nothing billed), like the API's.
    wait_until(lambda: UsageRecord.objects.count() >= before + 2)
    assert all(r.cost_usd == 0 for r in UsageRecord.objects.all()[before:])


def test_tools_and_a_template_go_to_the_api_and_the_page_offers_the_tenants_templates(gateway, staff, ready, mock,
                                                                                      tenant, other_tenant):
    from routing.prompts import services
    from routing.prompts.models import PromptTemplate

    ours = PromptTemplate.objects.create(tenant=tenant, name="greet")
    services.prompt_publish(ours, [{"role": "system", "content": "Greet {{ name }}."}], label="production")
    theirs = PromptTemplate.objects.create(tenant=other_tenant, name="theirs")
    services.prompt_publish(theirs, [{"role": "system", "content": "x"}])
    client = signed_in(gateway, staff)
    page = client.get("/admin/playground/").text
    choices = orjson.loads(re.search(r'id="playground-choices" type="application/json">(.*?)</script>', page).group(1))
    offered = next(c for c in choices if c["id"] == ready.id)["templates"]
    assert offered == [{"name": "greet", "labels": {"production": 1},
                        "versions": [{"number": 1, "variables": ["name"], "model": "", "note": ""}]}]

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    response = wait_until(lambda: (r := play(client, key=ready.id, stream=False, tools=[tool],
                                             prompt={"id": "greet", "variables": {"name": "Ada"}})
                                   ).status_code == 200 and r)
    assert response, "the gateway never served the template"
    message = response.json()["response"]["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["name"] == "get_weather"  # the mock calls an offered tool
    sent = httpx.get(mock.url + "/_mock/last").json()["body"]
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][0] == {"role": "system", "content": "Greet Ada."}
    assert response.json()["gateway"]["prompt_template"] == "greet"
    bad = play(client, key=ready.id, tools=[{"type": "function"}])
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tools[0]"
