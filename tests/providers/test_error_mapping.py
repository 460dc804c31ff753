"""Upstream failures of every class, from every provider kind, reach the client
mapped the same way: OpenAI's error shape (Anthropic's on /v1/messages), the
right status, the provider named, its key never echoed, and each recorded."""

import anthropic
import httpx
import openai
import pytest

from providers.models import Deployment
from tests.conftest import KINDS, PROVIDER_SECRET, make_provider, usage_record, wait_until

# upstream status -> (status the client gets, error code)
CLASSES = {
    400: (400, "upstream_bad_request"),
    401: (502, "upstream_auth_failed"),
    403: (502, "upstream_forbidden"),
    404: (502, "upstream_not_found"),
    413: (413, "upstream_bad_request"),
    429: (429, "upstream_rate_limited"),
    500: (502, "upstream_error"),
    503: (502, "upstream_error"),
}


@pytest.fixture(params=list(KINDS))
def failing(request, gateway, api_key, mock):
    """For one kind: a provider per failure class (`<kind>-e<status>`) and one that never answers."""
    kind = request.param
    for status in CLASSES:
        make_provider(kind, mock.url, name=f"{kind}-e{status}", knobs=f"error={status},retry_after=1")
    make_provider(kind, mock.url, name=f"{kind}-hang", knobs="hang=1")
    Deployment.objects.filter(public_model=f"chat-{kind}-hang").update(first_byte_timeout=0.3, total_timeout=1)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=30)
    assert wait_until(lambda: f"chat-{kind}-hang" in [m.id for m in client.models.list()])
    return client, kind


def test_each_failure_class_is_mapped_the_same_for_every_kind(failing, mock):
    client, kind = failing
    for upstream_status, (status, code) in CLASSES.items():
        name = f"{kind}-e{upstream_status}"
        raw = client.chat.completions.with_raw_response
        with pytest.raises(openai.APIStatusError) as failed:
            raw.create(model=f"chat-{name}", messages=[{"role": "user", "content": "hi"}])
        error = failed.value
        assert error.status_code == status, (name, error.status_code, error.body)
        assert error.body["code"] == code and error.body["message"], (name, error.body)
        assert f"'{name}'" in error.body["message"], error.body  # names the provider
        assert PROVIDER_SECRET not in error.response.text
        if upstream_status == 429:
            assert error.response.headers["retry-after"] == "1"
        record = usage_record(error.response.headers["x-request-id"])
        assert record.status != "ok" and record.cost_usd == 0, (name, record.status)
        if upstream_status in (400, 413):
            # The request's own fault: no other deployment would take it, so no retry.
            assert record.attempts == 1, (name, record.attempts)


def test_a_provider_that_never_answers_times_out_with_504(failing):
    client, kind = failing
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model=f"chat-{kind}-hang", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 504 and failed.value.body["code"] == "upstream_timeout"
    assert PROVIDER_SECRET not in failed.value.response.text


def test_failures_reach_claude_clients_in_anthropics_error_shape(failing, gateway, api_key):
    _, kind = failing
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=api_key[1], max_retries=0, timeout=30)
    expected = {400: anthropic.BadRequestError, 429: anthropic.RateLimitError, 500: anthropic.InternalServerError}
    for upstream_status, error_class in expected.items():
        name = f"{kind}-e{upstream_status}"
        with pytest.raises(anthropic.APIStatusError) as failed:
            claude.messages.create(model=f"chat-{name}", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        body = failed.value.response.json()
        assert isinstance(failed.value, error_class) or failed.value.status_code == CLASSES[upstream_status][0]
        assert body["type"] == "error" and body["error"]["type"] and f"'{name}'" in body["error"]["message"]
        assert PROVIDER_SECRET not in failed.value.response.text


def test_an_unreachable_provider_is_a_502_naming_it(gateway, api_key, mock):
    make_provider("openai", "http://127.0.0.1:9", name="nowhere")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=30)
    assert wait_until(lambda: "chat-nowhere" in [m.id for m in client.models.list()])
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="chat-nowhere", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 502 and "'nowhere'" in failed.value.body["message"]
    assert httpx.get(mock.url + "/_mock/stats").status_code == 200
