"""Reasoning through every provider kind: reasoning_effort reaches each provider as its own
field, the provider's reasoning comes back as reasoning_content (and reasoning_signature where it
signs it), and a later turn sends the signed reasoning back as the provider requires.

The mock reasons only when asked, and refuses, as the providers do, a tool turn whose signature
went missing (Anthropic, Gemini) or reasoning fields it does not know (OpenAI's kinds, TGI).
"""

import httpx
import orjson
import pytest
from django.core.exceptions import ValidationError

from tests.conftest import make_provider, usage_record, wait_until

THOUGHTS = "thinking it over"  # the mock's reasoning for reasoning_tokens=3
TWENTY_WORDS = " ".join(["mock", "reply", "from", "the", "gateway", "test", "upstream", "with", "some", "words"] * 2)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                          "required": ["city"]}}}
REASONING_KINDS = ["openai", "openai_compatible", "azure", "anthropic", "gemini", "cohere", "ollama"]
SIGNING_KINDS = {"anthropic", "gemini"}
PASS_THROUGH = {"openai", "openai_compatible", "azure"}
# Where each kind's upstream request carries the reasoning asked for, and what reasoning_effort
# "medium" and "none" become there.
SENT = {
    "anthropic": (lambda b: b.get("thinking"), {"type": "enabled", "budget_tokens": 8192}, None),
    "gemini": (lambda b: b["generationConfig"].get("thinkingConfig"),
               {"thinkingBudget": 8192, "includeThoughts": True}, {"thinkingBudget": 0}),
    "cohere": (lambda b: b.get("thinking"), {"type": "enabled", "token_budget": 8192}, {"type": "disabled"}),
    "ollama": (lambda b: b.get("think"), True, False),
    **{kind: (lambda b: b.get("reasoning_effort"), "medium", "none") for kind in PASS_THROUGH},
}


class Gateway:
    """The gateway's chat endpoint as a client sees it, and what the mock was sent."""

    def __init__(self, gateway, mock, key: str, kind: str) -> None:
        self.url, self.mock, self.kind = gateway.url, mock, kind
        self.headers = {"authorization": f"Bearer {key}"}

    def chat(self, **body) -> httpx.Response:
        return httpx.post(self.url + "/v1/chat/completions", headers=self.headers, timeout=20,
                          json={"model": f"chat-{self.kind}", **body})

    def answer(self, **body) -> dict:
        response = self.chat(**body)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]

    def stream(self, **body) -> list[dict]:
        with httpx.stream("POST", self.url + "/v1/chat/completions", headers=self.headers, timeout=20,
                          json={"model": f"chat-{self.kind}", "stream": True, **body}) as response:
            assert response.status_code == 200, response.read()
            lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        return [orjson.loads(line) for line in lines[:-1]]

    def sent(self) -> dict:
        return httpx.get(self.mock.url + "/_mock/last").json()["body"]

    def served(self) -> dict:
        return httpx.get(self.mock.url + "/_mock/stats").json()["requests"]


@pytest.fixture()
def thinking(request, gateway, api_key, mock):
    """A Gateway for the kind in request.param, on a provider whose model reasons 3 tokens when asked."""
    kind = request.param
    make_provider(kind, mock.url, knobs="reasoning_tokens=3")
    client = Gateway(gateway, mock, api_key[1], kind)
    models = lambda: httpx.get(gateway.url + "/v1/models", headers=client.headers).json()["data"]  # noqa: E731
    assert wait_until(lambda: f"chat-{kind}" in [m["id"] for m in models()])
    return client


def deployment(client: Gateway, name: str, upstream_model: str) -> str:
    """Another chat model on the client's provider; its public name once the gateway serves it."""
    from providers.models import Deployment, Provider

    Deployment.objects.create(provider=Provider.objects.get(name=client.kind), public_model=name,
                              upstream_model=upstream_model)
    assert wait_until(lambda: client.chat(model=name, messages=[{"role": "user", "content": "x"}]).status_code == 200)
    return name


kinds = pytest.mark.parametrize("thinking", REASONING_KINDS, indirect=True)
HELLO = [{"role": "user", "content": "Hello"}]


@kinds
def test_reasoning_effort_reaches_the_provider_as_its_own_field(thinking):
    field, medium, none = SENT[thinking.kind]
    thinking.answer(messages=HELLO, reasoning_effort="medium")
    assert field(thinking.sent()) == medium
    thinking.answer(messages=HELLO, reasoning_effort="none")
    assert field(thinking.sent()) == none


@kinds
def test_the_providers_reasoning_comes_back_as_reasoning_content(thinking):
    response = thinking.chat(messages=HELLO, reasoning_effort="low")
    message = response.json()["choices"][0]["message"]
    assert message["content"] == TWENTY_WORDS and message["reasoning_content"] == THOUGHTS
    assert ("reasoning_signature" in message) == (thinking.kind in SIGNING_KINDS)
    usage = response.json()["usage"]
    assert usage["completion_tokens"] == 23  # reasoning is output, billed as such
    # Reported apart by OpenAI's kinds and Gemini, counted from the text for the others.
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 3
    assert usage_record(response.headers["x-request-id"]).reasoning_tokens == 3
    assert "reasoning_content" not in thinking.answer(messages=HELLO)  # never unasked


