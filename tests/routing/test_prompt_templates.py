"""Prompt templates through every front: the Responses API's own `prompt`, `gateway_prompt` on chat
completions and Anthropic messages; versions and labels; variables checked; sandbox escapes refused
at publish; the usage record naming the template and version; management API, diff and audit."""

import anthropic
import httpx
import openai
import pytest
from django.core.exceptions import ValidationError

from routing.prompts import services
from routing.prompts.models import PromptTemplate
from tenants.models import AuditLog
from tests.conftest import usage_record, user_in, wait_until

V1 = [{"role": "system", "content": "You help {{ customer }} with {{ product }}."}]
V2 = [{"role": "system", "content": "Be brief with {{ customer }}; the product is {{ product }}."},
      {"role": "assistant", "content": "Hello {{ customer }}!"}]
VARIABLES = {"customer": "Ada", "product": "the gateway"}


@pytest.fixture()
def template(tenant):
    template = PromptTemplate.objects.create(tenant=tenant, name="support")
    services.prompt_publish(template, V1, model="gpt-test", parameters={"temperature": 0.3}, note="first",
                            label="production")
    services.prompt_publish(template, V2, note="shorter", label="staging")
    return template


@pytest.fixture()
def sdk(key_client, template):
    return key_client


def sent(mock) -> dict:
    return httpx.get(mock.url + "/_mock/last").json()["body"]


def wait_for_template(sdk, **extra):
    """The gateway process reloads the templates on the change's announcement: wait until it serves them."""
    def serves():
        try:
            return sdk.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}],
                                               extra_body={"gateway_prompt": {"id": "support",
                                                                              "variables": VARIABLES}}, **extra)
        except openai.NotFoundError:
            return None
    return wait_until(serves, timeout=10)


def test_chat_completions_expand_the_production_version_and_the_record_names_it(sdk, mock):
    answer = wait_for_template(sdk)
    assert answer is not None
    body = sent(mock)
    assert body["messages"] == [{"role": "system", "content": "You help Ada with the gateway."},
                                {"role": "user", "content": "hi"}]
    assert body["temperature"] == 0.3 and "gateway_prompt" not in body
    record = usage_record(answer._request_id)
    assert (record.prompt_template, record.prompt_version) == ("support", 1)


def test_a_version_number_or_a_label_picks_that_version(sdk, mock):
    assert wait_for_template(sdk)
    for version in ("2", 2, "staging"):
        answer = sdk.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}],
                                             extra_body={"gateway_prompt": {"id": "support", "version": version,
                                                                            "variables": VARIABLES}})
        body = sent(mock)
        assert [m["content"] for m in body["messages"]] == [
            "Be brief with Ada; the product is the gateway.", "Hello Ada!", "hi"]
        assert "temperature" not in body  # version 2 sets none
        assert usage_record(answer._request_id).prompt_version == 2


def test_the_responses_api_takes_its_own_prompt_and_the_template_names_the_model(sdk, mock):
    assert wait_for_template(sdk)
    response = sdk.responses.create(prompt={"id": "support", "variables": VARIABLES}, input="Where is my order?")
    assert response.output_text and response.model == "gpt-test"
    body = sent(mock)
    assert body["messages"][0] == {"role": "system", "content": "You help Ada with the gateway."}
    assert body["messages"][-1]["content"] == "Where is my order?" and body["model"] == "mock-gpt"
    record = usage_record(response._request_id)
    assert (record.endpoint, record.prompt_template, record.prompt_version) == ("responses", "support", 1)
    # The prompt alone, no input: the template's messages are the conversation.
    alone = sdk.responses.create(model="gpt-test", prompt={"id": "support", "version": "2", "variables": VARIABLES})
    assert alone.output_text and sent(mock)["messages"][-1] == {"role": "assistant", "content": "Hello Ada!"}


