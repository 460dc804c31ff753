"""The response cache, through the real gateway process and the openai and anthropic SDKs.

A hit is noticed by the client as the same answer (under a new id) with `x-gateway-cache: hit`,
and by the provider as no call at all: the mock upstream's request counter does not move.
"""

import os
import signal
import time
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from tests.conftest import make_provider, start_gateway, usage_record, wait_until

HI = [{"role": "user", "content": "What is the capital of France?"}]


def upstream_calls(mock) -> int:
    return sum(httpx.get(mock.url + "/_mock/stats").json()["requests"].values())


def policy(tenant, **fields):
    from routing.models import CachePolicy

    return CachePolicy.objects.create(tenant=tenant, **fields)


@pytest.fixture()
def cached(gateway, mock, tenant, api_key):
    """A tenant whose answers are cached (the default policy: exact, an hour, every endpoint), with an
    OpenAI-kind provider on the mock, and an openai SDK client on its key."""
    policy(tenant)
    make_provider("openai", mock.url)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "chat-openai" in {m.id for m in client.models.list()})
    return client


def chat(client, messages=HI, **extra):
    raw = client.chat.completions.with_raw_response.create(model="chat-openai", messages=messages, **extra)
    return raw.headers, raw.parse()


def streamed_chat(client, **extra):
    with client.chat.completions.with_streaming_response.create(model="chat-openai", messages=HI, stream=True,
                                                               **extra) as raw:
        chunks = list(raw.parse())
    return raw.headers, chunks


def test_a_repeated_chat_request_is_answered_from_the_cache_with_a_new_id(cached, mock):
    headers, first = chat(cached)
    assert headers["x-gateway-cache"] == "miss"
    calls = upstream_calls(mock)
    headers, again = chat(cached)
    assert headers["x-gateway-cache"] == "hit"
    assert upstream_calls(mock) == calls
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.id != first.id
    assert again.usage.completion_tokens == first.usage.completion_tokens


def test_a_streamed_request_hits_and_is_replayed_as_a_stream_with_usage_when_asked(cached, mock):
    headers, chunks = streamed_chat(cached, stream_options={"include_usage": True})
    assert headers["x-gateway-cache"] == "miss"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = upstream_calls(mock)
    headers, replayed = streamed_chat(cached, stream_options={"include_usage": True})
    assert headers["x-gateway-cache"] == "hit" and upstream_calls(mock) == calls
    assert "".join(c.choices[0].delta.content or "" for c in replayed if c.choices) == text
    assert replayed[-1].usage is not None and replayed[-1].usage.completion_tokens > 0
    # The same question asked without streaming is the same entry, answered as JSON.
    headers, answer = chat(cached)
    assert headers["x-gateway-cache"] == "hit" and answer.choices[0].message.content == text
    _, plain = streamed_chat(cached)
    assert all(c.usage is None for c in plain)  # no usage chunk unless asked


def test_a_hit_is_a_usage_record_at_no_cost_that_says_what_it_saved(cached, mock):
    first, _ = chat(cached)
    headers, _ = chat(cached)
    missed, hit = usage_record(first["x-request-id"]), usage_record(headers["x-request-id"])
    assert not missed.cache_hit and missed.cost_usd > 0
    assert hit.cache_hit and hit.cost_usd == 0 and hit.cost_saved_usd == missed.cost_usd
    assert hit.completion_tokens == missed.completion_tokens and hit.status == "ok"


def test_the_usage_api_says_which_records_were_cache_hits(cached, gateway, tenant):
    from tests.conftest import user_in

    chat(cached)
    headers, _ = chat(cached)
    usage_record(headers["x-request-id"])
    user_in(tenant, "admin", password="pw-123456789")
    rows = httpx.get(gateway.url + "/api/usage/records", auth=("acme-admin", "pw-123456789")).json()["results"]
    hit = next(r for r in rows if r["request_id"] == headers["x-request-id"])
    assert hit["cache_hit"] is True and Decimal(hit["cost_usd"]) == 0
    assert Decimal(hit["cost_saved_usd"]) > 0


