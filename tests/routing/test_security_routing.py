"""Issue 16, the routing findings, each replayed as the attacker did it:

3. a tenant admin's route rule regex that backtracks for ever;
7. X-Forwarded-For, from anyone on loopback, resetting the throttles and lying to the audit log;
10a. an extra field nested a thousand deep, a 500 when forwarded;
12b/12c. /v1 without `nosniff`, and /v1 served over plain HTTP with HTTPS=true.
"""

import base64
import os
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
import redis

from tests.conftest import ROOT, start_gateway, user_in, wait_until
from tests.routing.test_api_errors import assert_openai_error

EVIL = "^(a+)+$"  # under a backtracking engine each extra "a" doubles the time to fail a match


def chat(url: str, key: str, text: str, model: str = "gpt-test", timeout: float = 30) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=timeout,
                      json={"model": model, "messages": [{"role": "user", "content": text}]})


# --- Finding 3: route rule regexes ---------------------------------------------------------


def _route(client, deployment, pattern: str, name: str = "acme-rx"):
    return client.post("/api/manage/routes/", {
        "name": name, "strategy": "priority", "targets": [{"deployment": deployment.id}],
        "rules": [{"kind": "regex", "value": pattern, "deployment": deployment.id}]}, content_type="application/json")


@pytest.mark.parametrize(("pattern", "named"), [
    (r"(a)\1", "invalid escape sequence: \\1"),  # a backreference
    (r"(?=secret)\w+", "invalid perl operator: (?="),  # lookahead
    (r"(?<!x)y", "invalid perl operator: (?<"),  # lookbehind
    ("[unclosed", "missing ]"),
    ("a" * 301, "at most 300 characters"),
])
def test_a_rule_pattern_the_linear_engine_cannot_run_is_refused_with_the_reason(client, mock_provider, tenant,
                                                                                django_user_model, pattern, named):
    client.force_login(user_in(tenant, "admin"))
    response = _route(client, mock_provider.deployments.get(public_model="gpt-test"), pattern)
    assert response.status_code == 400, response.content
    message = response.json()["rules"]["0"]["value"][0]  # the rule at index 0, its field
    assert named in message and "RE2" in message, message


def test_a_backtracking_rule_pattern_stalls_neither_its_tenant_nor_another(client, gateway, mock_provider, tenant,
                                                                        other_tenant, api_key, django_user_model):
    from keys import services as key_services

    client.force_login(user_in(tenant, "admin"))
    shared = mock_provider.deployments.get(public_model="gpt-test")
    assert _route(client, shared, EVIL).status_code == 201  # RE2 runs it in linear time: nothing to refuse
    _, other_key = key_services.issue(other_tenant, "bystander")
    assert wait_until(lambda: chat(gateway.url, api_key[1], "aaaa", "acme-rx").headers.get(
        "x-gateway-route") == "acme-rx", timeout=10)
    assert chat(gateway.url, other_key, "warm").status_code == 200

    adversarial = "a" * 32 + "!"  # 2**32 steps for `re`: minutes
    results = {}

    def attack():
        started = time.perf_counter()
        results["attack"] = (chat(gateway.url, api_key[1], adversarial, "acme-rx"), time.perf_counter() - started)

    attacker = threading.Thread(target=attack)
    attacker.start()
    time.sleep(0.05)  # the attack is in the worker
    started = time.perf_counter()
    bystander = chat(gateway.url, other_key, "hello")
    bystander_seconds = time.perf_counter() - started
    attacker.join(timeout=30)
    response, attack_seconds = results["attack"]
    assert response.status_code == 200 and response.headers["x-gateway-route"] == "acme-rx"
    assert attack_seconds < 0.5, attack_seconds
    assert bystander.status_code == 200 and bystander_seconds < 0.5, bystander_seconds


# --- Finding 7: X-Forwarded-For ------------------------------------------------------------

THROTTLED = {"AUTH_FAILURES_PER_MINUTE": "3", "ADMIN_LOGIN_RATE": "3/m"}