@kinds
def test_streamed_reasoning_arrives_as_deltas_before_the_answer(thinking):
    every = thinking.stream(messages=HELLO, reasoning_effort="high", stream_options={"include_usage": True})
    assert every[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3
    chunks = [c for c in every if c["choices"]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    reasoning = [i for i, d in enumerate(deltas) if d.get("reasoning_content")]
    content = [i for i, d in enumerate(deltas) if d.get("content")]
    assert "".join(deltas[i]["reasoning_content"] for i in reasoning) == THOUGHTS and len(reasoning) == 3
    assert "".join(deltas[i]["content"] for i in content) == TWENTY_WORDS and reasoning[-1] < content[0]
    signatures = [d["reasoning_signature"] for d in deltas if d.get("reasoning_signature")]
    assert len(signatures) == (1 if thinking.kind in SIGNING_KINDS else 0)
    if signatures:
        signature = thinking.answer(messages=HELLO, reasoning_effort="high")["reasoning_signature"]
        assert signatures == [signature]  # the same one the JSON answer carries


def _tool_turns(thinking: Gateway, stream: bool) -> list[dict]:
    """A first turn that reasons and calls a tool, as the client keeps it, then the tool's result."""
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    if stream:
        deltas = [c["choices"][0]["delta"] for c in thinking.stream(messages=messages, tools=[WEATHER],
                                                                    reasoning_effort="low") if c["choices"]]
        calls = [tc for d in deltas for tc in d.get("tool_calls") or ()]
        message = {"role": "assistant", "content": None, "reasoning_content": "".join(
            d.get("reasoning_content") or "" for d in deltas), "tool_calls": [{
                "id": calls[0]["id"], "type": "function", "function": {
                    "name": calls[0]["function"]["name"],
                    "arguments": "".join(tc["function"].get("arguments") or "" for tc in calls)}}]}
        if signature := "".join(d.get("reasoning_signature") or "" for d in deltas):
            message["reasoning_signature"] = signature
    else:
        message = thinking.answer(messages=messages, tools=[WEATHER], reasoning_effort="low")
    assert message["tool_calls"] and message["reasoning_content"] == THOUGHTS
    return [*messages, message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"],
                                 "content": '{"temperature": 21}'}]


def _reasoning_sent_back(kind: str, sent: dict, signature: str | None):
    """The reasoning of the assistant turn in what the provider was sent, in its own form."""
    if kind == "anthropic":
        return sent["messages"][1]["content"][0]
    if kind == "gemini":
        return sent["contents"][1]["parts"][0].get("thoughtSignature")
    if kind == "cohere":
        return sent["messages"][1]["content"][0]
    if kind == "ollama":
        return sent["messages"][1].get("thinking")
    return {k for k in sent["messages"][1] if k.startswith("reasoning")}


@kinds
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_tool_result_turn_sends_the_reasoning_back_as_the_provider_needs_it(thinking, stream):
    messages = _tool_turns(thinking, stream)
    signature = messages[1].get("reasoning_signature")
    final = thinking.answer(messages=messages, tools=[WEATHER], reasoning_effort="low")
    assert final["content"] == TWENTY_WORDS and not final.get("tool_calls")
    expected = {
        "anthropic": {"type": "thinking", "thinking": THOUGHTS, "signature": signature},
        "gemini": signature,  # on the function call it came with
        "cohere": {"type": "thinking", "thinking": THOUGHTS},
        "ollama": THOUGHTS,
    }.get(thinking.kind, set())  # OpenAI's kinds take no reasoning back: the fields are left out
    assert _reasoning_sent_back(thinking.kind, thinking.sent(), signature) == expected
    if thinking.kind in SIGNING_KINDS:
        assert signature


@pytest.mark.parametrize("thinking", sorted(SIGNING_KINDS), indirect=True)
def test_a_tool_turn_without_its_signature_is_refused_by_the_provider(thinking):
    messages = _tool_turns(thinking, stream=False)
    del messages[1]["reasoning_signature"]
    refused = thinking.chat(messages=messages, tools=[WEATHER], reasoning_effort="low")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "upstream_bad_request"
    messages[1]["reasoning_signature"] = "forged"
    refused = thinking.chat(messages=messages, tools=[WEATHER], reasoning_effort="low")
    assert refused.status_code == 400 and "signature" in refused.json()["error"]["message"]


@pytest.mark.parametrize("thinking", ["huggingface"], indirect=True)
def test_hugging_face_refuses_reasoning_effort_and_drops_reasoning_from_the_history(thinking):
    served = thinking.served()
    refused = thinking.chat(messages=HELLO, reasoning_effort="low")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "reasoning_effort"
    assert thinking.served() == served  # never sent upstream
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello",
                                                   "reasoning_content": "hm", "reasoning_signature": "c2ln"},
               {"role": "user", "content": "And now?"}]
    assert thinking.answer(messages=history)["content"] == TWENTY_WORDS
    assert thinking.sent()["messages"][1] == {"role": "assistant", "content": "Hello"}


