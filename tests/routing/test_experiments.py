"""Experiments: a route's calls split between variants by weight, sticky per user or header, within their
start and end; the answer names the variant; per-variant figures computed from the usage records and
the feedback clients send (POST /v1/feedback, tenant-scoped), in the usage and management APIs."""

import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from providers.models import Deployment
from routing.experiments.models import Experiment, Variant
from routing.experiments.stage import Arm, Running
from routing.prompts import services
from routing.prompts.models import PromptTemplate
from tests.conftest import usage_record, user_in, wait_until
from usage.models import Feedback, UsageRecord


def running(weights: dict[str, int]) -> Running:
    arms = tuple(Arm(name, weight, "", None, None, {}) for name, weight in weights.items())
    bounds, total = [], 0
    for arm in arms:
        total += arm.weight
        bounds.append(total)
    return Running(7, "exp", "", None, None, arms, tuple(bounds))


@pytest.mark.parametrize("sticky", [True, False])
def test_the_split_is_within_two_percent_of_the_weights_over_10000_assignments(sticky):
    weights = {"control": 70, "cheap": 20, "warm": 10}
    experiment = running(weights)
    counts = Counter(experiment.assign(f"user-{i}" if sticky else None).name for i in range(10_000))
    for name, weight in weights.items():
        assert abs(counts[name] / 10_000 - weight / 100) < 0.02, counts


def test_assignment_is_sticky_per_user_and_differs_between_experiments():
    experiment = running({"a": 1, "b": 1})
    for i in range(200):
        assert len({experiment.assign(f"user-{i}").name for _ in range(5)}) == 1
    other = Running(8, "other", "", None, None, experiment.arms, experiment.bounds)
    # Another experiment reshuffles its users: the same users do not all land on the same arm again.
    same = sum(experiment.assign(f"user-{i}").name == other.assign(f"user-{i}").name for i in range(1000))
    assert 400 < same < 600


@pytest.fixture()
def experiment(tenant, mock_provider):
    other = Deployment.objects.create(provider=mock_provider, public_model="gpt-other", upstream_model="mock-gpt-2",
                                      input_price_per_mtok="1", output_price_per_mtok="2")
    template = PromptTemplate.objects.create(tenant=tenant, name="tone")
    v1 = services.prompt_publish(template, [{"role": "system", "content": "Answer as a {{ persona }}."}])
    experiment = Experiment.objects.create(tenant=tenant, name="cheaper", route="gpt-test")
    Variant.objects.create(experiment=experiment, name="control", weight=1)
    Variant.objects.create(experiment=experiment, name="cheap", weight=1, model="gpt-other", deployment=other,
                           parameters={"temperature": 0.9})
    Variant.objects.create(experiment=experiment, name="pirate", weight=1, prompt_version=v1)
    return experiment


def chat(key_client, user: str, **extra):
    return key_client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], user=user, **extra)


def test_calls_are_split_sticky_per_user_and_the_answer_names_the_variant(key_client, experiment, mock):
    def assigned(user: str):
        response = chat(key_client, user, extra_body={"gateway_prompt": {"id": "tone",
                                                                         "variables": {"persona": "pirate"}}})
        return response.headers.get("x-gateway-variant"), response

    assert wait_until(lambda: assigned("u-0")[0], timeout=10)
    seen = {}
    for i in range(30):
        variant, response = assigned(f"u-{i}")
        assert response.headers["x-gateway-experiment"] == "cheaper"
        seen.setdefault(variant, []).append(f"u-{i}")
        sent = httpx.get(mock.url + "/_mock/last").json()["body"]
        if variant == "cheap":
            assert sent["model"] == "mock-gpt-2" and sent["temperature"] == 0.9
            assert response.headers["x-gateway-model"] == "mock-gpt-2"
        else:
            assert sent["model"] == "mock-gpt" and "temperature" not in sent
        if variant in ("pirate", "control"):  # the variant's template version is the one the request named
            assert sent["messages"][0] == {"role": "system", "content": "Answer as a pirate."}
        record = usage_record(response.headers["x-request-id"])
        assert (record.experiment_id, record.variant) == (experiment.id, variant)
    assert set(seen) == {"control", "cheap", "pirate"}
    for variant, users in seen.items():
        for user in users[:3]:
            assert assigned(user)[0] == variant  # sticky