def test_every_front_hits_json_and_streamed(cached, gateway, mock, api_key):
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=api_key[1], max_retries=0)

    def legacy(stream):
        with cached.completions.with_streaming_response.create(model="chat-openai", prompt="Say hi",
                                                              stream=stream) as raw:
            parsed = raw.parse()
            text = "".join(c.choices[0].text for c in parsed if c.choices) if stream else parsed.choices[0].text
        return raw.headers, text

    def embeddings(_):
        raw = cached.embeddings.with_raw_response.create(model="embed-openai", input="hello")
        return raw.headers, raw.parse().data[0].embedding

    def messages(stream):
        if stream:
            with claude.messages.stream(model="chat-openai", max_tokens=50, messages=HI) as events:
                text = "".join(events.text_stream)
                return events.response.headers, text
        raw = claude.messages.with_raw_response.create(model="chat-openai", max_tokens=50, messages=HI)
        return raw.headers, raw.parse().content[0].text

    def responses(stream):
        if stream:
            with cached.responses.with_streaming_response.create(model="chat-openai", input="Hi there",
                                                                stream=True) as raw:
                events = list(raw.parse())
            assert events[-1].type == "response.completed"
            return raw.headers, events[-1].response.output_text
        raw = cached.responses.with_raw_response.create(model="chat-openai", input="Hi there")
        return raw.headers, raw.parse().output_text

    for name, ask, stream in [("legacy", legacy, False), ("legacy", legacy, True), ("embeddings", embeddings, False),
                              ("messages", messages, False), ("messages", messages, True),
                              ("responses", responses, False), ("responses", responses, True)]:
        headers, answer = ask(stream)
        assert headers["x-gateway-cache"] == ("hit" if stream else "miss"), (name, stream)
        calls = upstream_calls(mock)
        headers, again = ask(stream)
        assert headers["x-gateway-cache"] == "hit", (name, stream)
        assert upstream_calls(mock) == calls, (name, stream)
        assert again == answer and answer, (name, stream)


def test_another_tenant_with_the_same_body_misses(cached, gateway, mock, other_tenant):
    from keys import services as key_services

    chat(cached)
    policy(other_tenant)
    theirs = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key_services.issue(other_tenant, "k")[1],
                           max_retries=0)
    calls = upstream_calls(mock)
    headers, _ = chat(theirs)
    assert headers["x-gateway-cache"] == "miss" and upstream_calls(mock) == calls + 1


def test_a_key_without_permission_for_the_model_is_refused_before_the_cache(cached, gateway, tenant):
    from keys import services as key_services

    chat(cached)
    _, secret = key_services.issue(tenant, "narrow", models_allowed=["embed-openai"])
    narrow = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(narrow)
    assert refused.value.body["code"] == "model_not_allowed"
    assert "x-gateway-cache" not in refused.value.response.headers


def test_a_changed_temperature_or_tool_misses_and_ignored_fields_still_hit(cached, mock):
    chat(cached, temperature=0.2)
    assert chat(cached, temperature=0.2, user="someone", metadata={"a": "b"}, store=False)[0]["x-gateway-cache"] == "hit"
    assert chat(cached, temperature=0.3)[0]["x-gateway-cache"] == "miss"
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    assert chat(cached, temperature=0.2, tools=[tool])[0]["x-gateway-cache"] == "miss"


def test_cache_control_and_the_ttl_header(cached, mock):
    client = cached
    assert chat(client, extra_headers={"cache-control": "no-store"})[0]["x-gateway-cache"] == "bypass"
    assert chat(client)[0]["x-gateway-cache"] == "miss"  # no-store wrote nothing
    calls = upstream_calls(mock)
    assert chat(client, extra_headers={"cache-control": "no-cache"})[0]["x-gateway-cache"] == "bypass"
    assert upstream_calls(mock) == calls + 1  # no-cache skipped the lookup and refreshed the entry
    assert chat(client)[0]["x-gateway-cache"] == "hit"
    short = [{"role": "user", "content": "Remember this briefly."}]
    assert chat(client, short, extra_headers={"x-gateway-cache-ttl": "1"})[0]["x-gateway-cache"] == "miss"
    time.sleep(1.5)
    assert chat(client, short)[0]["x-gateway-cache"] == "miss"


