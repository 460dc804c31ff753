"""The mock upstream speaks each provider's format faithfully: every official
SDK, pointed straight at the mock, parses its answers into its own types.

If one of these fails, the gateway's adapters may be tested against a format
no real provider sends.
"""

import json

import anthropic
import cohere
import numpy
import ollama
import openai
import pytest
from cohere.errors import TooManyRequestsError
from google import genai
from google.genai import types as genai_types
from huggingface_hub import InferenceClient

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
OPENAI_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                "parameters": WEATHER_SCHEMA}}


def test_openai_sdk_reads_chat_stream_tools_embeddings_and_completions(mock):
    client = openai.OpenAI(base_url=mock.url + "/v1", api_key="k", max_retries=0)
    chat = client.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == " ".join(["mock", "reply", "from", "the", "gateway", "test",
                                                        "upstream", "with", "some", "words"] * 2)
    call = client.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "weather?"}],
                                          tools=[OPENAI_TOOL]).choices[0]
    assert call.finish_reason == "tool_calls"
    assert json.loads(call.message.tool_calls[0].function.arguments) == {"city": "mock"}
    chunks = list(client.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "w"}],
                                                 tools=[OPENAI_TOOL], stream=True))
    assert "".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in chunks
                   if c.choices and c.choices[0].delta.tool_calls) == '{"city":"mock"}'
    assert client.embeddings.create(model="mock-embed", input="x", dimensions=4).data[0].embedding.__len__() == 4
    legacy = client.completions.create(model="mock-gpt", prompt="Say [[mock chunks=3]]")
    assert legacy.choices[0].text == "mock reply from" and legacy.usage.completion_tokens == 3


def test_azure_openai_client_reads_the_azure_dialect(mock):
    client = openai.AzureOpenAI(azure_endpoint=mock.url + "/azure", api_key="k", api_version="2024-10-21",
                                max_retries=0)
    chat = client.chat.completions.create(model="my-deployment", messages=[{"role": "user", "content": "hi"}])
    assert chat.model == "my-deployment" and chat.choices[0].message.content
    chunks = list(client.chat.completions.create(model="my-deployment", stream=True,
                                                 messages=[{"role": "user", "content": "hi [[mock chunks=3]]"}]))
    assert chunks[0].choices == []  # Azure's prompt filter results come first
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "mock reply from"
    assert len(client.embeddings.create(model="my-embedding", input="x").data[0].embedding) == 1536