def test_an_experiment_outside_its_start_and_end_leaves_calls_alone(key_client, experiment):
    assert wait_until(lambda: "x-gateway-variant" in chat(key_client, "u-0").headers, timeout=10)
    experiment.ends_at = datetime.now(UTC) - timedelta(minutes=1)
    experiment.save()
    assert wait_until(lambda: "x-gateway-variant" not in chat(key_client, "u-1").headers, timeout=10)
    experiment.ends_at, experiment.starts_at = None, datetime.now(UTC) + timedelta(hours=1)
    experiment.save()
    assert wait_until(lambda: "x-gateway-variant" not in chat(key_client, "u-2").headers, timeout=10)
    experiment.starts_at = datetime.now(UTC) - timedelta(seconds=1)
    experiment.save()
    assert wait_until(lambda: "x-gateway-variant" in chat(key_client, "u-3").headers, timeout=10)


def test_sticky_by_header(key_client, experiment):
    experiment.sticky_by, experiment.sticky_header = "header", "X-Session"
    experiment.save()

    def variant(session: str):
        return key_client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], user="ignored",
            extra_headers={"x-session": session}).headers.get("x-gateway-variant")

    assert wait_until(lambda: variant("s-1"), timeout=10)
    for i in range(10):
        assert len({variant(f"s-{i}") for _ in range(3)}) == 1


def test_feedback_rates_only_the_tenants_own_calls(gateway, key_client, experiment, api_key, other_tenant):
    from keys import services as key_services

    response = chat(key_client, "u-9")
    request_id = response.headers["x-request-id"]
    post = lambda secret, body: httpx.post(gateway.url + "/v1/feedback", json=body, timeout=20,  # noqa: E731
                                           headers={"authorization": f"Bearer {secret}"})
    given = post(api_key[1], {"request_id": request_id, "score": 1, "label": "helpful"})
    assert given.status_code == 200, given.text
    assert given.json()["variant"] == response.headers["x-gateway-variant"]
    row = Feedback.objects.get(request_id=request_id)
    assert (row.tenant_id, row.score, row.label) == (api_key[0].tenant_id, 1.0, "helpful")
    assert post(api_key[1], {"request_id": request_id, "score": 0}).status_code == 200
    assert Feedback.objects.get(request_id=request_id).score == 0  # replaced, not added

    _, theirs = key_services.issue(other_tenant, "their key")
    refused = post(theirs, {"request_id": request_id, "score": -1})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "request_not_found"
    assert Feedback.objects.get(request_id=request_id).score == 0
    for body, param in (({"score": 1}, "request_id"), ({"request_id": request_id}, "score"),
                        ({"request_id": request_id, "score": "good"}, "score"),
                        ({"request_id": request_id, "label": ""}, "label"),
                        ({"request_id": request_id, "score": 1, "stars": 5}, "stars")):
        bad = post(api_key[1], body)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    assert post("sk-gw-nope", {"request_id": request_id, "score": 1}).status_code == 401


def _records(tenant, key, experiment, variant: str, latencies: list[int], costs: list[str], failed: int = 0):
    now = datetime.now(UTC)
    rows = [UsageRecord(request_id=f"req_{variant}_{i}", created_at=now, tenant=tenant, api_key=key,
                        endpoint="chat.completions", public_model="gpt-test", latency_ms=latency, ttft_ms=latency // 4,
                        cost_usd=Decimal(cost), prompt_tokens=10 + i, completion_tokens=20,
                        status="upstream_error" if i < failed else "ok", experiment_id=experiment.id,
                        variant=variant)
            for i, (latency, cost) in enumerate(zip(latencies, costs, strict=True))]
    UsageRecord.objects.bulk_create(rows)
    return rows