def test_a_ttl_header_that_is_not_whole_seconds_is_a_400_in_each_callers_shape(cached, gateway, api_key, mock):
    calls = upstream_calls(mock)
    for bad in ("", "ten", "-5", "1.5"):
        with pytest.raises(openai.BadRequestError) as refused:
            chat(cached, extra_headers={"x-gateway-cache-ttl": bad})
        assert refused.value.code == "invalid_cache_ttl"
    answer = httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": api_key[1], "x-gateway-cache-ttl": "x"},
                        json={"model": "chat-openai", "max_tokens": 5, "messages": HI}, timeout=20)
    assert answer.status_code == 400
    assert answer.json()["type"] == "error" and "x-gateway-cache-ttl" in answer.json()["error"]["message"]
    assert upstream_calls(mock) == calls  # refused before any upstream call


@pytest.mark.parametrize("expiry", ["sliding", "absolute"])
def test_sliding_expiry_is_renewed_by_a_hit_and_absolute_is_not(gateway, mock, tenant, api_key, expiry):
    policy(tenant, ttl_seconds=2, expiry=expiry)
    make_provider("openai", mock.url)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "chat-openai" in {m.id for m in client.models.list()})
    assert chat(client)[0]["x-gateway-cache"] == "miss"
    time.sleep(1.3)
    assert chat(client)[0]["x-gateway-cache"] == "hit"
    time.sleep(1.3)  # 2.6 s after the store, 1.3 s after the hit
    assert chat(client)[0]["x-gateway-cache"] == ("hit" if expiry == "sliding" else "miss")


@pytest.mark.parametrize("counted", [True, False])
def test_hits_spend_the_budget_only_when_the_policy_counts_them(gateway, mock, tenant, api_key, counted):
    from usage.models import Limit

    # Each answer: 10 completion tokens at 100 USD per million, 0.001 USD; the budget holds 2.5 of them.
    policy(tenant, hits_count_against_limits=counted)
    Limit.objects.create(tenant=tenant, budget_usd=Decimal("0.0025"), period="day")
    make_provider("openai", mock.url, input_price_per_mtok="0", output_price_per_mtok="100")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "chat-openai" in {m.id for m in client.models.list()})
    ten = [{"role": "user", "content": "Count to ten [[mock chunks=10]]"}]
    assert chat(client, ten, max_tokens=10)[0]["x-gateway-cache"] == "miss"
    assert chat(client, ten, max_tokens=10)[0]["x-gateway-cache"] == "hit"
    if counted:
        calls = upstream_calls(mock)
        with pytest.raises(openai.RateLimitError) as refused:
            chat(client, ten, max_tokens=10)
        assert refused.value.body["code"] == "budget_exceeded" and upstream_calls(mock) == calls
        assert "x-gateway-cache" not in refused.value.response.headers
    else:
        for _ in range(4):
            assert chat(client, ten, max_tokens=10)[0]["x-gateway-cache"] == "hit"


def test_tool_call_answers_are_cached_only_when_the_policy_says_so(gateway, mock, tenant, api_key):
    rule = policy(tenant)
    make_provider("openai", mock.url)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "chat-openai" in {m.id for m in client.models.list()})
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    ask = [{"role": "user", "content": "Weather in Paris? [[mock tool=get_weather]]"}]
    headers, answer = chat(client, ask, tools=[tool])
    assert answer.choices[0].message.tool_calls
    assert chat(client, ask, tools=[tool])[0]["x-gateway-cache"] == "miss"
    rule.cache_tool_calls = True
    rule.save()
    assert wait_until(lambda: chat(client, ask, tools=[tool])[0]["x-gateway-cache"] == "hit")
    assert chat(client, ask, tools=[tool])[1].choices[0].message.tool_calls[0].function.name == "get_weather"


def test_a_key_policy_may_switch_the_cache_off_and_no_policy_means_no_header(cached, gateway, tenant):
    from keys import services as key_services

    key, secret = key_services.issue(tenant, "uncached")
    policy(tenant, api_key=key, mode="off")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    assert wait_until(lambda: "x-gateway-cache" not in chat(client)[0])
    assert chat(cached)[0]["x-gateway-cache"] in ("miss", "hit")


