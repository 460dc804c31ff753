"""The openai-agents SDK runs an agent with a function tool through /v1/responses to its end: the
mock calls the tool, the SDK runs it and sends its result back, the mock answers in words. Tracing
is off (it would post to api.openai.com)."""

import asyncio

import openai
import pytest
from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool

from tests.conftest import key_usage_records, make_provider, wait_until

QUESTION = "What is the weather in Paris?"
# The mock's answer in words with chunks=5.
FIVE_WORDS = "mock reply from the gateway"


def weather_agent(base_url: str, key: str, model: str, asked: list) -> Agent:
    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"Sunny in {city}"

    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=20)
    return Agent(name="Forecaster", instructions="Answer with the weather tool.", tools=[get_weather],
                 model=OpenAIResponsesModel(model=model, openai_client=client))


async def run_streamed(agent: Agent, config: RunConfig):
    result = Runner.run_streamed(agent, QUESTION, run_config=config)
    async for _ in result.stream_events():
        pass
    return result


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_agent_calls_its_tool_and_finishes(kind, streamed, gateway, api_key, mock):
    make_provider(kind, mock.url, knobs="chunks=5")
    models = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0)
    assert wait_until(lambda: f"chat-{kind}" in [m.id for m in models.models.list()])
    asked = []
    agent = weather_agent(gateway.url + "/v1", api_key[1], f"chat-{kind}", asked)
    config = RunConfig(tracing_disabled=True)

    if streamed:
        result = asyncio.run(run_streamed(agent, config))
    else:
        result = Runner.run_sync(agent, QUESTION, run_config=config)

    # The mock fills the tool's one required string argument with "mock".
    assert asked == ["mock"]
    assert result.final_output == FIVE_WORDS
    # The tool call, then the answer: two model calls, each billed once, as the SDK counted them.
    records = key_usage_records(api_key[0], 2)
    assert len(records) == 2
    for record in records:
        assert (record.endpoint, record.status, record.provider_name) == ("responses", "ok", kind)
        assert record.streamed == streamed and record.completion_tokens > 0
    usage = result.context_wrapper.usage
    assert usage.requests == 2
    assert (usage.input_tokens, usage.output_tokens) == (sum(r.prompt_tokens for r in records),
                                                         sum(r.completion_tokens for r in records))
