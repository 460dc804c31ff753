"""POST /v1/completions (legacy text completions) through the openai SDK: natively
where the upstream has them, through chat elsewhere; JSON and streams, billed."""

import pytest

from tests.conftest import usage_record

WORDS = ["mock", "reply", "from", "the", "gateway", "test", "upstream", "with", "some", "words"]


@pytest.mark.parametrize("kind_client", ["openai", "anthropic", "gemini", "ollama"], indirect=True)
def test_text_completion_json_and_stream(kind_client):
    client, kind = kind_client
    raw = client.completions.with_raw_response.create(model=f"chat-{kind}", prompt="Say it [[mock chunks=5]]",
                                                      max_tokens=20)
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.choices[0].text == " ".join(WORDS[:5]) and completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 5
    record = usage_record(raw.headers["x-request-id"])
    assert record.status == "ok" and record.completion_tokens == 5 and record.cost_usd > 0

    raw = client.completions.with_raw_response.create(model=f"chat-{kind}", prompt="Say it [[mock chunks=4]]",
                                                      stream=True, stream_options={"include_usage": True})
    chunks = list(raw.parse())
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.split() == WORDS[:4] and all(c.object == "text_completion" for c in chunks)
    assert chunks[-1].usage.completion_tokens == 4
    record = usage_record(raw.headers["x-request-id"])
    assert record.streamed and record.status == "ok" and record.completion_tokens == 4