def test_purge_through_the_management_api(cached, gateway, tenant, other_tenant):
    from django.contrib.auth import get_user_model

    from tests.conftest import user_in

    chat(cached)
    headers, _ = chat(cached)
    assert headers["x-gateway-cache"] == "hit"
    user_in(tenant, "admin", password="pw-123456789")
    auth = ("acme-admin", "pw-123456789")
    stranger = user_in(other_tenant, "admin", password="pw-123456789")
    refused = httpx.post(gateway.url + "/api/manage/cache-policies/purge/", json={"tenant": tenant.id},
                         auth=(stranger.username, "pw-123456789"))
    assert refused.status_code in (403, 404)
    assert chat(cached)[0]["x-gateway-cache"] == "hit"
    one = httpx.post(gateway.url + "/api/manage/cache-policies/purge/",
                     json={"tenant": tenant.id, "entry": headers["x-gateway-cache-key"]}, auth=auth)
    assert one.status_code == 200 and one.json() == {"purged": 1}
    assert chat(cached)[0]["x-gateway-cache"] == "miss"
    everything = httpx.post(gateway.url + "/api/manage/cache-policies/purge/",
                            json={"tenant": tenant.id, "model": "chat-openai"}, auth=auth)
    assert everything.json() == {"purged": 1}
    assert chat(cached)[0]["x-gateway-cache"] == "miss"
    assert get_user_model().objects.filter(username="acme-admin").exists()


def test_policies_are_managed_through_the_api(gateway, tenant, transactional_db):
    from tests.conftest import user_in

    user_in(tenant, "owner", password="pw-123456789")
    auth = ("acme-owner", "pw-123456789")
    made = httpx.post(gateway.url + "/api/manage/cache-policies/", auth=auth, json={
        "tenant": tenant.id, "model": "chat-openai", "mode": "exact", "ttl_seconds": 60, "expiry": "sliding",
        "endpoints": ["chat.completions", "messages"]})
    assert made.status_code == 201, made.text
    assert made.json()["endpoints"] == ["chat.completions", "messages"] and made.json()["cache_tool_calls"] is False
    bad = httpx.post(gateway.url + "/api/manage/cache-policies/", auth=auth,
                     json={"tenant": tenant.id, "endpoints": ["images"]})
    assert bad.status_code == 400


def test_redis_gone_means_uncached_answers_and_back_means_cached(gateway_env, own_redis, mock, tenant, api_key):
    policy(tenant)
    make_provider("openai", mock.url)
    server = start_gateway({**gateway_env, "REDIS_URL": own_redis.url, "REDIS_PROBE_INTERVAL": "0.2"})
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
        assert chat(client)[0]["x-gateway-cache"] == "miss"
        assert chat(client)[0]["x-gateway-cache"] == "hit"
        own_redis.stop()
        for _ in range(3):
            headers, answer = chat(client)
            assert headers["x-gateway-cache"] == "miss" and answer.choices[0].message.content
        own_redis.start()
        assert wait_until(lambda: chat(client)[0]["x-gateway-cache"] == "hit", timeout=10)
    finally:
        server.stop()


def test_a_paused_redis_means_uncached_answers_that_never_fail(gateway_env, own_redis, mock, tenant, api_key):
    """Redis hanging (SIGSTOP): the first call waits out one socket timeout, then every call, JSON or
    streamed, is answered uncached; once Redis answers again, the entries it kept are served again."""
    policy(tenant)
    make_provider("openai", mock.url)
    server = start_gateway({**gateway_env, "REDIS_URL": own_redis.url, "REDIS_PROBE_INTERVAL": "0.2"})
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=api_key[1], max_retries=0, timeout=30)
        assert chat(client)[0]["x-gateway-cache"] == "miss"
        assert chat(client)[0]["x-gateway-cache"] == "hit"
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(2):
                headers, answer = chat(client)
                assert headers["x-gateway-cache"] == "miss" and answer.choices[0].message.content
                headers, chunks = streamed_chat(client)
                assert headers["x-gateway-cache"] == "miss" and "".join(
                    c.choices[0].delta.content or "" for c in chunks if c.choices)
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        assert wait_until(lambda: chat(client)[0]["x-gateway-cache"] == "hit", timeout=10)
    finally:
        server.stop()