@pytest.mark.parametrize("thinking", ["anthropic"], indirect=True)
def test_anthropic_thinking_budget_fits_under_max_tokens(thinking):
    thinking.answer(messages=HELLO, reasoning_effort="high", max_completion_tokens=10000)
    sent = thinking.sent()
    # The client's cap covers reasoning and answer, as OpenAI's does: the answer keeps its usual 4096.
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 10000 - 4096} and sent["max_tokens"] == 10000
    thinking.answer(messages=HELLO, reasoning_effort="minimal")
    assert thinking.sent()["max_tokens"] == 1024 + 4096  # without a cap: the budget on top of the answer's room
    thinking.answer(messages=HELLO, reasoning_effort="xhigh")  # within the deployment's max_output_tokens
    assert thinking.sent()["thinking"]["budget_tokens"] == 16384 - 4096 and thinking.sent()["max_tokens"] == 16384
    refused = thinking.chat(messages=HELLO, reasoning_effort="low", max_tokens=1500)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"


@pytest.mark.parametrize("thinking", ["anthropic"], indirect=True)
@pytest.mark.parametrize(("param", "value"), [("temperature", 0.2), ("top_p", 0.5), ("tool_choice", "required"),
                                              ("response_format", {"type": "json_object"})])
def test_anthropic_refuses_what_it_cannot_combine_with_thinking(thinking, param, value):
    served = thinking.served()
    extra = {"tools": [WEATHER]} if param == "tool_choice" else {}
    refused = thinking.chat(messages=HELLO, reasoning_effort="low", **{param: value}, **extra)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == param
    assert thinking.served() == served
    assert thinking.chat(messages=HELLO, **{param: value}, **extra).status_code == 200  # fine without thinking


@pytest.mark.parametrize("thinking", ["anthropic", "gemini", "cohere", "ollama"], indirect=True)
def test_an_unknown_reasoning_effort_gets_400_naming_it(thinking):
    refused = thinking.chat(messages=HELLO, reasoning_effort="extreme")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "reasoning_effort"
    history = [*HELLO, {"role": "assistant", "content": "Hi", "reasoning_content": ["not", "text"]},
               {"role": "user", "content": "Go on"}]
    refused = thinking.chat(messages=history)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages[1].reasoning_content"


@pytest.mark.parametrize("thinking", ["gemini"], indirect=True)
def test_gemini_3_models_think_by_level(thinking):
    model = deployment(thinking, "chat-gemini-3", "gemini-3-flash")
    thinking.answer(model=model, messages=HELLO, reasoning_effort="medium")
    assert thinking.sent()["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "medium",
                                                                     "includeThoughts": True}
    thinking.answer(model=model, messages=HELLO, reasoning_effort="xhigh")
    assert thinking.sent()["generationConfig"]["thinkingConfig"]["thinkingLevel"] == "high"


@pytest.mark.parametrize("thinking", ["ollama"], indirect=True)
def test_ollama_gpt_oss_thinks_by_level(thinking):
    model = deployment(thinking, "chat-gpt-oss", "gpt-oss:20b")
    message = thinking.answer(model=model, messages=HELLO, reasoning_effort="xhigh")
    assert thinking.sent()["think"] == "high" and message["reasoning_content"] == THOUGHTS
    thinking.answer(model=model, messages=HELLO, reasoning_effort="minimal")
    assert thinking.sent()["think"] == "low"


@pytest.mark.parametrize("thinking", ["anthropic"], indirect=True)
def test_anthropic_adaptive_thinking_where_the_provider_is_set_to_it(thinking):
    from providers.models import Provider

    provider = Provider.objects.get(name="anthropic")
    provider.settings = {"anthropic_thinking": "adaptive"}
    provider.full_clean()
    provider.save()
    assert wait_until(lambda: thinking.chat(messages=HELLO, reasoning_effort="minimal").status_code == 200
                      and "output_config" in thinking.sent())
    sent = thinking.sent()
    assert sent["thinking"] == {"type": "adaptive"} and sent["output_config"] == {"effort": "low"}
    messages = _tool_turns(thinking, stream=True)
    assert thinking.answer(messages=messages, tools=[WEATHER], reasoning_effort="xhigh")["content"] == TWENTY_WORDS
    assert thinking.sent()["output_config"] == {"effort": "xhigh"}
    assert thinking.sent()["messages"][1]["content"][0]["signature"] == messages[1]["reasoning_signature"]
    provider.settings = {"anthropic_thinking": "adaptve"}
    with pytest.raises(ValidationError):
        provider.full_clean()
