"""Issue 16, the routing findings, each replayed as the attacker did it:

3. a tenant admin's route rule regex that backtracks for ever;
7. X-Forwarded-For, from anyone on loopback, resetting the throttles and lying to the audit log;
10a. an extra field nested a thousand deep, a 500 when forwarded;
12b/12c. /v1 without `nosniff`, and /v1 served over plain HTTP with HTTPS=true.
"""

import threading
import time

import httpx
import pytest

from tests.conftest import wait_until
from tests.test_management_api import member_of

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
    client.force_login(member_of(tenant, "admin", django_user_model))
    response = _route(client, mock_provider.deployments.get(public_model="gpt-test"), pattern)
    assert response.status_code == 400, response.content
    message = response.json()["rules"]["0"]["value"][0]  # the rule at index 0, its field
    assert named in message and "RE2" in message, message


def test_a_backtracking_rule_pattern_stalls_neither_its_tenant_nor_another(client, gateway, mock_provider, tenant,
                                                                        other_tenant, api_key, django_user_model):
    from keys.models import ApiKey

    client.force_login(member_of(tenant, "admin", django_user_model))
    shared = mock_provider.deployments.get(public_model="gpt-test")
    assert _route(client, shared, EVIL).status_code == 201  # RE2 runs it in linear time: nothing to refuse
    _, other_key = ApiKey.issue(other_tenant, "bystander")
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
