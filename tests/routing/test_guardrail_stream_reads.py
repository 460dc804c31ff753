"""Output checks on a stream, read by read, as the relay hands them to the stage.

The payloads are OpenAI's own chunk layout, translated by the OpenAI adapter as an upstream
stream is. The whole answer arrives in one read (its text read in one pass over the payloads)
or one chunk per read (read chunk by chunk), and with an escape in a chunk (parsed): what a
client would receive is checked in each case.
"""

import asyncio

import orjson
import pytest

from gateway_project.lib import errors
from providers.adapters import openai as adapter
from routing.front import relay
from routing.guardrails import detectors, policies, streaming
from routing.guardrails.stage import Guard

EMAIL = "jane.roe@example.org"


class _Target:
    provider_name, kind = "mock", "openai_compatible"


def _payload(delta: dict, finish=None) -> bytes:
    return orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                         "system_fingerprint": "fp", "usage": None,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})


def _payloads(pieces: list[str]) -> list[bytes]:
    usage = orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
                          "usage": {"prompt_tokens": 3, "completion_tokens": len(pieces), "total_tokens": 3 + len(pieces)}})
    return ([_payload({"role": "assistant", "content": "", "refusal": None})]
            + [_payload({"content": piece}) for piece in pieces] + [_payload({}, "stop"), usage, b"[DONE]"])


def _reads(pieces: list[str], one_read: bool) -> list[list]:
    translate = adapter.chat_stream(_Target(), {}, True)
    events = [translate(data) for data in _payloads(pieces)]
    return [events] if one_read else [[event] for event in events]


class _Call:
    form = None
    guardrails = None

    def __init__(self, action: str) -> None:
        check = policies.Check(label="p/pii#1", kind="pii", input=False, output=True, action=action,
                               closed=True, timeout_ms=1000, pii_types=detectors.PII_TYPES)
        secrets = policies.Check(label="p/secrets#2", kind="secrets", input=False, output=True, action="block",
                                 closed=True, timeout_ms=1000)
        self.guard = Guard(policies.Resolved((), (check, secrets), False, 96))


def _client_text(written: bytes) -> str:
    """The answer's text as a client reads it from the SSE bytes (and the error event, if any)."""
    text = []
    for block in written.split(b"\n\n"):
        if not block.startswith(b"data: ") or block == b"data: [DONE]":
            continue
        chunk = orjson.loads(block[6:])
        for choice in chunk.get("choices") or ():
            text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


def _relay(pieces: list[str], one_read: bool, action: str = "redact") -> tuple[bytes, Exception | None]:
    async def run():
        writer, out, call = relay.OpenAIStream(), [], _Call(action)

        async def source():
            for events in _reads(pieces, one_read):
                yield events

        try:
            async for events in streaming.held_back(call, source()):
                out.append(b"".join(writer.feed(event) for event in events))
        except errors.GatewayError as exc:
            return b"".join(out), exc
        return b"".join(out), None

    return asyncio.run(run())


PROSE = ["The", " report", " is", " ready", " and", " the", " team", " will", " send", " it", " out", " today."]


@pytest.mark.parametrize("one_read", [True, False])
def test_clean_text_goes_out_whole_and_in_one_read_byte_for_byte(one_read):
    written, error = _relay(PROSE, one_read)
    assert error is None and _client_text(written) == "".join(PROSE)
    if one_read:  # read in one pass; nothing held, nothing changed: the payloads as the upstream wrote them
        assert streaming._scanned(_reads(PROSE, True)[0]) == ("".join(PROSE), True)
        assert written == b"".join(b"data: " + data + b"\n\n" for data in _payloads(PROSE))


@pytest.mark.parametrize("one_read", [True, False])
@pytest.mark.parametrize("escaped", [False, True])
def test_a_finding_split_across_chunks_is_redacted_in_one_read_or_many(one_read, escaped):
    pieces = ["Write", " to ", "jane.r", "oe@exam", "ple.org", " for", " the", " report", "\nplease" if escaped else " please"]
    written, error = _relay(pieces, one_read)
    assert error is None
    text = _client_text(written)
    assert EMAIL not in text and "jane" not in text and "[EMAIL_1]" in text
    assert text == "".join(pieces).replace(EMAIL, "[EMAIL_1]")


@pytest.mark.parametrize("one_read", [True, False])
def test_a_block_ends_the_stream_before_any_of_the_finding_leaves(one_read):
    pieces = ["Here", " is", " the", " key", " AKIAIOSF", "ODNN7EXA", "MPLE", " for", " you"]
    written, error = _relay(pieces, one_read)
    assert isinstance(error, errors.GatewayError) and error.code == "content_policy_violation"
    assert "AKIA" not in _client_text(written)


def test_a_read_of_another_layout_is_read_chunk_by_chunk():
    """A text chunk whose choice carries another field is not of the forms read in one pass: its text is still checked."""
    translate = adapter.chat_stream(_Target(), {}, True)
    odd = orjson.dumps({"choices": [{"index": 0, "delta": {"content": " mail " + EMAIL}, "logprobs": None,
                                     "finish_reason": None, "extra": 1}]})
    events = [translate(data) for data in (_payload({"content": "Hi"}), odd, _payload({}, "stop"), b"[DONE]")]
    assert streaming._scanned(events) is None

    async def run():
        async def source():
            yield events

        return [e async for e in streaming.held_back(_Call("redact"), source())]

    (out,) = asyncio.run(run())
    text = _client_text(b"".join(relay.OpenAIStream().feed(event) for event in out))
    assert text == "Hi mail [EMAIL_1]"
