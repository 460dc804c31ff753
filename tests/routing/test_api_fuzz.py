"""The public API fuzzed with schemathesis: no 5xx, every /v1 error in OpenAI's shape.

The gateway under test is a real one (uvicorn, the mock upstream behind one
provider of every kind); schemathesis reads the /v1 schema (/v1/openapi.json)
and the management and usage API schema (/api/schema/) and sends what they
allow and what they do not. A modest run here; `python3 bench/fuzz_api.py`
runs 10,000 cases and more (docs/security.md has the figures). Below it, each
input the fuzzer found mishandled, kept as a regression test.
"""

import re

import httpx
import pytest

from bench.fuzz_api import fuzz_gateway, setup_data
from bench.fuzz_checks import error_problem
from tests.conftest import Server, wait_until
from tests.routing.test_api_errors import assert_openai_error, post

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture()
def fuzz_target(gateway_env, mock):
    """A gateway for a fuzzer: one client sending thousands of requests, many with bad credentials."""
    server = Server(["manage.py", "serve", "--port", "{port}", "--log-level", "warning"], env={
        **gateway_env, "MANAGEMENT_API_RATE": "1000000/m",
        "ADMIN_LOGIN_RATE": "1000000/m", "AUTH_FAILURES_PER_MINUTE": "1000000"}, ready_path="/v1/openapi.json")
    yield server
    server.stop()


def test_the_public_api_survives_schemathesis(transactional_db, fuzz_target, mock, tmp_path):
    data = setup_data(mock.url)
    key = {"authorization": f"Bearer {data['key']}"}
    assert wait_until(lambda: "chat-gemini" in str(httpx.get(fuzz_target.url + "/v1/models", headers=key).json()))

    # Every phase on /v1; on the (much larger) management API, the schema's examples and fuzzing;
    # between them, requests schemathesis' client cannot send (CR and LF in headers, bodies 3,000 deep).
    outcomes = {o.name: o for o in fuzz_gateway(fuzz_target.url, data, max_examples=3, workdir=tmp_path, seed=1,
                                                 api_phases="examples,fuzzing", raw_cases=200)}

    assert set(outcomes) == {"v1", "v1-messages", "v1-bad-keys", "raw", "api"}
    for outcome in outcomes.values():
        # Schemathesis' checks and the gateway's (bench/fuzz_checks.py) all passed.
        assert outcome.returncode == 0, outcome.output[-6000:]
        assert outcome.server_errors == 0, outcome.summary()
        print(outcome.summary())
    statuses = {name: o.by_status() for name, o in outcomes.items()}
    # Valid requests reached the upstream and invalid ones were refused, on both schemas.
    assert statuses["v1"][200] > 20 and statuses["v1"][400] > 100 and statuses["v1-messages"][200] > 20, statuses
    # Made-up keys: 401 (the body is checked before the key, so some 400s; the schema itself is public;
    # a response id with a slash in it makes a URL the gateway does not serve, a 404 before any key is read).
    assert statuses["v1-bad-keys"][401] and set(statuses["v1-bad-keys"]) <= {200, 400, 401, 404, 405}, statuses
    assert statuses["api"][200] > 10 and statuses["api"][400], statuses
    # Raw: uvicorn's 400 for a header it cannot parse, the gateway's for a body too deep, and calls served.
    assert statuses["raw"][400] > 50 and statuses["raw"][200] > 10, statuses
    assert not re.search(r"^Traceback", fuzz_target.output(), re.M)


