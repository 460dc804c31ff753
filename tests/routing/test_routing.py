"""Routes, strategies, breakers, retries and hedging, against mock upstreams that fail on script."""

import time
from collections import Counter

import httpx
import pytest

from providers.models import Deployment, Provider
from routing.models import CircuitEvent, Route, RouteRule, RouteTarget
from tests.conftest import Server, wait_until
from usage.models import UsageRecord


def provider(mock, name: str, **knobs) -> Provider:
    """A provider on the mock whose every call carries these knobs (as x-mock-* headers)."""
    headers = {f"x-mock-{k.replace('_', '-')}": str(v) for k, v in knobs.items()}
    p = Provider(name=name, kind="openai_compatible", base_url=mock.url + "/v1", extra_headers=headers,
                 allow_private_network=True)
    p.save()
    return p


def deployment(p: Provider, public: str, **fields) -> Deployment:
    return Deployment.objects.create(provider=p, public_model=public, upstream_model="mock-gpt", **fields)


def route(name: str, targets: list, strategy="priority", **fields) -> Route:
    r = Route.objects.create(name=name, strategy=strategy, **fields)
    for i, (dep, weight) in enumerate(targets):
        RouteTarget.objects.create(route=r, deployment=dep, priority=i, weight=weight)
    return r


def ask(gateway, key, model, text="hi", stream=False, headers=None, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream, **extra}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {key}", **(headers or {})})


def ready(gateway, key, model, **kw):
    """Wait until the gateway process knows the route (config reaches it through Redis)."""
    return wait_until(lambda: (r := ask(gateway, key, model, **kw)).status_code != 404 and r)


def served_by(response) -> str:
    return response.headers["x-gateway-provider"]


def test_5xx_and_timeouts_fall_back_and_headers_say_where_the_call_went(key_client, gateway, api_key, mock):
    broken = deployment(provider(mock, "broken", error=503), "x")
    slow = deployment(provider(mock, "slow", hang=1), "x", first_byte_timeout=0.5)
    good = deployment(provider(mock, "good"), "x")
    route("resilient", [(broken, 1), (slow, 1), (good, 1)])
    response = ready(gateway, api_key[1], "resilient", headers={"x-request-id": "fb-1"})
    assert response.status_code == 200 and served_by(response) == "good"
    assert response.headers["x-gateway-attempts"] == "3"
    assert response.headers["x-gateway-route"] == "resilient"
    assert response.headers["x-gateway-strategy"] == "priority"
    assert response.headers["x-gateway-deployment"] == str(good.id)
    record = wait_until(lambda: UsageRecord.objects.filter(client_request_id="fb-1").first())
    assert (record.route, record.strategy, record.attempts, record.deployment_id) == ("resilient", "priority", 3,
                                                                                      good.id)


def test_429_with_retry_after_cools_the_deployment_down(key_client, gateway, api_key, mock):
    limited = deployment(provider(mock, "limited", error=429, retry_after=30), "y")
    spare = deployment(provider(mock, "spare"), "y")
    route("cooling", [(limited, 1), (spare, 1)])
    first = ready(gateway, api_key[1], "cooling")
    assert first.headers["x-gateway-attempts"] == "2"
    second = ask(gateway, api_key[1], "cooling")
    # The rate-limited deployment is skipped for its Retry-After: straight to the spare.
    assert served_by(second) == "spare" and second.headers["x-gateway-attempts"] == "1"
    assert wait_until(lambda: CircuitEvent.objects.filter(deployment=limited, state="open").exists())


