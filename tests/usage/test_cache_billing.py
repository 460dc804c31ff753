"""Prompt-cache and reasoning tokens through a real gateway, with the official SDKs as clients:
each provider kind's mock reports them as that provider does, the fronts report them in their
own shape, and the usage record keeps them apart and bills each at its price, to the micro-dollar
(the expected cost is computed here from the prices and the tokens the mock reported)."""

import json
from decimal import Decimal
from pathlib import Path

import anthropic
import openai
import pytest

from providers.mock_upstream import directive
from tests.conftest import KINDS, make_provider, usage_record, wait_until

# The issue's prices: $3 / $15 per million, cache reads 0.1x, 5-minute writes 1.25x, 1-hour writes 2x.
PRICES = {"input_price_per_mtok": "3", "output_price_per_mtok": "15", "cached_input_price_per_mtok": "0.30",
          "cache_write_price_per_mtok": "3.75", "cache_write_1h_price_per_mtok": "6"}
KNOBS = {"cached_tokens": 40, "cache_write_tokens": 6, "cache_write_1h_tokens": 4, "reasoning_tokens": 3}
PROMPT = "Tell me about caches " * 20  # 80 words: more than the cached and written tokens together
# What each kind reports: cache reads, cache writes (and whether split by lifetime), reasoning apart.
READS = {"openai", "openai_compatible", "azure", "anthropic", "gemini", "cohere"}
WRITES = {"openai", "openai_compatible", "azure", "anthropic"}
SPLIT = {"anthropic"}
REASONING = {"openai", "openai_compatible", "azure", "gemini"}


def price(name: str, prices: dict = PRICES) -> Decimal:
    return Decimal(prices[name])


def expected_cost(record, prices: dict = PRICES) -> Decimal:
    """The record's tokens times the prices: the cost the record must hold."""
    written = record.cache_write_tokens
    uncached = record.prompt_tokens - record.cached_tokens - written
    return (uncached * price("input_price_per_mtok", prices)
            + record.cached_tokens * price("cached_input_price_per_mtok", prices)
            + (written - record.cache_write_1h_tokens) * price("cache_write_price_per_mtok", prices)
            + record.cache_write_1h_tokens * price("cache_write_1h_price_per_mtok", prices)
            + record.completion_tokens * price("output_price_per_mtok", prices)) / 1_000_000


def expected_counts(kind: str) -> tuple[int, int, int, int]:
    """(cache reads, cache writes, of them 1-hour, reasoning) as the kind reports KNOBS."""
    written = KNOBS["cache_write_tokens"] + KNOBS["cache_write_1h_tokens"]
    return (KNOBS["cached_tokens"] if kind in READS else 0, written if kind in WRITES else 0,
            KNOBS["cache_write_1h_tokens"] if kind in SPLIT else 0,
            KNOBS["reasoning_tokens"] if kind in REASONING else 0)


@pytest.fixture()
def priced_client(request, gateway, api_key, mock):
    kind = request.param
    make_provider(kind, mock.url, **PRICES)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: f"chat-{kind}" in [m.id for m in client.models.list()])
    return client, kind


def _record_counts(record) -> tuple[int, int, int, int]:
    return record.cached_tokens, record.cache_write_tokens, record.cache_write_1h_tokens, record.reasoning_tokens


