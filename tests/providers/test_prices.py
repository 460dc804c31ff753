"""Prices per token class, the long-context tier and the shipped catalogue, and each provider's
usage read into Usage: the pieces the billed cost is made of (the end-to-end billing is in
tests/usage/test_cache_billing.py)."""

import json
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from django.core.management import call_command

from providers.adapters import anthropic, gemini, openai
from providers.adapters.base import Usage
from providers.targets import Target

CATALOGUE = json.loads((Path(__file__).parents[2] / "providers" / "price_catalogue.json").read_text())["models"]


def target(**prices) -> Target:
    return Target(deployment_id=1, provider_id=1, provider_name="p", tenant_id=None, kind="anthropic",
                  base_url="http://x", api_key="", extra_headers={}, settings={}, public_model="m",
                  upstream_model="m", mode="chat", context_window=1000, max_output_tokens=100, created=0,
                  **{"input_price_per_mtok": Decimal(3), "output_price_per_mtok": Decimal(15), **prices})


def test_every_token_class_is_billed_at_its_own_price():
    t = target(cached_input_price_per_mtok=Decimal("0.30"), cache_write_price_per_mtok=Decimal("3.75"),
               cache_write_1h_price_per_mtok=Decimal(6))
    usage = Usage(prompt_tokens=1000, cached_tokens=600, cache_write_tokens=300, cache_write_1h_tokens=100,
                  completion_tokens=50, reasoning_tokens=20)
    # 100 uncached, 600 read, 200 written for 5 minutes, 100 for an hour; reasoning is output
    expected = (100 * Decimal(3) + 600 * Decimal("0.30") + 200 * Decimal("3.75") + 100 * Decimal(6)
                + 50 * Decimal(15)) / 1_000_000
    assert t.usage_cost(usage) == expected == Decimal("0.00258")


def test_empty_prices_fall_back_to_the_input_price_and_the_5_minute_write_price():
    usage = Usage(prompt_tokens=1000, cached_tokens=600, cache_write_tokens=300, cache_write_1h_tokens=100)
    assert target().usage_cost(usage) == Decimal("0.003")  # every prompt token at the input price
    written = target(cache_write_price_per_mtok=Decimal("3.75"))
    assert written.usage_cost(usage) == (700 * Decimal(3) + 300 * Decimal("3.75")) / 1_000_000


def test_a_prompt_above_the_threshold_is_billed_at_the_long_context_prices():
    t = target(cached_input_price_per_mtok=Decimal("0.30"), long_context_threshold=1000,
               long_input_price_per_mtok=Decimal(6), long_output_price_per_mtok=Decimal("22.50"))
    at_threshold = Usage(prompt_tokens=1000, cached_tokens=400, completion_tokens=10)
    above = Usage(prompt_tokens=1001, cached_tokens=400, completion_tokens=10)
    assert t.usage_cost(at_threshold) == (600 * 3 + 400 * Decimal("0.30") + 10 * 15) / Decimal(1_000_000)
    # no long cache-read price: the normal one, since it is set
    assert t.usage_cost(above) == (601 * 6 + 400 * Decimal("0.30") + 10 * Decimal("22.50")) / Decimal(1_000_000)
    unset = target(long_context_threshold=1000, long_input_price_per_mtok=Decimal(6))
    # no cache-read price in either tier: reads cost what uncached input costs in the long tier
    assert unset.usage_cost(above) == (1001 * 6 + 10 * 15) / Decimal(1_000_000)