def test_anthropic_sdk_reads_messages_streams_tool_use_and_models(mock):
    client = anthropic.Anthropic(base_url=mock.url, api_key="k", max_retries=0)
    message = client.messages.create(model="mock-claude", max_tokens=100, system="Be brief.",
                                     messages=[{"role": "user", "content": "hi [[mock cached_tokens=2]]"}])
    assert message.content[0].text and message.stop_reason == "end_turn"
    assert message.usage.cache_read_input_tokens == 2
    tool = {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}
    with client.messages.stream(model="mock-claude", max_tokens=100, tools=[tool],
                                messages=[{"role": "user", "content": "weather?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "mock"}
    with client.messages.stream(model="mock-claude", max_tokens=100,
                                messages=[{"role": "user", "content": "hi [[mock chunks=4]]"}]) as stream:
        assert "".join(stream.text_stream) == "mock reply from the"
        assert stream.get_final_message().usage.output_tokens == 4
    assert [m.id for m in client.models.list()] == ["mock-claude", "mock-claude-large"]


def test_google_genai_sdk_reads_content_streams_function_calls_and_embeddings(mock):
    client = genai.Client(api_key="k", http_options=genai_types.HttpOptions(base_url=mock.url))
    config = genai_types.GenerateContentConfig(system_instruction="Be brief.", thinking_config=None)
    response = client.models.generate_content(model="mock-gemini", contents="hi [[mock reasoning_tokens=3]]",
                                              config=config)
    assert response.text and response.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert response.usage_metadata.thoughts_token_count == 3
    streamed = "".join(c.text or "" for c in client.models.generate_content_stream(
        model="mock-gemini", contents="hi [[mock chunks=3]]"))
    assert streamed == "mock reply from"
    tool = genai_types.Tool(function_declarations=[genai_types.FunctionDeclaration(
        name="get_weather", description="Weather", parameters_json_schema=WEATHER_SCHEMA)])
    called = client.models.generate_content(model="mock-gemini", contents="weather?",
                                            config=genai_types.GenerateContentConfig(tools=[tool]))
    assert called.function_calls[0].name == "get_weather" and called.function_calls[0].args == {"city": "mock"}
    embedded = client.models.embed_content(model="mock-text-embed", contents=["a", "b"],
                                           config=genai_types.EmbedContentConfig(output_dimensionality=5))
    assert [len(e.values) for e in embedded.embeddings] == [5, 5]


def test_cohere_sdk_reads_chat_stream_tool_calls_and_embed(mock):
    client = cohere.ClientV2(api_key="k", base_url=mock.url + "/cohere")
    chat = client.chat(model="mock-command", messages=[{"role": "user", "content": "hi [[mock chunks=2]]"}])
    assert chat.message.content[0].text == "mock reply" and chat.finish_reason == "COMPLETE"
    assert chat.usage.tokens.output_tokens == 2
    events = list(client.chat_stream(model="mock-command", messages=[{"role": "user", "content": "weather?"}],
                                     tools=[OPENAI_TOOL]))
    kinds = [e.type for e in events]
    assert kinds[0] == "message-start" and "tool-call-start" in kinds and kinds[-1] == "message-end"
    arguments = "".join(e.delta.message.tool_calls.function.arguments for e in events if e.type == "tool-call-delta")
    assert json.loads(arguments) == {"city": "mock"}
    assert events[-1].delta.finish_reason == "TOOL_CALL"
    embedded = client.embed(model="mock-embed-v4", texts=["a", "b"], input_type="search_document",
                            embedding_types=["float"])
    assert len(embedded.embeddings.float_) == 2


def test_ollama_sdk_reads_chat_streams_tool_calls_and_embed(mock):
    client = ollama.Client(host=mock.url)
    reply = client.chat(model="mock-llama", messages=[{"role": "user", "content": "hi [[mock chunks=2]]"}],
                        stream=False)
    assert reply.message.content == "mock reply" and reply.done and reply.eval_count == 2
    parts = list(client.chat(model="mock-llama", messages=[{"role": "user", "content": "hi [[mock chunks=3]]"}],
                             stream=True))
    assert "".join(p.message.content for p in parts) == "mock reply from" and parts[-1].done
    called = client.chat(model="mock-llama", messages=[{"role": "user", "content": "weather?"}], tools=[OPENAI_TOOL])
    assert called.message.tool_calls[0].function.arguments == {"city": "mock"}
    assert len(client.embed(model="mock-embed", input=["a", "b"]).embeddings) == 2
    assert "mock-llama:latest" in [m.model for m in client.list().models]


def test_huggingface_hub_reads_tgi_chat_streams_tools_and_tei_embeddings(mock):
    client = InferenceClient(base_url=mock.url + "/huggingface", api_key="hf_k")
    chat = client.chat_completion(messages=[{"role": "user", "content": "hi [[mock chunks=2]]"}], model="tgi")
    assert chat.choices[0].message.content == "mock reply" and chat.usage.completion_tokens == 2
    called = client.chat_completion(messages=[{"role": "user", "content": "weather?"}], tools=[OPENAI_TOOL])
    assert json.loads(called.choices[0].message.tool_calls[0].function.arguments) == {"city": "mock"}
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat_completion(
        messages=[{"role": "user", "content": "hi [[mock chunks=3]]"}], stream=True) if c.choices)
    assert streamed == "mock reply from"
    vectors = InferenceClient(model=mock.url + "/huggingface/embed", api_key="hf_k").feature_extraction("a")
    assert isinstance(vectors, numpy.ndarray) and vectors.shape[-1] == 384


def _anthropic_call(url: str):
    client = anthropic.Anthropic(base_url=url + "/knobs/error=429", api_key="k", max_retries=0)
    client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def _gemini_call(url: str):
    client = genai.Client(api_key="k", http_options=genai_types.HttpOptions(base_url=url + "/knobs/error=404"))
    client.models.generate_content(model="m", contents="x")


def _cohere_call(url: str):
    cohere.ClientV2(api_key="k", base_url=url + "/knobs/error=429/cohere").chat(
        model="m", messages=[{"role": "user", "content": "x"}])


def _ollama_call(url: str):
    ollama.Client(host=url + "/knobs/error=404").chat(model="m", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize(("sdk_call", "error", "code"), [
    (_anthropic_call, anthropic.RateLimitError, 429),
    (_gemini_call, genai.errors.ClientError, 404),
    (_cohere_call, TooManyRequestsError, 429),
    (_ollama_call, ollama.ResponseError, 404),
])
def test_sdks_read_the_mock_error_bodies(mock, sdk_call, error, code):
    with pytest.raises(error) as raised:
        sdk_call(mock.url)
    exc = raised.value
    assert code in (getattr(exc, "status_code", None), getattr(exc, "code", None))


THINK = [{"role": "user", "content": "hi [[mock reasoning_tokens=3 chunks=2]]"}]


def test_anthropic_sdk_reads_signed_thinking_blocks_and_their_stream(mock):
    client = anthropic.Anthropic(base_url=mock.url, api_key="k", max_retries=0)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    message = client.messages.create(model="mock-claude", max_tokens=2000, thinking=thinking, messages=THINK)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "thinking it over" and message.content[0].signature
    with client.messages.stream(model="mock-claude", max_tokens=2000, thinking=thinking, messages=THINK) as stream:
        final = stream.get_final_message()
    assert final.content[0].signature == message.content[0].signature and final.content[1].text == "mock reply"


def test_google_genai_sdk_reads_thought_parts_and_signatures(mock):
    client = genai.Client(api_key="k", http_options=genai_types.HttpOptions(base_url=mock.url))
    config = genai_types.GenerateContentConfig(thinking_config=genai_types.ThinkingConfig(
        include_thoughts=True, thinking_budget=1024))
    response = client.models.generate_content(model="mock-gemini", contents=THINK[0]["content"], config=config)
    parts = response.candidates[0].content.parts
    assert parts[0].thought and parts[0].text == "thinking it over"
    assert response.text == "mock reply" and parts[-1].thought_signature  # bytes, decoded by the SDK
    chunks = list(client.models.generate_content_stream(model="mock-gemini", contents=THINK[0]["content"],
                                                        config=config))
    streamed = [p for c in chunks for p in c.candidates[0].content.parts]
    assert "".join(p.text for p in streamed if p.thought) == "thinking it over"
    assert [p.thought_signature for p in streamed if p.thought_signature] == [parts[-1].thought_signature]


def test_cohere_sdk_reads_thinking_content(mock):
    client = cohere.ClientV2(api_key="k", base_url=mock.url + "/cohere")
    chat = client.chat(model="mock-command", messages=THINK, thinking={"type": "enabled", "token_budget": 1024})
    assert [c.type for c in chat.message.content] == ["thinking", "text"]
    assert chat.message.content[0].thinking == "thinking it over"
    events = list(client.chat_stream(model="mock-command", messages=THINK, thinking={"type": "enabled"}))
    assert "".join(e.delta.message.content.thinking or "" for e in events if e.type == "content-delta") == \
        "thinking it over"


def test_ollama_sdk_reads_thinking(mock):
    client = ollama.Client(host=mock.url)
    reply = client.chat(model="mock-llama", messages=THINK, think=True, stream=False)
    assert reply.message.thinking == "thinking it over" and reply.message.content == "mock reply"
    parts = list(client.chat(model="mock-llama", messages=THINK, think="high", stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "thinking it over"