def test_embedded_mode_caches_in_process(gateway_env, mock, tenant, api_key):
    policy(tenant)
    make_provider("openai", mock.url)
    server = start_gateway({**gateway_env, "REDIS_URL": ""})
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
        assert chat(client)[0]["x-gateway-cache"] == "miss"
        calls = upstream_calls(mock)
        headers, chunks = streamed_chat(client)
        assert headers["x-gateway-cache"] == "hit" and upstream_calls(mock) == calls and chunks
    finally:
        server.stop()


# --- semantic ---------------------------------------------------------------------------


def ask(client, text, **extra):
    return chat(client, [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}],
                **extra)


@pytest.fixture()
def semantic(gateway, mock, tenant, api_key):
    """A tenant with a semantic policy on the local embedding model (default threshold 0.95)."""
    policy(tenant, mode="semantic")
    make_provider("openai", mock.url)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "chat-openai" in {m.id for m in client.models.list()})
    return client


def test_a_paraphrase_hits_and_a_different_question_misses(semantic, mock):
    headers, first = ask(semantic, "How do I reverse a list in Python?")
    assert headers["x-gateway-cache"] == "miss"
    calls = upstream_calls(mock)
    headers, again = ask(semantic, "How can I reverse a list in Python?")
    assert headers["x-gateway-cache"] == "hit" and upstream_calls(mock) == calls
    assert float(headers["x-gateway-cache-similarity"]) >= 0.95
    assert again.choices[0].message.content == first.choices[0].message.content
    assert ask(semantic, "How do I sort a list in Python?")[0]["x-gateway-cache"] == "miss"
    assert ask(semantic, "What is the capital of Germany?")[0]["x-gateway-cache"] == "miss"


def test_a_semantic_hit_needs_the_same_system_prompt_tools_and_tenant(semantic, gateway, other_tenant):
    from keys import services as key_services

    ask(semantic, "What is the capital of France?")
    assert ask(semantic, "What's the capital of France?")[0]["x-gateway-cache"] == "hit"
    other_system = [{"role": "system", "content": "Answer at length."},
                    {"role": "user", "content": "What's the capital of France?"}]
    assert chat(semantic, other_system)[0]["x-gateway-cache"] == "miss"
    tool = {"type": "function", "function": {"name": "atlas", "parameters": {"type": "object", "properties": {}}}}
    assert ask(semantic, "What's the capital of France? [[mock chunks=3]]", tools=[tool],
               tool_choice="none")[0]["x-gateway-cache"] == "miss"
    policy(other_tenant, mode="semantic")
    theirs = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key_services.issue(other_tenant, "k")[1],
                           max_retries=0)
    assert wait_until(lambda: ask(theirs, "What's the capital of France?")[0].get("x-gateway-cache") == "miss")


def test_a_failing_embedding_deployment_makes_the_lookup_a_miss_not_an_error(gateway, mock, tenant, api_key):
    policy(tenant, mode="semantic", semantic_embedding_model="embed-broken")
    make_provider("openai", mock.url)
    make_provider("openai", mock.url, name="broken", knobs="error=500")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "embed-broken" in {m.id for m in client.models.list()})
    for _ in range(2):
        headers, answer = ask(client, "What is the capital of France?")
        assert headers["x-gateway-cache"] == "miss" and answer.choices[0].message.content


def test_an_embedding_deployment_embeds_through_the_gateway_and_is_billed(gateway, mock, tenant, api_key):
    from usage.models import UsageRecord

    policy(tenant, mode="semantic", semantic_embedding_model="embed-openai")
    make_provider("openai", mock.url)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "embed-openai" in {m.id for m in client.models.list()})
    assert ask(client, "What is the capital of France?")[0]["x-gateway-cache"] == "miss"
    headers, _ = ask(client, "What is the capital of France?")
    assert headers["x-gateway-cache"] == "hit" and float(headers["x-gateway-cache-similarity"]) > 0.999
    assert wait_until(lambda: UsageRecord.objects.filter(tenant=tenant, endpoint="cache.embeddings",
                                                         public_model="embed-openai", status="ok").count() == 2)