def test_anthropic_messages_take_the_extension_field(gateway, sdk, mock, api_key):
    assert wait_for_template(sdk)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=api_key[1], max_retries=0, timeout=20)
    message = claude.messages.create(model="gpt-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}],
                                     extra_body={"gateway_prompt": {"id": "support", "variables": VARIABLES}})
    assert message.content[0].text
    assert sent(mock)["messages"][0] == {"role": "system", "content": "You help Ada with the gateway."}
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model="gpt-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}],
                               extra_body={"gateway_prompt": {"id": "support", "variables": {"customer": "Ada"}}})
    error = caught.value.body
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"  # Anthropic's shape
    assert "product" in error["error"]["message"]


def test_missing_and_extra_variables_are_a_400_naming_them(sdk):
    assert wait_for_template(sdk)
    cases = [({"customer": "Ada"}, "Missing variables", "product"),
             ({**VARIABLES, "colour": "red", "size": "L"}, "Unknown variables", "colour, size")]
    for values, what, names in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}],
                                        extra_body={"gateway_prompt": {"id": "support", "variables": values}})
        error = caught.value.body
        assert error["param"] == "gateway_prompt.variables" and what in error["message"] and names in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="gpt-test", prompt={"id": "support", "variables": {}}, input="x")
    assert caught.value.body["param"] == "prompt.variables" and "customer, product" in caught.value.body["message"]


def test_a_variable_is_text_never_template(sdk, mock):
    assert wait_for_template(sdk)
    sdk.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}], extra_body={
        "gateway_prompt": {"id": "support", "variables": {"customer": "{{ product }}", "product": "{% x %}"}}})
    assert sent(mock)["messages"][0]["content"] == "You help {{ product }} with {% x %}."


def test_another_tenants_template_and_unknown_versions_are_not_found(sdk, other_tenant):
    theirs = PromptTemplate.objects.create(tenant=other_tenant, name="secret")
    services.prompt_publish(theirs, [{"role": "system", "content": "Theirs"}])
    assert wait_for_template(sdk)
    for ref, param in (({"id": "secret"}, "gateway_prompt.id"), ({"id": "nope"}, "gateway_prompt.id"),
                       ({"id": "support", "version": "7", "variables": VARIABLES}, "gateway_prompt.version"),
                       ({"id": "support", "version": "canary", "variables": VARIABLES}, "gateway_prompt.version")):
        with pytest.raises(openai.NotFoundError) as caught:
            sdk.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}],
                                        extra_body={"gateway_prompt": ref})
        assert caught.value.body["param"] == param and "Theirs" not in str(caught.value.body)


@pytest.mark.parametrize("text", [
    "{{ customer.__class__ }}", "{{ customer['x'] }}", "{{ customer|upper }}", "{{ cycler.__init__.__globals__ }}",
    "{{ ''.__class__.__mro__ }}", "{% for x in customer %}{{ x }}{% endfor %}", "{{ lipsum() }}",
    "{% if customer %}x{% endif %}", "{% set x = 1 %}", "{% include 'x' %}", "{{ _private }}", "{{ customer",
])
def test_sandbox_escapes_are_refused_at_publish(tenant, text):
    template = PromptTemplate.objects.create(tenant=tenant, name="escape")
    with pytest.raises(ValidationError) as caught:
        services.prompt_publish(template, [{"role": "user", "content": text}])
    assert "messages[0]" in str(caught.value)
    assert not template.versions.exists()


def test_published_versions_are_immutable(template):
    version = template.versions.get(number=1)
    version.note = "changed"
    with pytest.raises(ValidationError):
        version.save()