def test_anthropic_usage_keeps_reads_and_writes_by_lifetime_apart():
    usage = anthropic.parse_usage({"usage": {
        "input_tokens": 210, "cache_read_input_tokens": 945, "cache_creation_input_tokens": 7, "output_tokens": 20,
        "cache_creation": {"ephemeral_5m_input_tokens": 2, "ephemeral_1h_input_tokens": 5}}})
    assert (usage.prompt_tokens, usage.input_tokens, usage.cached_tokens) == (1162, 210, 945)
    assert (usage.cache_write_tokens, usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (7, 2, 5)
    assert anthropic.usage_dict(usage) == {
        "input_tokens": 210, "cache_read_input_tokens": 945, "cache_creation_input_tokens": 7, "output_tokens": 20,
        "cache_creation": {"ephemeral_5m_input_tokens": 2, "ephemeral_1h_input_tokens": 5}}


def test_anthropic_stream_takes_the_cumulative_counts_of_message_delta():
    stream = anthropic.chat_stream(target(), {}, True)
    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {
        "input_tokens": 10, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0, "output_tokens": 1}}}
    stream(orjson.dumps(start))
    stream(orjson.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {
        "input_tokens": 10, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 4, "output_tokens": 9}}))
    end = stream(orjson.dumps({"type": "message_stop"}))
    assert (end.usage.prompt_tokens, end.usage.cached_tokens, end.usage.cache_write_tokens) == (44, 30, 4)
    assert end.usage.completion_tokens == 9
    # an older API's message_delta with the output count only keeps message_start's input counts
    stream = anthropic.chat_stream(target(), {}, True)
    stream(orjson.dumps(start))
    stream(orjson.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}))
    end = stream(orjson.dumps({"type": "message_stop"}))
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (10, 5)


