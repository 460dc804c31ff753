"""Bad input and failures: the right status, OpenAI's error shape, nothing leaked."""

import socket
import threading
import time
from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone

from tests.conftest import Server, wait_until

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


def post(gateway, key, body=None, content=None, headers=None, path="/v1/chat/completions"):
    hdrs = {"authorization": f"Bearer {key}", **(headers or {})}
    if content is not None:
        return httpx.post(gateway.url + path, content=content, headers=hdrs, timeout=30)
    return httpx.post(gateway.url + path, json=body, headers=hdrs, timeout=30)


def assert_openai_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers.get("x-request-id")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in response.text
    if code:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "gpt-test"}', "messages"),
        (b'{"model": "gpt-test", "messages": []}', "messages"),
        (b'{"model": "gpt-test", "messages": [{"content": "no role"}]}', "messages[0]"),
        (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "temperature": 7}', "temperature"),
        (b'{"model": "gpt-test", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
         "messages[0].content[0]"),
        (b'{"model": "gpt-test", "messages": [{"role": "tool", "content": "x"}]}', "messages[0].tool_call_id"),
        (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}',
         "tools[0]"),
        (b'{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1000001}',
         "max_tokens"),
        (b'{"model": "gpt-test", "messages": [' + b'{"role": "user", "content": "x"},' * 2048
         + b'{"role": "user", "content": "x"}]}', "messages"),
    ],
)
def test_malformed_requests_get_400(key_client, gateway, api_key, content, param):
    error = assert_openai_error(post(gateway, api_key[1], content=content), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_bad_embeddings_input_gets_400(key_client, gateway, api_key):
    response = post(gateway, api_key[1], {"model": "embed-test", "input": []}, path="/v1/embeddings")
    assert assert_openai_error(response, 400)["param"] == "input"


def test_unknown_revoked_expired_and_malformed_keys_get_one_identical_401(key_client, gateway, api_key, tenant):
    from keys import services as key_services
    from keys.hashing import generate_key
    from keys.models import ApiKey

    revoked_row, revoked = key_services.issue(tenant, "revoked")
    expired_row, expired = key_services.issue(tenant, "expired")
    # Used once so that the gateway has it cached: revocation must still bite.
    assert post(gateway, revoked, CHAT).status_code == 200
    revoked_row.revoke()
    ApiKey.objects.filter(pk=expired_row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert wait_until(lambda: post(gateway, revoked, CHAT).status_code == 401)
    bodies = {post(gateway, k, CHAT).content for k in (generate_key(), revoked, expired, api_key[1][:-1] + "x")}
    assert len(bodies) == 1
    assert_openai_error(post(gateway, revoked, CHAT), 401, "invalid_api_key")


def test_missing_key_gets_401(gateway):
    response = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)
    assert_openai_error(response, 401, "missing_api_key")


def test_inactive_tenant_keys_stop_working(key_client, gateway, api_key, tenant):
    tenant.is_active = False
    tenant.save()
    assert wait_until(lambda: post(gateway, api_key[1], CHAT).status_code == 401)


def test_model_not_allowed_for_key_gets_403(key_client, gateway, tenant):
    from keys import services as key_services

    _, secret = key_services.issue(tenant, "embed only", models_allowed=["embed-test"])
    assert_openai_error(post(gateway, secret, CHAT), 403, "model_not_allowed")


def test_unknown_model_and_other_tenants_private_model_get_404(key_client, gateway, api_key, other_tenant,
                                                               mock_provider):
    from providers.models import Deployment, Provider

    private = Provider.objects.create(name="globex", kind="openai_compatible", base_url=mock_provider.base_url,
                                      tenant=other_tenant)
    Deployment.objects.create(provider=private, public_model="globex-model", upstream_model="mock-gpt")
    assert_openai_error(post(gateway, api_key[1], {**CHAT, "model": "no-such-model"}), 404, "model_not_found")
    assert_openai_error(post(gateway, api_key[1], {**CHAT, "model": "globex-model"}), 404, "model_not_found")


def test_chat_on_an_embedding_model_gets_400(key_client, gateway, api_key):
    assert_openai_error(post(gateway, api_key[1], {**CHAT, "model": "embed-test"}), 400, "model_not_supported")


def test_body_too_large_gets_413(key_client, gateway, api_key):
    huge = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "' + b"a" * (11 * 1024 * 1024) + b'"}]}'
    assert_openai_error(post(gateway, api_key[1], content=huge), 413, "request_too_large")


def test_unknown_path_and_wrong_method(gateway, api_key):
    assert_openai_error(httpx.get(gateway.url + "/v1/nope"), 404, "unknown_url")
    assert_openai_error(httpx.get(gateway.url + "/v1/chat/completions",
                                  headers={"authorization": f"Bearer {api_key[1]}"}), 405)


def _provider(mock_provider, name, base_url, model, secret="sk-provider-secret-123456"):
    from providers.models import Deployment, Provider

    provider = Provider(name=name, kind="openai_compatible", base_url=base_url, allow_private_network=True)
    provider.set_api_key(secret)
    provider.save()
    Deployment.objects.create(provider=provider, public_model=model, upstream_model="mock-gpt")
    return provider