def test_the_v1_schema_is_served_and_describes_every_endpoint(gateway):
    schema = httpx.get(gateway.url + "/v1/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/feedback",
                                    "/v1/messages",
                                    "/v1/messages/count_tokens", "/v1/moderations",
                                    "/v1/models", "/v1/openapi.json", "/v1/responses", "/v1/responses/input_tokens",
                                    "/v1/responses/{response_id}", "/v1/responses/{response_id}/input_items",
                                    "/v1/responses/{response_id}/cancel", "/v1/files", "/v1/files/{file_id}",
                                    "/v1/files/{file_id}/content", "/v1/batches", "/v1/batches/{batch_id}",
                                    "/v1/batches/{batch_id}/cancel", "/v1/messages/batches",
                                    "/v1/messages/batches/{batch_id}", "/v1/messages/batches/{batch_id}/cancel",
                                    "/v1/messages/batches/{batch_id}/results"}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path != "/v1/openapi.json":
                assert {"401", "405"} <= set(operation["responses"]), path
    # Every front the response cache serves says what its headers do, asked and answered.
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages", "/v1/responses"):
        operation = schema["paths"][path]["post"]
        asked = {p.get("$ref", "").rsplit("/", 1)[-1] for p in operation["parameters"]}
        assert {"CacheControl", "CacheTtl"} <= asked, path
        answered = operation["responses"]["200"]["headers"]
        assert {"x-gateway-cache", "x-gateway-cache-key", "x-gateway-cache-similarity"} <= set(answered), path
    parameters = schema["components"]["parameters"]
    assert "no-store" in parameters["CacheControl"]["description"] and parameters["CacheTtl"]["name"] == \
        "x-gateway-cache-ttl"


def test_the_error_shape_check_catches_what_it_must():
    ok = '{"error": {"message": "m", "type": "invalid_request_error", "param": null, "code": null}}'
    assert error_problem("/v1/chat/completions", 400, "application/json", ok) is None
    assert error_problem("/v1/chat/completions", 400, "application/json", '{"detail": "x"}')
    assert error_problem("/v1/chat/completions", 500, "text/html", "<h1>Server Error</h1>")
    assert error_problem("/v1/chat/completions", 500, "application/json",
                         '{"error": {"message": "Traceback (most recent call last):", "type": "t", "param": null, '
                         '"code": null}}')
    # A 404 naming the URL asked for is no traceback, whatever the URL says.
    unknown = '{"error": {"message": "Unknown request URL: GET /v1/responses/Traceback.", "type": "invalid_request_error", ' \
        '"param": null, "code": "unknown_url"}}'
    assert error_problem("/v1/responses/Traceback", 404, "application/json", unknown) is None
    assert error_problem("/v1/messages", 400, "application/json", ok)
    assert error_problem("/v1/messages", 400, "application/json",
                         '{"type": "error", "error": {"type": "invalid_request_error", "message": "m"}}') is None


