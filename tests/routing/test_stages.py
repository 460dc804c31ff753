"""A stage slots into the request path of every front without an edit to any endpoint.

The gateway process loads two stages from GATEWAY_STAGES (tests/routing/stage_examples.py):
one refuses a prompt on input, one rewrites the answer on output, in JSON answers
and in streams, whatever the front and the provider kind.
"""

import anthropic
import openai
import pytest

from tests.conftest import make_provider, start_gateway, usage_record, wait_until

STAGES = "input=tests.routing.stage_examples:refuse_word,output=tests.routing.stage_examples:shout"


@pytest.fixture()
def staged(gateway_env, mock, api_key):
    for kind in ("openai", "anthropic"):
        make_provider(kind, mock.url)
    server = start_gateway({**gateway_env, "GATEWAY_STAGES": STAGES})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: {"chat-openai", "chat-anthropic"} <= {m.id for m in client.models.list()})
    yield server, client, api_key[1]
    server.stop()


@pytest.mark.parametrize("model", ["chat-openai", "chat-anthropic"])
def test_output_stage_rewrites_json_and_streamed_chat(staged, model):
    _, client, _ = staged
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    text = answer.choices[0].message.content
    assert text and text == text.upper() and any(c.isalpha() for c in text)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True) if chunk.choices)
    assert streamed and streamed == streamed.upper() and any(c.isalpha() for c in streamed)


def test_output_stage_rewrites_anthropic_messages_and_legacy_completions(staged):
    server, client, secret = staged
    claude = anthropic.Anthropic(base_url=server.url, api_key=secret, max_retries=0)
    message = claude.messages.create(model="chat-openai", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == message.content[0].text.upper()
    with claude.messages.stream(model="chat-anthropic", max_tokens=50,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        streamed = "".join(stream.text_stream)
    assert streamed and streamed == streamed.upper()
    legacy = client.completions.create(model="chat-openai", prompt="hi")
    assert legacy.choices[0].text == legacy.choices[0].text.upper()


def test_input_stage_refuses_in_each_fronts_shape_and_the_call_is_recorded(staged):
    server, client, secret = staged
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="chat-openai", messages=[{"role": "user", "content": "a forbidden one"}])
    assert refused.value.body["code"] == "content_blocked"
    record = usage_record(refused.value.response.headers["x-request-id"])
    assert record is not None and record.http_status == 400 and record.error_type == "content_blocked"
    claude = anthropic.Anthropic(base_url=server.url, api_key=secret, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused_there:
        claude.messages.create(model="chat-anthropic", max_tokens=20,
                               messages=[{"role": "user", "content": "forbidden"}])
    assert refused_there.value.body["type"] == "error"
    assert "forbidden word" in refused_there.value.body["error"]["message"]


def test_embeddings_are_left_alone_by_a_stage_that_does_not_apply(staged):
    _, client, _ = staged
    vector = client.embeddings.create(model="embed-openai", input="hi").data[0].embedding
    assert len(vector) > 0
