"""The admin's "test connection" action: a minimal call, with status, latency and models shown."""

import re

import pytest
from django.urls import reverse

from tests.conftest import KINDS, PROVIDER_SECRET, make_provider

EXPECTED_MODEL = {"openai": "mock-gpt", "openai_compatible": "mock-gpt", "azure": "mock-gpt",
                  "anthropic": "mock-claude", "gemini": "mock-gemini", "cohere": "mock-command",
                  "ollama": "mock-llama", "huggingface": "tgi"}


def run_action(admin_client, *providers):
    url = reverse("admin:providers_provider_changelist")
    response = admin_client.post(url, {"action": "test_connection", "_selected_action": [p.pk for p in providers]},
                                 follow=True)
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]], response.content.decode()


@pytest.mark.parametrize("kind", list(KINDS))
def test_test_connection_shows_status_latency_and_models(kind, admin_client, mock):
    provider = make_provider(kind, mock.url)
    shown, page = run_action(admin_client, provider)
    assert len(shown) == 1
    message = shown[0]
    assert message.startswith(f"{kind}: OK (HTTP 200, "), message
    assert re.search(r"\d+ ms\); [1-9]\d* model\(s\) found", message), message
    assert EXPECTED_MODEL[kind] in message
    assert PROVIDER_SECRET not in page


def test_test_connection_reports_failures_without_the_key(admin_client, mock):
    dead = make_provider("openai", "http://127.0.0.1:9", name="dead")
    refusing = make_provider("anthropic", mock.url, name="refusing", knobs="error=401")
    shown, page = run_action(admin_client, dead, refusing)
    by_name = {m.split(":", 1)[0]: m for m in shown}
    assert by_name["dead"].startswith("dead: failed (no answer"), by_name["dead"]
    assert by_name["refusing"].startswith("refusing: failed (HTTP 401"), by_name["refusing"]
    assert PROVIDER_SECRET not in page
    assert page.count('<li class="error">') == 2  # shown as errors
