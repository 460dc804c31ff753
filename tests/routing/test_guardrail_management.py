"""Guardrail policies through the management API and the admin: scoped by tenant, secrets write-only;
and POST /v1/moderations, which moderation checks rely on."""

import pytest

from routing.models import GuardrailPolicy
from tests.conftest import user_in

HOOK_SECRET = "whsec-topsecret-123"


def _policy_body(tenant, **extra):
    return {"name": "pii", "tenant": tenant.id, "checks": [
        {"kind": "pii", "stage": "both", "action": "redact", "pii_types": ["email", "card"]},
        {"kind": "webhook", "stage": "input", "action": "block", "url": "https://hooks.example.com/check",
         "webhook_secret": HOOK_SECRET, "failure_mode": "open"}], **extra}


def test_a_policy_with_checks_is_made_through_the_api_and_its_webhook_secret_stays_write_only(client, tenant):
    client.force_login(user_in(tenant, "admin"))
    created = client.post("/api/manage/guardrails/", _policy_body(tenant), content_type="application/json")
    assert created.status_code == 201, created.content
    assert HOOK_SECRET not in created.content.decode()
    policy = GuardrailPolicy.objects.get(pk=created.json()["id"])
    pii, hook = policy.checks.all()
    assert (pii.kind, pii.stage, pii.action, pii.pii_types) == ("pii", "both", "redact", ["email", "card"])
    assert hook.secret() == HOOK_SECRET and HOOK_SECRET not in hook.secret_encrypted
    assert HOOK_SECRET not in client.get(f"/api/manage/guardrails/{policy.id}/").content.decode()


def test_bad_checks_are_refused_with_the_field_named(client, tenant):
    client.force_login(user_in(tenant, "owner"))
    for check, field in (({"kind": "pii", "pii_types": ["dna"]}, "pii_types"),
                         ({"kind": "regex", "patterns": ["(unclosed"]}, "patterns"),
                         ({"kind": "webhook", "url": "http://127.0.0.1:9/hook"}, "url"),
                         ({"kind": "webhook", "url": "https://hooks.example.com/", "allow_private_network": True},
                          "allow_private_network"),
                         ({"kind": "moderation", "action": "redact", "model": "m"}, "action")):
        refused = client.post("/api/manage/guardrails/", {"name": "x", "tenant": tenant.id, "checks": [check]},
                              content_type="application/json")
        assert refused.status_code == 400, (check, refused.content)
        assert field in refused.content.decode(), (check, refused.content)


def test_other_tenants_policies_are_not_found(client, tenant, other_tenant):
    theirs = GuardrailPolicy.objects.create(tenant=other_tenant, name="theirs")
    client.force_login(user_in(tenant, "admin"))
    assert client.get(f"/api/manage/guardrails/{theirs.id}/").status_code == 404
    assert client.get("/api/manage/guardrails/").json()["results"] == []
    assert client.get(f"/admin/routing/guardrailpolicy/{theirs.id}/change/").status_code in (302, 404)
    member = user_in(tenant, "member", name="plain")
    client.force_login(member)
    assert client.post("/api/manage/guardrails/", _policy_body(tenant),
                       content_type="application/json").status_code == 403


def test_moderations_refuse_a_chat_model_and_serve_a_moderation_one(gateway, mock, api_key):
    import openai

    from providers.models import Deployment
    from tests.conftest import make_provider, wait_until

    provider = make_provider("openai", mock.url)
    Deployment.objects.create(provider=provider, public_model="mod-openai", upstream_model="omni-moderation-latest",
                              mode="moderation")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0)

    def moderated():
        try:
            return client.moderations.create(model="mod-openai", input=["a kind word", "you idiot"])
        except openai.NotFoundError:
            return None
    result = wait_until(moderated, timeout=10)
    assert [r.flagged for r in result.results] == [False, True] and result.results[1].categories.harassment
    with pytest.raises(openai.BadRequestError) as chat_model:
        client.moderations.create(model="chat-openai", input="hello")
    assert chat_model.value.body["code"] == "model_not_supported" and "moderation" in chat_model.value.body["message"]
    with pytest.raises(openai.BadRequestError) as malformed:
        client.moderations.create(model="mod-openai", input=[1, 2])
    assert malformed.value.body["param"] == "input"


def test_policies_load_from_a_configuration_file_and_reloading_it_changes_nothing(tenant, tmp_path, monkeypatch):
    from django.core.management import CommandError, call_command

    monkeypatch.setenv("HOOK_KEY", HOOK_SECRET)
    config = tmp_path / "guardrails.yaml"
    config.write_text(f"""
- tenant: {tenant.slug}
  name: from-config
  route: chat-openai
  restore: true
  checks:
    - {{kind: pii, stage: both, action: redact, pii_types: [email]}}
    - {{kind: webhook, action: flag, url: "https://hooks.example.com/x", webhook_secret_env: HOOK_KEY}}
""")
    call_command("load_guardrails", str(config))
    call_command("load_guardrails", str(config))
    policy = GuardrailPolicy.objects.get(tenant=tenant, name="from-config")
    assert policy.route == "chat-openai" and policy.restore
    assert [c.kind for c in policy.checks.all()] == ["pii", "webhook"]
    assert policy.checks.get(kind="webhook").secret() == HOOK_SECRET
    config.write_text(f"- {{tenant: {tenant.slug}, name: broken, checks: [{{kind: pii, pii_types: [dna]}}]}}")
    with pytest.raises(CommandError, match="pii_types"):
        call_command("load_guardrails", str(config))
    assert not GuardrailPolicy.objects.filter(name="broken").exists()