def test_the_figures_are_computed_from_the_records_with_confidence_intervals(client, tenant, other_tenant, api_key,
                                                                              experiment):
    key = api_key[0]
    a_latencies = [100 + 10 * i for i in range(40)]
    a_costs = [f"0.00{i % 7}1" for i in range(40)]
    a = _records(tenant, key, experiment, "control", a_latencies, a_costs, failed=4)
    b = _records(tenant, key, experiment, "cheap", [300] * 10, ["0.000001"] * 10)
    for row, score, label in ((a[5], 1, "good"), (a[6], 0, "bad"), (a[7], 1, "good"), (b[0], 0.5, "")):
        Feedback.objects.create(tenant=tenant, request_id=row.request_id, score=score, label=label)
    # Another tenant's rows with the same experiment id, and its feedback on our ids, count for nothing.
    UsageRecord.objects.create(request_id="req_theirs", created_at=datetime.now(UTC), tenant=other_tenant,
                               endpoint="chat.completions", public_model="gpt-test", latency_ms=99999,
                               experiment_id=experiment.id, variant="control")
    Feedback.objects.create(tenant=other_tenant, request_id=a[8].request_id, score=-100, label="spam")

    client.force_login(user_in(tenant, "admin"))
    figures = client.get(f"/api/usage/experiments/{experiment.id}").json()["variants"]
    assert set(figures) == {"control", "cheap"}
    control = figures["control"]
    ok_latencies = [lat for i, lat in enumerate(a_latencies) if i >= 4]
    assert control["requests"] == 40 and control["errors"] == 4
    assert control["error_rate"]["value"] == 0.1
    low, high = control["error_rate"]["ci95"]
    assert 0.03 < low < 0.1 < high < 0.24  # Wilson's interval for 4 of 40
    assert control["latency_p50_ms"]["value"] == statistics.median(ok_latencies)
    assert control["latency_p95_ms"]["value"] == pytest.approx(statistics.quantiles(
        ok_latencies, n=20, method="inclusive")[-1])
    p50_low, p50_high = control["latency_p50_ms"]["ci95"]
    assert p50_low < control["latency_p50_ms"]["value"] < p50_high
    assert control["ttft_p50_ms"]["value"] == statistics.median([lat // 4 for lat in ok_latencies])
    total = sum(Decimal(c) for c in a_costs)
    assert Decimal(control["cost_usd"]) == total
    assert Decimal(control["cost_per_request_usd"]["value"]) == total / 40  # exact
    mean = float(total / 40)
    half = 1.959963984540054 * statistics.stdev(float(c) for c in a_costs) / 40 ** 0.5
    assert [float(v) for v in control["cost_per_request_usd"]["ci95"]] == pytest.approx([mean - half, mean + half])
    assert control["prompt_tokens_total"] == sum(10 + i for i in range(40))
    assert control["feedback"]["count"] == 3 and control["feedback"]["labels"] == {"good": 2, "bad": 1}
    assert control["feedback"]["score"]["value"] == pytest.approx(2 / 3)
    assert figures["cheap"]["feedback"]["count"] == 1 and figures["cheap"]["latency_p95_ms"]["value"] == 300
    assert Decimal(figures["cheap"]["cost_per_request_usd"]["value"]) == Decimal("0.000001")

    # The management API and the admin show the same figures.
    assert client.get(f"/api/manage/experiments/{experiment.id}/results/").json()["variants"] == figures
    page = client.get(f"/admin/routing/experiment/{experiment.id}/change/").content.decode()
    assert 'id="experiment-results"' in page and "10.0%" in page and "good: 2" in page
    # Another tenant's admin sees nothing of it.
    client.force_login(user_in(other_tenant, "admin"))
    assert client.get(f"/api/manage/experiments/{experiment.id}/results/").status_code == 404
    theirs = client.get(f"/api/usage/experiments/{experiment.id}").json()["variants"]
    assert theirs["control"]["requests"] == 1 and "cheap" not in theirs


def test_experiments_are_managed_through_the_api(client, tenant, other_tenant, mock_provider):
    client.force_login(user_in(tenant, "admin"))
    body = {"name": "split", "route": "gpt-test", "variants": [{"name": "a", "weight": 3}, {
        "name": "b", "weight": 1, "parameters": {"temperature": 0.1}}]}
    created = client.post("/api/manage/experiments/", body, content_type="application/json")
    assert created.status_code == 201, created.content
    assert [v["name"] for v in created.json()["variants"]] == ["a", "b"]
    bad = client.post("/api/manage/experiments/", {**body, "name": "bad", "variants": [
        {"name": "a", "parameters": {"frobnicate": 1}}]}, content_type="application/json")
    assert bad.status_code == 400 and "parameters" in bad.content.decode()
    theirs = PromptTemplate.objects.create(tenant=other_tenant, name="theirs")
    version = services.prompt_publish(theirs, [{"role": "user", "content": "x"}])
    refused = client.post("/api/manage/experiments/", {**body, "name": "steal", "variants": [
        {"name": "a", "prompt_version": version.id}]}, content_type="application/json")
    assert refused.status_code == 400 and "prompt_version" in refused.content.decode()