@pytest.fixture()
def breaker_gateways(gateway_env, mock_upstream):
    env = {**gateway_env, "BREAKER_FAILURES": "3", "BREAKER_COOLDOWN": "4"}
    servers = [Server(["manage.py", "serve", "--port", "{port}", "--log-level", "warning"], env=env,
                      ready_path="/v1/models") for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


def test_breaker_opens_after_its_threshold_is_shared_and_closes_after_a_probe(breaker_gateways, api_key, mock):
    one, two = breaker_gateways
    flaky_provider = provider(mock, "flaky", error=500)
    flaky = deployment(flaky_provider, "z")
    steady = deployment(provider(mock, "steady"), "z")
    route("guarded", [(flaky, 1), (steady, 1)])
    ready(one, api_key[1], "guarded")
    ready(two, api_key[1], "guarded")
    before = UsageRecord.objects.count()
    for _ in range(3):
        assert served_by(ask(one, api_key[1], "guarded")) == "steady"
    assert wait_until(lambda: CircuitEvent.objects.filter(deployment=flaky, state="open").exists())
    # Open on both processes: the second one, which saw fewer failures, skips it too.
    response = ask(two, api_key[1], "guarded")
    assert served_by(response) == "steady" and response.headers["x-gateway-attempts"] == "1"
    assert UsageRecord.objects.count() >= before

    flaky_provider.extra_headers = {}
    flaky_provider.save()  # the deployment recovers
    time.sleep(4.2)  # the cooldown
    probed = wait_until(lambda: served_by(ask(one, api_key[1], "guarded")) == "flaky", timeout=5)
    assert probed
    assert wait_until(lambda: CircuitEvent.objects.filter(deployment=flaky, state="closed").exists())
    assert served_by(ask(two, api_key[1], "guarded")) == "flaky"


def test_stream_cut_before_the_first_byte_is_retried(key_client, gateway, api_key, mock):
    cut = deployment(provider(mock, "cutter", cut_after=0), "s")
    whole = deployment(provider(mock, "whole"), "s")
    route("streamy", [(cut, 1), (whole, 1)])
    ready(gateway, api_key[1], "streamy")
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", timeout=30,
                      json={"model": "streamy", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                      headers={"authorization": f"Bearer {api_key[1]}"}) as response:
        body = response.read().decode()
    assert response.headers["x-gateway-provider"] == "whole" and response.headers["x-gateway-attempts"] == "2"
    assert body.rstrip().endswith("data: [DONE]")


def test_weighted_split_converges(key_client, gateway, api_key, mock):
    heavy = deployment(provider(mock, "heavy"), "w")
    light = deployment(provider(mock, "light"), "w")
    route("split", [(heavy, 3), (light, 1)], strategy="weighted")
    ready(gateway, api_key[1], "split")
    counts = Counter(served_by(ask(gateway, api_key[1], "split")) for _ in range(300))
    assert 0.65 <= counts["heavy"] / 300 <= 0.85


def test_latency_strategy_prefers_the_fast_deployment(key_client, gateway, api_key, mock):
    slow = deployment(provider(mock, "tortoise", latency_ms=150), "l")
    fast = deployment(provider(mock, "hare"), "l")
    route("quick", [(slow, 1), (fast, 1)], strategy="latency")
    ready(gateway, api_key[1], "quick")
    for _ in range(5):
        ask(gateway, api_key[1], "quick")
    counts = Counter(served_by(ask(gateway, api_key[1], "quick")) for _ in range(60))
    assert counts["hare"] >= 50


def test_content_rules_pick_their_target(key_client, gateway, api_key, mock):
    general = deployment(provider(mock, "general"), "c")
    coder = deployment(provider(mock, "coder"), "c")
    vision = deployment(provider(mock, "vision"), "c")
    r = route("smart", [(general, 1), (coder, 1), (vision, 1)])
    RouteRule.objects.create(route=r, order=0, kind="has_images", deployment=vision)
    RouteRule.objects.create(route=r, order=1, kind="keyword", value="python", deployment=coder)
    RouteRule.objects.create(route=r, order=2, kind="regex", value=r"^```", deployment=coder)
    RouteRule.objects.create(route=r, order=3, kind="header", header="x-team", value="vision", deployment=vision)
    assert served_by(ready(gateway, api_key[1], "smart")) == "general"
    assert served_by(ask(gateway, api_key[1], "smart", "write Python please")) == "coder"
    assert served_by(ask(gateway, api_key[1], "smart", "```js\nfix")) == "coder"
    assert served_by(ask(gateway, api_key[1], "smart", headers={"x-team": "vision"})) == "vision"
    image = [{"type": "text", "text": "what is this"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    assert served_by(httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                                headers={"authorization": f"Bearer {api_key[1]}"},
                                json={"model": "smart", "messages": [{"role": "user", "content": image}]})) == "vision"


def test_oversize_prompts_skip_small_context_targets(key_client, gateway, api_key, mock):
    small = deployment(provider(mock, "small"), "k", context_window=200, max_output_tokens=50)
    large = deployment(provider(mock, "large"), "k", context_window=100_000)
    route("fit", [(small, 1), (large, 1)])
    tiny = route("tiny", [(small, 1)])
    big = route("big", [(large, 1)])
    tiny.context_fallback = big
    tiny.save()
    long_text = "lorem ipsum dolor sit amet " * 100  # about 500 tokens
    assert served_by(ready(gateway, api_key[1], "fit")) == "small"
    assert served_by(ask(gateway, api_key[1], "fit", long_text)) == "large"
    assert served_by(ready(gateway, api_key[1], "tiny", text=long_text)) == "large"
    Route.objects.filter(pk=tiny.pk).update(context_fallback=None)
    Route.objects.get(pk=tiny.pk).save()  # announce the change
    refused = wait_until(lambda: (r := ask(gateway, api_key[1], "tiny", long_text)).status_code == 400 and r)
    assert refused.json()["error"]["code"] == "context_length_exceeded"


def test_hedging_answers_from_the_second_target_and_accounts_the_first(key_client, gateway, api_key, mock):
    sluggish = deployment(provider(mock, "sluggish", latency_ms=2000), "h")
    brisk = deployment(provider(mock, "brisk"), "h")
    route("hedged", [(sluggish, 1), (brisk, 1)], hedge_after_ms=100)
    ready(gateway, api_key[1], "hedged")
    started = time.monotonic()
    response = ask(gateway, api_key[1], "hedged", headers={"x-request-id": "hedge-1"})
    assert served_by(response) == "brisk" and time.monotonic() - started < 1.5
    records = wait_until(lambda: (rows := list(UsageRecord.objects.filter(client_request_id="hedge-1")))
                         and len(rows) == 2 and rows)
    assert sorted(r.status for r in records) == ["hedge_cancelled", "ok"]
    assert next(r for r in records if r.status == "hedge_cancelled").deployment_id == sluggish.id


def test_retry_budget_stops_retries_from_multiplying_an_outage(settings):
    from routing.upstream import RetryBudget

    settings.RETRY_BUDGET_FLOOR, settings.RETRY_BUDGET_RATIO = 2, 0.1
    budget = RetryBudget()
    for _ in range(50):
        budget.call()
    allowed = sum(budget.allow_retry() for _ in range(50))
    assert allowed == 7  # 2 + 10% of 50


def test_default_model_of_the_key_else_the_tenant(key_client, gateway, api_key, tenant, mock):
    from keys import services as key_services
    from keys.models import ApiKey

    deployment(provider(mock, "tenant-default"), "for-tenant")
    deployment(provider(mock, "key-default"), "for-key")
    tenant.default_model = "for-tenant"
    tenant.save()
    _, keyed = key_services.issue(tenant, "with default")
    ApiKey.objects.filter(name="with default").update(default_model="for-key")
    ApiKey.objects.get(name="with default").save()  # announce the change
    assert served_by(ready(gateway, api_key[1], "default")) == "tenant-default"
    assert served_by(ready(gateway, keyed, "default")) == "key-default"


def test_routes_are_listed_as_models_and_the_admin_shows_breaker_state(key_client, gateway, api_key, mock, client,
                                                                       django_user_model):
    failing = deployment(provider(mock, "failing", error=429, retry_after=60), "m1")
    route("listed", [(failing, 1), (deployment(provider(mock, "fine"), "m2"), 1)])
    assert wait_until(lambda: "listed" in [m.id for m in key_client.models.list()])
    ask(gateway, api_key[1], "listed")
    assert wait_until(lambda: CircuitEvent.objects.filter(deployment=failing, state="open").exists())
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", "pw-for-tests-only"))
    page = client.get(f"/admin/routing/route/{Route.objects.get(name='listed').id}/change/").content.decode()
    assert "open until" in page and "closed" in page
