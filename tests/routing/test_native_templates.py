"""Prompt templates and experiments keep the native path of /v1/messages and /v1/responses.

A call naming a template, or sent to a name with a running experiment, to an Anthropic deployment or a
native Responses one: the template's messages are expanded into the native request (Anthropic's `system`
and `messages`; the Responses API's `instructions` and `input`), its parameters and the variant's set
under their native names, and every field the chat form does not carry (`thinking`, `metadata`,
`service_tier`, a field from next year; `reasoning`, `include`, `truncation`) reaches the provider as
sent, as the mock upstream's last request shows. The usage record names the template and version.
"""

import anthropic
import httpx
import pytest

from routing.experiments.models import Experiment, Variant
from routing.prompts import services
from routing.prompts.models import PromptTemplate
from tests.conftest import usage_record, wait_until
from tests.routing.test_native_policies import (
    EMAIL,
    NEXT_YEAR,
    ask_claude,
    ask_responses,
    assert_anthropic_fields_reached,
    assert_responses_fields_reached,
    guard,
    sdks,  # noqa: F401 (a fixture)
    sent,
)

MESSAGES = [{"role": "system", "content": "You help {{ customer }}."},
            {"role": "assistant", "content": "Hello {{ customer }}!"}]
PROMPT = {"id": "support", "variables": {"customer": "Ada"}}


@pytest.fixture()
def template(tenant):
    template = PromptTemplate.objects.create(tenant=tenant, name="support")
    services.prompt_publish(template, MESSAGES, parameters={"temperature": 1, "top_p": 0.97, "max_completion_tokens": 300},
                            label="production")
    services.prompt_publish(template, MESSAGES[:1], parameters={"seed": 7})  # version 2: a chat-only parameter
    return template


def text_of(content) -> str:
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def claude_with(claude, stream: bool, text: str, prompt: dict, **fields):
    return ask_claude(claude, stream, text, extra_body={**NEXT_YEAR, "gateway_prompt": prompt, **fields})


def served(ask):
    """The gateway reloads templates on the change's announcement: wait until it serves this one."""
    def attempt():
        try:
            return ask()
        except Exception:  # noqa: BLE001 (a 404 until the reload)
            return None
    return wait_until(attempt, timeout=10)


def test_a_template_on_anthropic_messages_goes_natively_json_and_streamed(sdks, template, mock):  # noqa: F811
    _, claude = sdks
    assert served(lambda: claude_with(claude, False, "hi", PROMPT))
    for stream in (False, True):
        headers, message = claude_with(claude, stream, "Where is my order?", PROMPT, system="Be kind.")
        body = assert_anthropic_fields_reached(mock)
        assert body["system"] == "You help Ada.\n\nBe kind."
        assert body["messages"] == [{"role": "assistant", "content": "Hello Ada!"},
                                    {"role": "user", "content": "Where is my order?"}]
        assert (body["temperature"], body["top_p"], body["max_tokens"]) == (1, 0.97, 4096)  # the request's limit wins
        assert "gateway_prompt" not in body
        assert [b.type for b in message.content] == ["thinking", "text"] and message.content[0].signature
        assert message.model == "chat-anthropic"
        record = usage_record(headers["x-request-id"])
        assert (record.endpoint, record.prompt_template, record.prompt_version) == ("messages", "support", 1)
    # The request's own parameter wins over the template's.
    claude_with(claude, False, "hi", PROMPT, top_p=0.99)
    assert assert_anthropic_fields_reached(mock)["top_p"] == 0.99


def test_a_template_on_the_responses_api_goes_natively_json_and_streamed(sdks, template, mock):  # noqa: F811
    client, _ = sdks
    assert served(lambda: ask_responses(client, False, "hi", prompt=PROMPT))
    for stream in (False, True):
        headers, response, _ = ask_responses(client, stream, "Where is my order?", prompt=PROMPT,
                                             instructions="Be kind.")
        body = assert_responses_fields_reached(mock)
        assert body["instructions"] == "You help Ada.\n\nBe kind."
        assert body["input"] == [{"type": "message", "role": "assistant", "content": "Hello Ada!"},
                                 {"type": "message", "role": "user", "content": "Where is my order?"}]
        assert (body["top_p"], body["max_output_tokens"]) == (0.97, 300) and "prompt" not in body
        assert any(item.type == "reasoning" and item.encrypted_content for item in response.output)
        assert response.output_text and response.model == "chat-openai"
        record = usage_record(headers["x-request-id"])
        assert (record.endpoint, record.prompt_template, record.prompt_version) == ("responses", "support", 1)
    # The stored response holds the client's own input: a follow-up gets the template again, not twice.
    follow = client.responses.create(model="chat-openai", input="And then?", previous_response_id=response.id,
                                     prompt=PROMPT)
    assert follow.output_text
    roles = [(item.get("role"), text_of(item.get("content"))) for item in sent(mock)["body"]["input"]
             if item.get("type") == "message"]
    assert roles[0] == ("assistant", "Hello Ada!") and roles.count(("assistant", "Hello Ada!")) == 1
    assert roles[1] == ("user", "Where is my order?") and roles[-1] == ("user", "And then?")