def test_the_management_api_publishes_moves_labels_diffs_and_audits(client, tenant, other_tenant, template):
    admin = user_in(tenant, "admin")
    client.force_login(admin)
    url = f"/api/manage/prompts/{template.id}/"
    shown = client.get(url).json()
    assert shown["labels"] == {"production": 1, "staging": 2} and [v["number"] for v in shown["versions"]] == [2, 1]
    assert shown["versions"][1]["variables"] == ["customer", "product"]

    refused = client.post(url + "publish/", {"messages": [{"role": "user", "content": "{{ a.b }}"}]},
                          content_type="application/json")
    assert refused.status_code == 400 and "attribute access" in refused.content.decode()
    published = client.post(url + "publish/", {"messages": [{"role": "user", "content": "Hi {{ customer }}"}],
                                               "note": "third", "label": "canary"}, content_type="application/json")
    assert published.status_code == 201, published.content
    assert published.json()["number"] == 3 and published.json()["author"] == admin.username

    moved = client.post(url + "label/", {"label": "production", "version": 2}, content_type="application/json")
    assert moved.status_code == 200 and moved.json()["labels"]["production"] == 2
    assert client.post(url + "label/", {"label": "production", "version": 9},
                       content_type="application/json").status_code == 404

    diff = client.get(url + "diff/?from=1&to=2").json()["diff"]
    assert "-    You help {{ customer }} with {{ product }}." in diff
    assert "+    Be brief with {{ customer }}; the product is {{ product }}." in diff
    assert "-parameter temperature: 0.3" in diff

    actions = list(AuditLog.objects.filter(tenant=tenant, actor=admin).values_list("action", flat=True))
    assert actions.count("prompt.publish") == 1 and actions.count("prompt.label") == 2  # canary, production moved
    label_row = AuditLog.objects.filter(action="prompt.label", actor=admin, object_repr__startswith="production").get()
    assert label_row.changes["version"]  # the move, with what it pointed at before

    theirs = PromptTemplate.objects.create(tenant=other_tenant, name="theirs")
    assert client.get(f"/api/manage/prompts/{theirs.id}/").status_code == 404
    assert client.post(f"/api/manage/prompts/{theirs.id}/publish/", {"messages": V1},
                       content_type="application/json").status_code == 404


def test_the_admin_publishes_a_version_and_shows_its_diff(client, tenant, other_tenant, template):
    import json

    owner = user_in(tenant, "owner")
    client.force_login(owner)
    v2 = template.versions.get(number=2)
    page = client.get(f"/admin/routing/promptversion/{v2.id}/change/").content.decode()
    assert 'id="prompt-diff"' in page and "Be brief with" in page and "You help" in page
    assert 'name="_save"' not in page  # a published version is shown, never edited

    added = client.post("/admin/routing/promptversion/add/", {
        "template": template.id, "messages": json.dumps([{"role": "system", "content": "Hello <b>{{ customer }}"}]),
        "model": "gpt-test", "parameters": "{}", "note": "from the admin", "label": "production"})
    assert added.status_code == 302, added.content.decode()[:2000]
    v3 = template.versions.get(number=3)
    assert v3.author == owner and v3.variables == ["customer"] and template.labels.get(name="production").version == v3
    assert AuditLog.objects.filter(action="prompt.publish", actor=owner, object_id=str(v3.pk)).exists()
    against = client.get(f"/admin/routing/promptversion/{v3.id}/change/?against=1").content.decode()
    assert "&lt;b&gt;" in against and "<b>{{" not in against  # the diff escapes the text
    assert "You help" in against  # against version 1, not 2

    refused = client.post("/admin/routing/promptversion/add/", {
        "template": template.id, "messages": json.dumps([{"role": "user", "content": "{{ x.y }}"}]),
        "parameters": "{}"})
    assert refused.status_code == 200 and "attribute access" in refused.content.decode()
    theirs = PromptTemplate.objects.create(tenant=other_tenant, name="theirs")
    assert client.post("/admin/routing/promptversion/add/", {
        "template": theirs.id, "messages": json.dumps(V1), "parameters": "{}"}).status_code == 200  # not a choice
    assert not theirs.versions.exists()


def test_fronts_without_messages_refuse_a_template(sdk):
    for call in (lambda: sdk.completions.create(model="gpt-test", prompt="hi", extra_body={
                     "gateway_prompt": {"id": "support"}}),
                 lambda: sdk.embeddings.create(model="embed-test", input="hi", extra_body={
                     "gateway_prompt": {"id": "support"}})):
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert caught.value.body["param"] == "gateway_prompt" and caught.value.body["code"] == "unsupported_parameter"