def test_openai_usage_reads_reasoning_and_the_cache_writes_compatible_servers_report():
    usage = openai.parse_usage({"usage": {"prompt_tokens": 100, "completion_tokens": 30,
                                          "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 25},
                                          "completion_tokens_details": {"reasoning_tokens": 12}}})
    assert (usage.input_tokens, usage.cached_tokens, usage.cache_write_tokens, usage.reasoning_tokens) == (15, 60, 25, 12)
    deepseek = openai.parse_usage({"usage": {"prompt_tokens": 100, "completion_tokens": 1,
                                             "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}})
    assert deepseek.cached_tokens == 64


def test_gemini_thoughts_are_output_tokens_besides_the_candidates():
    usage = gemini.parse_usage({"usageMetadata": {"promptTokenCount": 50, "cachedContentTokenCount": 20,
                                                  "candidatesTokenCount": 7, "thoughtsTokenCount": 11}})
    assert (usage.prompt_tokens, usage.cached_tokens) == (50, 20)
    assert (usage.completion_tokens, usage.reasoning_tokens) == (18, 11)


@pytest.mark.django_db
def test_a_deployment_created_without_prices_takes_the_catalogues(tmp_path):
    from providers.models import Deployment

    call_command("add_provider", "claude", "--kind", "anthropic", "--base-url", "https://api.anthropic.com",
                 "--model", "sonnet=claude-sonnet-4-5-20250929", "--model", "mine=unlisted-model")
    sonnet = Deployment.objects.get(public_model="sonnet")
    listed = CATALOGUE["claude-sonnet-4-5"]
    assert sonnet.input_price_per_mtok == Decimal(listed["input"])
    assert sonnet.cached_input_price_per_mtok == Decimal(listed["cached_input"])
    assert sonnet.cache_write_price_per_mtok == Decimal(listed["cache_write"])
    assert sonnet.cache_write_1h_price_per_mtok == Decimal(listed["cache_write_1h"])
    assert sonnet.long_context_threshold == listed["long_context_threshold"]
    assert sonnet.long_output_price_per_mtok == Decimal(listed["long_output"])
    assert Deployment.objects.get(public_model="mine").input_price_per_mtok == 0
    # editable after, and running the command again leaves the edit
    sonnet.output_price_per_mtok = Decimal(20)
    sonnet.save()
    call_command("add_provider", "claude", "--kind", "anthropic", "--base-url", "https://api.anthropic.com",
                 "--model", "sonnet=claude-sonnet-4-5-20250929")
    assert Deployment.objects.get(public_model="sonnet").output_price_per_mtok == 20


@pytest.mark.django_db
def test_an_explicit_price_wins_over_the_catalogue():
    from providers.models import Deployment

    call_command("add_provider", "oai", "--kind", "openai", "--base-url", "https://api.openai.com/v1",
                 "--model", "4o=gpt-4o", "--input-price", "1", "--cache-write-1h-price", "2")
    deployment = Deployment.objects.get(public_model="4o")
    assert (deployment.input_price_per_mtok, deployment.output_price_per_mtok) == (1, 0)
    assert deployment.cached_input_price_per_mtok is None and deployment.cache_write_1h_price_per_mtok == 2


@pytest.fixture()
def tenant_admin(client, tenant):
    from tests.conftest import user_in

    client.force_login(user_in(tenant, "admin"))
    return client


def test_the_management_api_takes_every_price_and_fills_a_priceless_deployment(tenant_admin, tenant):
    from providers.models import Provider

    provider = Provider.objects.create(name="acme-anthropic", kind="anthropic", base_url="https://api.anthropic.com",
                                       tenant=tenant)
    filled = tenant_admin.post("/api/manage/deployments/", {
        "provider": provider.id, "public_model": "haiku", "upstream_model": "claude-haiku-4-5"},
        content_type="application/json")
    assert filled.status_code == 201, filled.content
    listed = CATALOGUE["claude-haiku-4-5"]
    assert Decimal(filled.json()["cache_write_1h_price_per_mtok"]) == Decimal(listed["cache_write_1h"])
    assert Decimal(filled.json()["output_price_per_mtok"]) == Decimal(listed["output"])
    priced = tenant_admin.post("/api/manage/deployments/", {
        "provider": provider.id, "public_model": "own", "upstream_model": "claude-haiku-4-5",
        "input_price_per_mtok": "2", "long_context_threshold": 1000, "long_input_price_per_mtok": "4"},
        content_type="application/json")
    assert priced.status_code == 201, priced.content
    body = priced.json()
    assert (body["input_price_per_mtok"], body["long_input_price_per_mtok"]) == ("2.000000", "4.000000")
    assert body["long_context_threshold"] == 1000
    assert body["output_price_per_mtok"] == "0.000000" and body["cached_input_price_per_mtok"] is None
    refused = tenant_admin.patch(f"/api/manage/deployments/{body['id']}/", {"cache_write_price_per_mtok": "-1"},
                                 content_type="application/json")
    assert refused.status_code == 400 and "cache_write_price_per_mtok" in refused.json()


def test_the_admin_shows_every_price_and_fills_a_priceless_deployment(admin_client):
    from django.urls import reverse

    from providers.models import Deployment, Provider

    provider = Provider.objects.create(name="gemini", kind="gemini", base_url="https://generativelanguage.googleapis.com")
    page = admin_client.get(reverse("admin:providers_deployment_add"))
    for name in ("cached_input_price_per_mtok", "cache_write_price_per_mtok", "cache_write_1h_price_per_mtok",
                 "long_context_threshold", "long_input_price_per_mtok", "long_cache_write_1h_price_per_mtok"):
        assert f'name="{name}"' in page.content.decode()
    form = {"provider": provider.id, "public_model": "pro", "upstream_model": "gemini-2.5-pro", "mode": "chat",
            "context_window": 1_000_000, "max_output_tokens": 65_536, "input_price_per_mtok": "0",
            "output_price_per_mtok": "0", "priority": 0, "supports_vision": "on", "supports_tools": "on",
            "native_responses": "unknown", "is_active": "on"}
    saved = admin_client.post(reverse("admin:providers_deployment_add"), form)
    assert saved.status_code == 302, saved.content.decode()[-2000:]
    deployment = Deployment.objects.get(public_model="pro")
    listed = CATALOGUE["gemini-2.5-pro"]
    assert deployment.long_context_threshold == listed["long_context_threshold"]
    assert (deployment.input_price_per_mtok, deployment.long_input_price_per_mtok) == (
        Decimal(listed["input"]), Decimal(listed["long_input"]))
    # The provider's page lists its deployments with the other prices they set, and links each to
    # its own page, where the prices are grouped.
    provider_page = admin_client.get(reverse("admin:providers_provider_change", args=[provider.id])).content.decode()
    assert "cache read 0.125" in provider_page and "long context above 200,000 tokens" in provider_page
    assert reverse("admin:providers_deployment_change", args=[deployment.id]) in provider_page
    own_page = admin_client.get(reverse("admin:providers_deployment_change", args=[deployment.id])).content.decode()
    assert "Long-context prices" in own_page and 'value="2.500000"' in own_page