def _bad_key(url: str, forwarded_for: str) -> tuple[int, float]:
    started = time.perf_counter()
    response = httpx.post(url + "/v1/chat/completions", timeout=30, headers={
        "authorization": "Bearer gw-not-a-real-key", "x-forwarded-for": forwarded_for},
        json={"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]})
    return response.status_code, time.perf_counter() - started


def _bad_password(url: str, username: str, forwarded_for: str) -> int:
    token = base64.b64encode(f"{username}:wrong-password".encode()).decode()
    return httpx.get(url + "/api/manage/keys/", timeout=30, headers={
        "authorization": f"Basic {token}", "x-forwarded-for": forwarded_for}).status_code


def _failed_sign_ins(username: str) -> list:
    from tenants.models import AuditLog

    return list(AuditLog.objects.filter(action="login.failed", actor_label=username).values_list(
        "address", flat=True))


@pytest.fixture()
def peer_counts():
    """The failed-key count of 127.0.0.1 (every test's address) cleared before and after."""
    from django.conf import settings

    store = redis.Redis.from_url(settings.REDIS_URL)
    store.delete("gw:authfail:127.0.0.1")
    yield
    store.delete("gw:authfail:127.0.0.1")


def test_a_forged_x_forwarded_for_resets_no_throttle_and_is_not_audited(gateway_env, mock_provider, peer_counts):
    # The attacker is on loopback, the one address uvicorn believed X-Forwarded-For from.
    server = start_gateway({**gateway_env, **THROTTLED})
    try:
        waits = [_bad_key(server.url, f"203.0.113.{i}") for i in range(1, 6)]
        username = f"guess-{uuid.uuid4().hex[:8]}"
        sign_ins = []
        # Fixed one-minute windows: a run straddling two lets at most twice the allowance through.
        while 429 not in sign_ins and len(sign_ins) < 10:
            sign_ins.append(_bad_password(server.url, username, f"198.51.100.{len(sign_ins) + 1}"))
    finally:
        server.stop()
    assert {status for status, _ in waits} == {401}
    # The fifth failure is two over the allowance of three a minute: half a second's wait, whatever it claims.
    assert waits[-1][1] >= 0.45, waits
    # Over the allowance of three a minute (django-ratelimit lets the attempt that crosses it through).
    assert sign_ins[:3] == [401, 401, 401] and sign_ins[-1] == 429 and len(sign_ins) <= 9, sign_ins
    assert wait_until(lambda: len(_failed_sign_ins(username)) == sign_ins.count(401), timeout=15)
    assert set(_failed_sign_ins(username)) == {"127.0.0.1"}  # the peer, not what it claimed


def test_x_forwarded_for_from_a_trusted_proxy_names_the_right_most_untrusted_hop(gateway_env, mock_provider,
                                                                               peer_counts):
    server = start_gateway({**gateway_env, **THROTTLED, "TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8"})
    try:
        username = f"guess-{uuid.uuid4().hex[:8]}"
        # A client's own claim (192.0.2.1) first, then the client as our proxies saw it, then our inner proxy.
        assert _bad_password(server.url, username, "192.0.2.1, 198.51.100.77, 10.1.2.3") == 401
        assert wait_until(lambda: _failed_sign_ins(username)) == ["198.51.100.77"]
    finally:
        server.stop()


def test_trusted_proxies_are_addresses_or_networks():
    # uvicorn would take "*" as trust everyone, and a malformed entry silently as no one.
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "TRUSTED_PROXIES": "*"})
    assert result.returncode != 0 and "TRUSTED_PROXIES lists IP addresses or CIDRs only" in result.stderr


# --- Finding 10a: nesting ------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    """`depth` objects, one in the other, as JSON (no JSON library writes 1,000 levels)."""
    return b'{"x": ' * depth + b'"deep"' + b"}" * depth


def _chat_with_extra(value: bytes, **fields) -> bytes:
    extra = b"".join(b', "%s": %d' % (name.encode(), number) for name, number in fields.items())
    return b'{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]' + extra + b', "x_extra": ' \
        + value + b"}"