# Inputs the fuzzer found mishandled: (path, body, param of the 400).
FOUND = {
    "role that is an object (was a 500)": (
        "/v1/chat/completions", {**CHAT, "messages": [{"role": {}, "content": "x"}]}, "messages[0]"),
    "role that is an array (was a 500)": (
        "/v1/chat/completions", {**CHAT, "messages": [{"role": ["user"], "content": "x"}]}, "messages[0]"),
    "tool call of another type (was passed on)": (
        "/v1/chat/completions", {**CHAT, "messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "AAA", "function": {"name": "f", "arguments": "{}"}}]}]},
        "messages[0].tool_calls[0]"),
    "tool_choice of another type (was passed on)": (
        "/v1/chat/completions", {**CHAT, "tool_choice": {"type": "AAA", "function": {"name": "f"}}}, "tool_choice"),
    "embeddings user that is an object (was passed on)": (
        "/v1/embeddings", {"model": "embed-test", "input": "x", "user": {}}, "user"),
    "completions user that is an object (was passed on)": (
        "/v1/completions", {"model": "gpt-test", "prompt": "x", "user": {}}, "user"),
    "completions seed that is an object (was passed on)": (
        "/v1/completions", {"model": "gpt-test", "prompt": "x", "seed": {}}, "seed"),
    "completions max_tokens over GATEWAY_MAX_OUTPUT_TOKENS (was passed on)": (
        "/v1/completions", {"model": "gpt-test", "prompt": "x", "max_tokens": 10**7}, "max_tokens"),
    "completions stream_options.include_usage not a boolean (was passed on)": (
        "/v1/completions", {"model": "gpt-test", "prompt": "x", "stream": True,
                            "stream_options": {"include_usage": "yes"}}, "stream_options"),
}


@pytest.mark.parametrize(("path", "body", "param"), FOUND.values(), ids=FOUND.keys())
def test_inputs_the_fuzzer_found_get_a_clear_400(key_client, gateway, api_key, path, body, param):
    error = assert_openai_error(post(gateway, api_key[1], body, path=path), 400, "invalid_value")
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_an_empty_thinking_object_on_messages_gets_anthropics_400(key_client, gateway, api_key):
    response = post(gateway, api_key[1], {"model": "gpt-test", "max_tokens": 10, "thinking": {},
                                          "messages": [{"role": "user", "content": "hi"}]}, path="/v1/messages")
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "invalid_request_error"
    assert "thinking" in response.json()["error"]["message"]


def test_embeddings_of_a_billion_dimensions_get_the_upstreams_400_not_a_stalled_mock(key_client, gateway, api_key):
    # The mock upstream used to compute them all, stalling every other call until breakers opened.
    response = post(gateway, api_key[1], {"model": "embed-test", "input": "x", "dimensions": 10**9},
                    path="/v1/embeddings")
    assert_openai_error(response, 400)
    small = post(gateway, api_key[1], {"model": "embed-test", "input": "x", "dimensions": 8}, path="/v1/embeddings")
    assert len(small.json()["data"][0]["embedding"]) == 8


@pytest.mark.parametrize(("path", "query", "status"), [
    ("/api/manage/audit/", "action=a%00b", 400),  # NUL in a text filter: was a 500 (PostgreSQL refuses it)
    ("/api/manage/audit/", "until=2026-13-45T00:00", 400),  # was a 500 (parse_datetime's ValueError)
    ("/api/manage/audit/", "since=0001-01-01T00:00%2B05:00", 400),  # before the year 1 in UTC
    ("/api/manage/audit/", "until=0541-09-13T18:30:15-00:32", 200),
    ("/api/usage/records", "model=a%00b", 400),
    ("/api/usage/records", "start=2026-13-45", 400),
    ("/api/usage/records", "end=0220-01-04T02:10:39-18:11", 200),  # an offset PostgreSQL refused: was a 500
    ("/api/usage/summary", "provider=%00", 400),
])
def test_filters_the_fuzzer_found_get_an_answer_not_a_500(admin_client, path, query, status):
    response = admin_client.get(f"{path}?{query}")
    assert response.status_code == status, response.content


@pytest.mark.parametrize("value", [5, {"a": 1}, [["x"]], None])
def test_allowed_models_must_be_a_list_of_names(admin_client, value):
    response = admin_client.post("/api/manage/tenants/", {"name": "T", "slug": "t", "allowed_models": value},
                                 content_type="application/json")
    assert response.status_code == 400 and "allowed_models" in response.json(), response.content


def test_a_form_posted_tenant_with_null_allowed_models_is_not_a_500(admin_client):
    # A multipart "null" was read as JSON null and hit the NOT NULL column.
    response = admin_client.post("/api/manage/tenants/", {"name": "T", "slug": "t", "allowed_models": "null"})
    assert response.status_code in (201, 400), response.content


def test_allowed_models_are_checked_in_the_admin_too(tenant):
    from django.core.exceptions import ValidationError

    from keys import services as key_services

    tenant.allowed_models = {"gpt-4o": True}
    with pytest.raises(ValidationError):
        tenant.full_clean()
    key, _ = key_services.issue(tenant, "k")
    key.allowed_models = 5
    with pytest.raises(ValidationError):
        key.full_clean()