@pytest.mark.parametrize("priced_client", list(KINDS), indirect=True)
def test_every_kind_bills_cache_and_reasoning_tokens_at_their_prices(priced_client):
    client, kind = priced_client
    messages = [{"role": "user", "content": PROMPT + directive(**KNOBS)}]
    raw = client.chat.completions.with_raw_response.create(model=f"chat-{kind}", messages=messages)
    usage = raw.parse().usage
    reads, writes, _, reasoning = expected_counts(kind)
    assert usage.prompt_tokens_details.cached_tokens == reads
    assert (usage.prompt_tokens_details.cache_write_tokens or 0) == writes  # a field of the SDK's type
    assert usage.completion_tokens_details.reasoning_tokens == reasoning
    record = usage_record(raw.headers["x-request-id"])
    assert _record_counts(record) == expected_counts(kind)
    assert (record.prompt_tokens, record.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert record.cost_usd == expected_cost(record) and not record.tokens_estimated
    if reads or writes:
        # the bug this fixes: every prompt token at the input price
        assert record.cost_usd < (record.prompt_tokens * 3 + record.completion_tokens * 15) / Decimal(1_000_000)

    stream = client.chat.completions.create(model=f"chat-{kind}", messages=messages, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = usage_record(stream.response.headers["x-request-id"])
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == reads
    assert _record_counts(streamed) == expected_counts(kind) and streamed.streamed
    assert streamed.cost_usd == expected_cost(streamed)


@pytest.fixture()
def claude(gateway, api_key, mock):
    make_provider("anthropic", mock.url, **PRICES)
    models = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0)
    assert wait_until(lambda: "chat-anthropic" in [m.id for m in models.models.list()])
    return anthropic.Anthropic(base_url=gateway.url, api_key=api_key[1], max_retries=0, timeout=20)


def test_the_issues_call_costs_what_anthropics_prices_say(claude, admin_client):
    # 1157 prompt tokens (the mock counts words plus 3): 945 read from the cache, 2 written, 210 not
    # cached, then 20 output tokens. At the full input price that was 0.003771 USD.
    words = "word " * 1151 + directive(cached_tokens=945, cache_write_tokens=2)
    raw = claude.messages.with_raw_response.create(model="chat-anthropic", max_tokens=100,
                                                   messages=[{"role": "user", "content": words}])
    message = raw.parse()
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (210, 945)
    assert message.usage.cache_creation_input_tokens == 2 and message.usage.output_tokens == 20
    assert message.usage.cache_creation.ephemeral_5m_input_tokens == 2
    record = usage_record(raw.headers["x-request-id"])
    assert (record.prompt_tokens, record.cached_tokens, record.cache_write_tokens) == (1157, 945, 2)
    assert record.cost_usd == expected_cost(record) == Decimal("0.001221")
    listed = admin_client.get("/api/usage/records").json()["results"][0]
    assert (listed["cached_tokens"], listed["cache_write_tokens"], listed["cost_usd"]) == (945, 2, str(record.cost_usd))
    totals = admin_client.get("/api/usage/summary").json()["totals"]
    assert (totals["cached_tokens"], totals["cache_write_tokens"], totals["reasoning_tokens"]) == (945, 2, 0)


def test_anthropic_front_reports_cache_tokens_in_json_and_in_the_stream(claude):
    content = PROMPT + directive(cached_tokens=30, cache_write_tokens=5, cache_write_1h_tokens=7)
    message = claude.messages.create(model="chat-anthropic", max_tokens=100,
                                     messages=[{"role": "user", "content": content}])
    prompt = message.usage.input_tokens + 30 + 12
    assert (message.usage.cache_read_input_tokens, message.usage.cache_creation_input_tokens) == (30, 12)
    assert message.usage.cache_creation.ephemeral_5m_input_tokens == 5
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 7
    with claude.messages.stream(model="chat-anthropic", max_tokens=100,
                                messages=[{"role": "user", "content": content}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    start = events[0].message.usage
    assert (start.input_tokens, start.cache_read_input_tokens, start.cache_creation_input_tokens) == (
        message.usage.input_tokens, 30, 12)
    delta = next(e for e in events if e.type == "message_delta").usage
    assert (delta.input_tokens, delta.cache_read_input_tokens, delta.output_tokens) == (
        message.usage.input_tokens, 30, 20)
    assert final.usage.cache_creation_input_tokens == 12
    record = usage_record(request_id)
    assert (record.prompt_tokens, record.cache_write_tokens, record.cache_write_1h_tokens) == (prompt, 12, 7)
    assert record.cost_usd == expected_cost(record)


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
def test_a_long_prompt_is_billed_at_the_long_context_prices(kind, gateway, api_key, mock):
    long_prices = {**PRICES, "long_context_threshold": 60, "long_input_price_per_mtok": "6",
                   "long_output_price_per_mtok": "22.50", "long_cached_input_price_per_mtok": "0.60",
                   "long_cache_write_price_per_mtok": "7.50", "long_cache_write_1h_price_per_mtok": "12"}
    make_provider(kind, mock.url, **long_prices)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: f"chat-{kind}" in [m.id for m in client.models.list()])
    short = client.chat.completions.with_raw_response.create(
        model=f"chat-{kind}", messages=[{"role": "user", "content": "Short " + directive(cached_tokens=10)}])
    long = client.chat.completions.with_raw_response.create(
        model=f"chat-{kind}", messages=[{"role": "user", "content": PROMPT + directive(cached_tokens=10)}])
    short_record, long_record = usage_record(short.headers["x-request-id"]), usage_record(long.headers["x-request-id"])
    assert short_record.prompt_tokens <= 60 < long_record.prompt_tokens and long_record.cached_tokens == 10
    assert short_record.cost_usd == expected_cost(short_record)
    long_tier = {name.removeprefix("long_"): value for name, value in long_prices.items() if name.startswith("long_")}
    assert long_record.cost_usd == expected_cost(long_record, long_tier)


CATALOGUE = json.loads((Path(__file__).parents[2] / "providers" / "price_catalogue.json").read_text())["models"]


def test_a_deployment_given_no_prices_is_billed_at_the_catalogues(gateway, api_key, mock):
    from providers.models import Deployment

    provider = make_provider("anthropic", mock.url, name="catalogued")
    Deployment.objects.create(provider=provider, public_model="sonnet", upstream_model="claude-sonnet-4-5-20250929")
    client = anthropic.Anthropic(base_url=gateway.url, api_key=api_key[1], max_retries=0, timeout=20)
    models = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0)
    assert wait_until(lambda: "sonnet" in [m.id for m in models.models.list()])
    raw = client.messages.with_raw_response.create(
        model="sonnet", max_tokens=100,
        messages=[{"role": "user", "content": PROMPT + directive(cached_tokens=20, cache_write_1h_tokens=9)}])
    record = usage_record(raw.headers["x-request-id"])
    listed = CATALOGUE["claude-sonnet-4-5"]
    catalogue_prices = {f"{name}_price_per_mtok": value for name, value in listed.items()
                        if name in ("input", "output", "cached_input", "cache_write", "cache_write_1h")}
    assert (record.cached_tokens, record.cache_write_1h_tokens) == (20, 9)
    assert record.cost_usd == expected_cost(record, catalogue_prices) > 0


THOUGHTS = "thinking it over"  # the mock's reasoning for reasoning_tokens=3


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_openai_sdk_on_an_anthropic_deployment_gets_reasoning_and_every_count(claude, gateway, api_key,
                                                                                 stream):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    messages = [{"role": "user", "content": PROMPT + directive(**KNOBS)}]
    if stream:
        answer = client.chat.completions.create(model="chat-anthropic", messages=messages, stream=True,
                                                reasoning_effort="high", stream_options={"include_usage": True})
        chunks = list(answer)
        reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                            for c in chunks if c.choices)
        usage, record = chunks[-1].usage, usage_record(answer.response.headers["x-request-id"])
    else:
        raw = client.chat.completions.with_raw_response.create(model="chat-anthropic", messages=messages,
                                                               reasoning_effort="high")
        completion = raw.parse()
        reasoning, usage = completion.choices[0].message.model_extra["reasoning_content"], completion.usage
        record = usage_record(raw.headers["x-request-id"])
    assert reasoning == THOUGHTS
    # Anthropic reports no thinking count: the gateway counts the thinking text (3 tokens).
    assert usage.completion_tokens_details.reasoning_tokens == 3 == record.reasoning_tokens
    assert usage.prompt_tokens_details.cached_tokens == 40 == record.cached_tokens
    assert usage.prompt_tokens_details.cache_write_tokens == 10 == record.cache_write_tokens
    assert record.cache_write_1h_tokens == 4 and record.completion_tokens == usage.completion_tokens == 23
    assert record.cost_usd == expected_cost(record)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_thinking_on_the_messages_api_is_counted_as_reasoning_tokens(claude, stream):
    body = {"model": "chat-anthropic", "max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": "Think " + directive(reasoning_tokens=3)}]}
    if stream:
        with claude.messages.stream(**body) as events:
            message = events.get_final_message()
            request_id = events.response.headers["x-request-id"]
    else:
        raw = claude.messages.with_raw_response.create(**body)
        message, request_id = raw.parse(), raw.headers["x-request-id"]
    assert message.content[0].type == "thinking" and message.content[0].thinking == THOUGHTS
    record = usage_record(request_id)
    assert record.reasoning_tokens == 3 and record.completion_tokens == message.usage.output_tokens == 23
    assert record.cost_usd == expected_cost(record)