@pytest.mark.parametrize("depth", [300, 1000])
def test_an_extra_field_nested_too_deep_gets_a_400_in_the_callers_shape(key_client, gateway, api_key, depth):
    headers = {"authorization": f"Bearer {api_key[1]}", "content-type": "application/json"}
    response = httpx.post(gateway.url + "/v1/chat/completions", content=_chat_with_extra(_nested(depth)),
                          headers=headers, timeout=30)
    error = assert_openai_error(response, 400, "json_too_deep")
    assert "64 levels" in error["message"]
    response = httpx.post(gateway.url + "/v1/messages", content=_chat_with_extra(_nested(depth), max_tokens=10),
                          headers=headers, timeout=30)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert "64 levels" in answer["error"]["message"]


def test_a_body_nested_to_the_limit_is_served(key_client, gateway, api_key):
    # The body is level 1, its field's value level 2: 63 objects there make 64 levels in all.
    headers = {"authorization": f"Bearer {api_key[1]}", "content-type": "application/json"}
    response = httpx.post(gateway.url + "/v1/chat/completions", content=_chat_with_extra(_nested(63)),
                          headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert httpx.post(gateway.url + "/v1/chat/completions", content=_chat_with_extra(_nested(64)),
                      headers=headers, timeout=30).status_code == 400


# --- Findings 12b and 12c: nosniff, and plain HTTP with HTTPS=true -----------------------------


def test_every_v1_answer_says_nosniff(key_client, gateway, api_key):
    headers = {"authorization": f"Bearer {api_key[1]}"}
    answers = [
        httpx.post(gateway.url + "/v1/chat/completions", headers=headers, timeout=30,
                   json={"model": "gpt-test", "messages": [{"role": "user", "content": "<script>x</script>"}]}),
        httpx.get(gateway.url + "/v1/models", headers=headers, timeout=30),
        httpx.get(gateway.url + "/v1/nothing-here", timeout=30),  # 404 before any endpoint
        httpx.post(gateway.url + "/v1/chat/completions", content=b"{not json", headers=headers, timeout=30),
        httpx.post(gateway.url + "/v1/chat/completions", headers={"authorization": "Bearer wrong"}, timeout=30,
                   json={"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]}),
    ]
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers=headers, timeout=30, json={
            "model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as stream:
        assert stream.read().endswith(b"data: [DONE]\n\n")
        answers.append(stream)
    assert [a.status_code for a in answers] == [200, 200, 404, 400, 401, 200]
    assert all(a.headers.get("x-content-type-options") == "nosniff" for a in answers), [a.headers for a in answers]


def test_with_https_on_plain_http_on_v1_is_refused_not_served(gateway_env, mock_provider, api_key):
    server = start_gateway({**gateway_env, "HTTPS": "true", "BEHIND_TLS_PROXY": "true"})
    key = {"authorization": f"Bearer {api_key[1]}"}
    body = {"model": "gpt-test", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    try:
        plain = httpx.post(server.url + "/v1/chat/completions", json=body, headers=key, timeout=30)
        listing = httpx.get(server.url + "/v1/models", headers=key, timeout=30)
        anthropic = httpx.post(server.url + "/v1/messages", json=body, headers=key, timeout=30)
        behind_tls = wait_until(lambda: httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30,
                                                   headers={**key, "x-forwarded-proto": "https"}).status_code == 200,
                                timeout=10)
    finally:
        server.stop()
    for response in (plain, listing):
        error = assert_openai_error(response, 403, "https_required")
        assert "https://" in error["message"] and "location" not in response.headers  # no redirect to follow
    assert anthropic.status_code == 403 and anthropic.json()["error"]["type"] == "permission_error"
    assert behind_tls  # the TLS proxy's X-Forwarded-Proto: https (BEHIND_TLS_PROXY) is believed


@pytest.mark.parametrize("depth", [64, 300, 1000, 100_000])
def test_the_management_api_refuses_json_nested_too_deep_with_a_400(admin_client, depth):
    # Python's json recursed past its limit on about a thousand levels: a RecursionError, a 500.
    body = b'{"name": "deep", "extra": ' + b"[" * depth + b"]" * depth + b"}"
    response = admin_client.post("/api/manage/routes/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert "levels deep" in response.json()["detail"]


def test_the_management_api_takes_json_nested_within_the_limit(admin_client):
    body = b'{"name": "shallow", "extra": ' + b"[" * 62 + b"]" * 62 + b"}"  # 63 levels, the body 64th
    assert admin_client.post("/api/manage/routes/", body, content_type="application/json").status_code == 201