def test_upstream_failure_gets_502_without_the_provider_secret(key_client, gateway, api_key, mock_provider, mock):
    _provider(mock_provider, "broken", mock.url + "/knobs/error=500/v1", "broken-model")
    _provider(mock_provider, "badauth", mock.url + "/knobs/error=401/v1", "badauth-model")
    for model in ("broken-model", "badauth-model"):
        response = wait_until(lambda m=model: (r := post(gateway, api_key[1], {**CHAT, "model": m})).status_code != 404
                              and r)
        error = assert_openai_error(response, 502)
        assert error["type"] == "upstream_error"
        assert "sk-provider-secret" not in response.text


def test_unreachable_upstream_gets_502(key_client, gateway, api_key, mock_provider):
    from tests.conftest import free_port

    _provider(mock_provider, "down", f"http://127.0.0.1:{free_port()}/v1", "down-model")
    response = wait_until(lambda: (r := post(gateway, api_key[1], {**CHAT, "model": "down-model"})).status_code != 404
                          and r)
    assert_openai_error(response, 502, "upstream_error")


def test_upstream_429_passes_retry_after(key_client, gateway, api_key, mock_provider, mock):
    _provider(mock_provider, "limited", mock.url + "/knobs/error=429,retry_after=7/v1", "limited-model")
    response = wait_until(
        lambda: (r := post(gateway, api_key[1], {**CHAT, "model": "limited-model"})).status_code != 404 and r)
    assert_openai_error(response, 429, "upstream_rate_limited")
    assert response.headers["retry-after"] == "7"


def test_upstream_client_error_passes_through_as_400(key_client, gateway, api_key, mock_provider, mock):
    _provider(mock_provider, "picky", mock.url + "/knobs/error=400/v1", "picky-model")
    response = wait_until(
        lambda: (r := post(gateway, api_key[1], {**CHAT, "model": "picky-model"})).status_code != 404 and r)
    assert_openai_error(response, 400, "upstream_bad_request")


def test_failed_call_falls_back_to_the_next_deployment(key_client, gateway, api_key, mock_provider, mock):
    from providers.models import Deployment

    broken = _provider(mock_provider, "flaky", mock.url + "/knobs/error=503/v1", "fallback-model")
    Deployment.objects.filter(provider=broken).update(priority=0)
    Deployment.objects.create(provider=mock_provider, public_model="fallback-model", upstream_model="mock-gpt",
                              priority=1)
    response = wait_until(
        lambda: (r := post(gateway, api_key[1], {**CHAT, "model": "fallback-model"})).status_code != 404 and r)
    assert response.status_code == 200
    assert response.headers["x-gateway-provider"] == "mock"
    assert response.headers["x-gateway-attempts"] == "2"


@pytest.fixture()
def impatient_gateway(gateway_env, mock_upstream):
    server = Server(["manage.py", "serve", "--port", "{port}", "--log-level", "warning"],
                    env={**gateway_env, "GATEWAY_UPSTREAM_READ_TIMEOUT": "1"}, ready_path="/v1/models")
    yield server
    server.stop()


def test_upstream_timeout_gets_504(impatient_gateway, api_key, mock_provider, mock):
    _provider(mock_provider, "slow", mock.url + "/knobs/hang=1/v1", "slow-model")
    client = openai.OpenAI(base_url=impatient_gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=30)
    assert wait_until(lambda: "slow-model" in [m.id for m in client.models.list()])
    response = post(impatient_gateway, api_key[1], {**CHAT, "model": "slow-model"})
    assert_openai_error(response, 504, "upstream_timeout")


def _stalling_upstream():
    """A provider that sends its role chunk, one content chunk 0.3 s later, then nothing for 6 s."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                event = b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"mock-gpt",' \
                        b'"choices":[{"index":0,"delta":{%s},"finish_reason":null}]}\n\n'
                chunk = lambda data: b"%x\r\n%s\r\n" % (len(data), data)  # noqa: E731
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked"
                             b"\r\n\r\n" + chunk(event % b'"role":"assistant","content":""'))
                time.sleep(0.3)
                conn.sendall(chunk(event % b'"content":"Hello"'))
                time.sleep(6)

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_a_stream_whose_upstream_goes_silent_ends_with_an_error_event_after_the_read_timeout(
        impatient_gateway, api_key, mock_provider):
    # The relay keeps the read timeout itself (routing/upstream.py ReadDeadline): a provider that
    # stops sending mid-stream is cut once the timeout (1 s here) has passed, not when it resumes.
    upstream = _stalling_upstream()
    _provider(mock_provider, "stalling", f"http://127.0.0.1:{upstream.getsockname()[1]}/v1", "stalling-model")
    client = openai.OpenAI(base_url=impatient_gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=30)
    assert wait_until(lambda: "stalling-model" in [m.id for m in client.models.list()])
    started = time.monotonic()
    with httpx.stream("POST", impatient_gateway.url + "/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {api_key[1]}"},
                      json={**CHAT, "model": "stalling-model", "stream": True}) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    elapsed = time.monotonic() - started
    upstream.close()
    assert 1.2 < elapsed < 3.5, elapsed  # the timeout after the last chunk, long before the provider's 6 s
    assert '"content":"Hello"' in events[1], events
    assert '"code":"upstream_stream_cut"' in events[-1].replace(" ", ""), events