def test_a_hit_still_passes_the_input_stages_and_output_stages_see_it(cached, gateway_env, api_key, mock):
    """Two gateways on one Redis: the plain one caches the answers, the one with stages (a refusal on
    input, upper-casing on output) must refuse before serving the cached answer, and shape a hit."""
    forbidden = [{"role": "user", "content": "a forbidden one"}]
    chat(cached, forbidden)
    chat(cached)
    staged = start_gateway({**gateway_env, "GATEWAY_STAGES": "input=tests.routing.stage_examples:refuse_word,"
                                                             "output=tests.routing.stage_examples:shout"})
    try:
        client = openai.OpenAI(base_url=staged.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
        with pytest.raises(openai.BadRequestError) as refused:
            chat(client, forbidden)
        assert refused.value.body["code"] == "content_blocked"
        calls = upstream_calls(mock)
        headers, answer = chat(client)
        text = answer.choices[0].message.content
        assert headers["x-gateway-cache"] == "hit" and upstream_calls(mock) == calls
        assert text == text.upper() and any(c.isalpha() for c in text)
    finally:
        staged.stop()


def test_purge_from_the_admin_is_audited(cached, client, tenant):
    from django.contrib.auth import get_user_model

    from routing.models import CachePolicy
    from tenants.models import AuditLog

    chat(cached)
    assert chat(cached)[0]["x-gateway-cache"] == "hit"
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", None))
    chosen = CachePolicy.objects.get(tenant=tenant)
    page = client.post("/admin/routing/cachepolicy/", {"action": "purge_answers", "_selected_action": [chosen.id]},
                       follow=True)
    assert "1 cached answers purged." in page.content.decode()
    assert chat(cached)[0]["x-gateway-cache"] == "miss"
    assert AuditLog.objects.filter(action="cache.purge", tenant=tenant).exists()


def test_a_request_only_a_native_deployment_can_serve_still_goes_native_under_a_policy(gateway, mock, tenant,
                                                                                       api_key):
    policy(tenant)
    make_provider("openai", mock.url, name="native", knobs="lenient_tools=1")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "chat-native" in {m.id for m in client.models.list()})
    searched = client.responses.with_raw_response.create(model="chat-native", input="Hello there",
                                                         tools=[{"type": "web_search"}])
    assert searched.status_code == 200 and searched.parse().output_text
    assert "x-gateway-cache" not in searched.headers  # not cached: its answer could not be replayed
    plain = client.responses.with_raw_response.create(model="chat-native", input="Hello there")
    assert plain.headers["x-gateway-cache"] == "miss"


def evictions(gateway, reason: str) -> float:
    """The fleet's gateway_cache_evictions_total{reason} (pushed by every process each METRICS_PUSH_INTERVAL)."""
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith("gateway_cache_evictions_total{") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_entries_redis_expires_are_counted_as_evictions(gateway, mock, tenant, api_key):
    """Entries stored by each path (a JSON answer in the usage event's round trip, a stream by its own SET,
    a JSON answer of a call with limits in the settle script) are counted once Redis has expired them."""
    from usage.models import Limit

    policy(tenant, ttl_seconds=1)
    make_provider("openai", mock.url)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: "chat-openai" in {m.id for m in client.models.list()})
    before = evictions(gateway, "expired")
    assert chat(client, [{"role": "user", "content": "First question"}])[0]["x-gateway-cache"] == "miss"
    assert evictions(gateway, "expired") == before  # not expired yet
    with client.chat.completions.with_streaming_response.create(
            model="chat-openai", stream=True, messages=[{"role": "user", "content": "Second question"}]) as raw:
        assert raw.headers["x-gateway-cache"] == "miss" and list(raw.parse())
    Limit.objects.create(tenant=tenant, requests_per_minute=1000)
    unstored = {"cache-control": "no-store"}
    assert wait_until(lambda: "x-ratelimit-limit-requests" in chat(client, extra_headers=unstored)[0])
    assert chat(client, [{"role": "user", "content": "Third question"}])[0]["x-gateway-cache"] == "miss"
    assert wait_until(lambda: evictions(gateway, "expired") - before >= 3, timeout=10)
    time.sleep(2.5)  # two sweeps more: each expiry is counted once
    assert evictions(gateway, "expired") - before == 3
    assert chat(client, [{"role": "user", "content": "First question"}])[0]["x-gateway-cache"] == "miss"
