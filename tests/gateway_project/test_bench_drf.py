"""The DRF variant of /v1 that bench/run.py --drf measures (bench/drf_front.py) still serves the gateway's
answers, so the measurement in docs/architecture.md can be repeated."""

import httpx
import openai
import pytest

from tests.conftest import start_gateway, wait_until


@pytest.fixture()
def drf_gateway(gateway_env, mock_upstream):
    server = start_gateway({**gateway_env, "GATEWAY_API_URLCONF": "bench.drf_front"})
    yield server
    server.stop()


def test_drf_views_answer_chat_and_embeddings_and_errors_in_openai_shape(drf_gateway, mock_provider, api_key):
    client = openai.OpenAI(base_url=drf_gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: any(m.id == "gpt-test" for m in client.models.list()))

    completion = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content
    chunks = list(client.chat.completions.create(model="gpt-test", stream=True,
                                                 messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert client.embeddings.create(model="embed-test", input="hi").data[0].embedding

    refused = httpx.post(drf_gateway.url + "/v1/chat/completions", json={"model": "gpt-test", "messages": []},
                         headers={"authorization": "Bearer sk-not-a-key"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert refused.headers["x-request-id"]
    wrong_method = httpx.get(drf_gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {api_key[1]}"})
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