def test_a_parameter_with_no_native_field_sends_the_call_through_the_chat_form(sdks, template, mock):  # noqa: F811
    client, claude = sdks
    version_2 = {**PROMPT, "version": "2"}
    assert served(lambda: claude_with(claude, False, "hi", PROMPT))
    # Anthropic has no seed: through the chat form, the Anthropic adapter refuses it as it always did (a 400
    # naming it, in Anthropic's shape), rather than the gateway dropping it.
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude_with(claude, False, "hi", version_2)
    assert caught.value.body["error"]["type"] == "invalid_request_error" and "seed" in str(caught.value.body)
    _, response, _ = ask_responses(client, False, "hi", prompt=version_2)
    assert response.output_text
    last = sent(mock)
    assert last["path"].endswith("/chat/completions") and last["body"]["seed"] == 7
    assert last["body"]["messages"][0] == {"role": "system", "content": "You help Ada."}


def test_guardrails_check_the_expanded_template_and_the_call_stays_native(sdks, tenant, template, mock):  # noqa: F811
    _, claude = sdks
    guard(tenant, {"kind": "pii", "stage": "input", "action": "redact"}, name="mask")
    prompt = {"id": "support", "variables": {"customer": EMAIL}}
    assert wait_until(lambda: served(lambda: claude_with(claude, False, "hi", prompt))
                      and "[EMAIL_1]" in str(sent(mock)["body"]), timeout=10)
    for stream in (False, True):
        claude_with(claude, stream, "hi", prompt)
        body = assert_anthropic_fields_reached(mock)
        # The redaction made the chat form again from the native request: the template's text is in it, masked.
        assert EMAIL not in str(body) and body["system"] == "You help [EMAIL_1]."
        assert body["messages"][0] == {"role": "assistant", "content": "Hello [EMAIL_1]!"}


@pytest.fixture()
def experiment(tenant, template):
    experiment = Experiment.objects.create(tenant=tenant, name="warmer", route="chat-anthropic")
    Variant.objects.create(experiment=experiment, name="warm", weight=1, parameters={"top_p": 0.96})
    responses = Experiment.objects.create(tenant=tenant, name="warmer-responses", route="chat-openai")
    Variant.objects.create(experiment=responses, name="warm", weight=1, parameters={"temperature": 0.7,
                                                                                    "max_tokens": 200})
    return experiment


def test_an_experiments_variant_applies_to_the_native_request(sdks, experiment, mock):  # noqa: F811
    client, claude = sdks
    assert wait_until(lambda: ask_claude(claude, False, "hi")[0].get("x-gateway-variant") == "warm", timeout=10)
    for stream in (False, True):
        headers, message = ask_claude(claude, stream, "hi")
        assert headers["x-gateway-experiment"] == "warmer" and headers["x-gateway-variant"] == "warm"
        body = assert_anthropic_fields_reached(mock)
        assert body["top_p"] == 0.96 and message.content[0].type == "thinking"
        headers, response, _ = ask_responses(client, stream, "hi", temperature=0.1)
        assert headers["x-gateway-variant"] == "warm"
        body = assert_responses_fields_reached(mock)
        assert body["temperature"] == 0.7 and body["max_output_tokens"] == 200  # the variant's win
    # With a template too: the variant's parameters and the template's messages, natively.
    headers, _ = claude_with(claude, False, "hi", PROMPT)
    body = assert_anthropic_fields_reached(mock)
    assert body["top_p"] == 0.96 and body["system"] == "You help Ada."
    assert usage_record(headers["x-request-id"]).prompt_template == "support"


# --- counting ---------------------------------------------------------------------------------


def test_count_tokens_and_input_tokens_expand_the_template(sdks, template, mock, gateway, api_key):  # noqa: F811
    client, claude = sdks
    question = [{"role": "user", "content": "Where is my order?"}]

    def count(**extra):
        raw = claude.messages.with_raw_response.count_tokens(model="chat-anthropic", messages=question, **extra)
        return raw.headers, raw.parse().input_tokens

    assert served(lambda: count(extra_body={"gateway_prompt": PROMPT}))
    headers, plain = count()
    headers, expanded = count(extra_body={"gateway_prompt": PROMPT})
    assert headers["x-gateway-token-count"] == "provider" and expanded > plain
    last = sent(mock)
    assert last["path"].endswith("/v1/messages/count_tokens")
    assert last["body"]["system"] == "You help Ada." and last["body"]["messages"][0]["content"] == "Hello Ada!"
    assert "gateway_prompt" not in last["body"] and "top_p" not in last["body"]  # the prompt only is counted
    # Unknown variables are the same 400 as on /v1/messages, in Anthropic's shape.
    with pytest.raises(anthropic.BadRequestError) as caught:
        count(extra_body={"gateway_prompt": {"id": "support", "variables": {"who": "x"}}})
    assert "customer" in caught.value.body["error"]["message"]

    def input_tokens(**extra) -> int:
        answer = httpx.post(gateway.url + "/v1/responses/input_tokens", headers={"authorization": f"Bearer {api_key[1]}"},
                            json={"model": "chat-openai", "input": "Where is my order?", **extra}, timeout=20)
        assert answer.status_code == 200, answer.text
        return answer.json()["input_tokens"]

    alone = input_tokens()
    with_template = input_tokens(prompt=PROMPT)
    assert with_template > alone
    # The template names no model here, so a prompt without one is a 400; with the model it is counted.
    missing = httpx.post(gateway.url + "/v1/responses/input_tokens", headers={"authorization": f"Bearer {api_key[1]}"},
                         json={"model": "", "prompt": PROMPT}, timeout=20)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
