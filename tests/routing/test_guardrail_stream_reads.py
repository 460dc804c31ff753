"""Output checks on a stream, read by read, as the relay hands them to the stage.

The payloads are OpenAI's own chunk layout, translated by the OpenAI adapter as an upstream
stream is. The whole answer arrives in one read (its text read in one pass over the payloads)
or one chunk per read (read chunk by chunk), and with an escape in a chunk (parsed): what a
client would receive is checked in each case.
"""

import asyncio
from types import SimpleNamespace

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


# --- The guarded stream relayed as read (relay.relay_verbatim with streaming.HeldReads) ---

class _Body:
    """An aiohttp response body that brings `reads` one network read at a time."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = list(reads)

    async def readany(self) -> bytes:
        return self.reads.pop(0) if self.reads else b""

    async def iter_any(self):
        while read := await self.readany():
            yield read


def _upstream(pieces: list[str]) -> tuple[bytes, bytes]:
    """The stream as an OpenAI upstream writes it (the gateway asks for usage: null on every chunk, and
    the usage chunk), and its usage chunk."""
    def chunk(delta: dict, finish=None) -> bytes:
        return b"data: " + orjson.dumps({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "system_fingerprint": "fp",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], "usage": None}) + b"\n\n"

    usage = b"data: " + orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": {
        "prompt_tokens": 3, "completion_tokens": len(pieces), "total_tokens": 3 + len(pieces)}}) + b"\n\n"
    return (chunk({"role": "assistant", "content": "", "refusal": None}) + b"".join(chunk({"content": p}) for p in pieces)
            + chunk({}, "stop") + usage + b"data: [DONE]\n\n"), usage


def _cut(stream: bytes, cut) -> list[bytes]:
    """The stream as network reads bring it: whole, `cut` events per read, or every `cut[1]` bytes."""
    if cut is None:
        return [stream]
    if cut[0] == "events":
        events = [event + b"\n\n" for event in stream.split(b"\n\n")[:-1]]
        return [b"".join(events[i:i + cut[1]]) for i in range(0, len(events), cut[1])]
    return [stream[i:i + cut[1]] for i in range(0, len(stream), cut[1])]


def _relayed(stream: bytes, cut, action: str, as_read: bool, want_usage: bool = True):
    """What a client receives of a guarded stream through the relay read by read (as_read) or event by
    event, what the call recorded, and the refusal that ended it (None: it ended as the upstream's did)."""
    from routing.front import stages
    from routing.front.call import Call

    async def run():
        reads = _cut(stream, cut)
        target = SimpleNamespace(kind="openai", provider_name="p", api_key="", settings={})
        attempt = SimpleNamespace(target=target, first_chunk=reads[0], response=SimpleNamespace(content=_Body(reads[1:])))
        call = Call("chat.completions")
        call.guard = _Call(action).guard
        translate = adapter.chat_stream(target, {}, want_usage)
        if as_read:
            verbatim, held = stages.verbatim_reads(call)
            assert verbatim and isinstance(held, streaming.HeldReads)
            parts = relay._verbatim_held(call, attempt, translate, adapter.verbatim_read, held)
        else:
            parts = relay._translated(call, attempt, translate, relay.OpenAIStream())
        out = []
        try:
            async for part in parts:
                out.append(part)
        except errors.GatewayError as exc:
            return b"".join(out), call, exc
        return b"".join(out), call, None

    return asyncio.run(run())


def _frames(written: bytes) -> list:
    """The client's view: the answer's text, and every other event (role, end, usage, [DONE]) in order."""
    text, others = [], []
    for block in written.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: ")
        if block == b"data: [DONE]":
            others.append("[DONE]")
            continue
        chunk = orjson.loads(block[6:])
        for choice in chunk.get("choices") or ():
            delta = dict(choice.get("delta") or {})
            text.append(delta.pop("content", None) or "")
            if delta or choice.get("finish_reason"):
                others.append((delta, choice.get("finish_reason")))
        if chunk.get("usage"):
            others.append(chunk["usage"])
    return ["".join(text), others]


def _decided(call) -> list[tuple]:
    """What the call's record says each check did (its time aside)."""
    return [(c["check"], c["action"], c["findings"]) for c in call.guardrails["checks"]]


WORDS = [" mock", " reply", " from", " the", " gateway", " test", " upstream", " with", " some", " words"] * 5
WITH_EMAIL = WORDS[:18] + [" jane.r", "oe@exam", "ple.org"] + WORDS[18:]
WITH_KEY = WORDS[:18] + [" AKIAIOSF", "ODNN7EXA", "MPLE"] + WORDS[18:]
CUTS = [None, ("events", 1), ("events", 2), ("events", 3), ("events", 7), ("bytes", 1), ("bytes", 7),
        ("bytes", 40), ("bytes", 123), ("bytes", 500)]


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("want_usage", [True, False])
def test_a_guarded_stream_with_nothing_found_goes_out_as_the_upstream_wrote_it(cut, want_usage):
    """Relayed as read, the checks hold back the upstream's own events and let them go byte for byte: the
    client gets what the unguarded relay gives, the same text the event-by-event guarded relay gives,
    and the call records the same usage and content chunks."""
    stream, usage = _upstream(WORDS)
    as_read, call, error = _relayed(stream, cut, "redact", True, want_usage)
    by_event, by_event_call, by_event_error = _relayed(stream, cut, "redact", False, want_usage)
    assert error is None and by_event_error is None
    # The upstream's bytes, every event whole (its usage chunk only when the client asked for it).
    assert as_read == (stream if want_usage else stream.replace(usage, b""))
    assert _frames(as_read) == _frames(by_event)
    assert call.usage == by_event_call.usage and call.usage.completion_tokens == len(WORDS)
    assert call.delivered_chunks == by_event_call.delivered_chunks == len(WORDS)
    assert _decided(call) == _decided(by_event_call) == [("p/pii#1", "passed", {}), ("p/secrets#2", "passed", {})]


@pytest.mark.parametrize("cut", CUTS)
def test_a_finding_split_across_chunks_is_redacted_as_the_event_by_event_relay_redacts_it(cut):
    stream = _upstream(WITH_EMAIL)[0]
    as_read, call, error = _relayed(stream, cut, "redact", True)
    by_event, by_event_call, _ = _relayed(stream, cut, "redact", False)
    assert error is None
    text = _frames(as_read)[0]
    assert "jane" not in text and "exam" not in text and "ple.org" not in text
    assert text == "".join(WITH_EMAIL).replace(EMAIL, "[EMAIL_1]")
    assert _frames(as_read) == _frames(by_event)
    assert _decided(call) == _decided(by_event_call)
    assert _decided(call)[0] == ("p/pii#1", "redacted", {"email": 1})


@pytest.mark.parametrize("cut", CUTS)
def test_a_block_ends_the_stream_relayed_as_read_before_any_of_the_finding_leaves(cut):
    stream = _upstream(WITH_KEY)[0]
    as_read, call, error = _relayed(stream, cut, "redact", True)
    by_event, _, by_event_error = _relayed(stream, cut, "redact", False)
    assert error.code == by_event_error.code == "content_policy_violation"
    text = _frames(as_read)[0]
    assert "AKIA" not in text and "MPLE" not in text and "".join(WITH_KEY).startswith(text)
    assert stream.startswith(as_read)  # what left before the refusal is the upstream's own events
    assert _decided(call)[1][:2] == ("p/secrets#2", "blocked")


def test_a_chunk_of_another_form_sends_the_held_events_on_as_events():
    """A text with an escape in it (a newline) is read from its parsed chunk: the held events go on event
    by event from there, and the text that left is still the whole answer, checked."""
    pieces = WORDS[:25] + ["\nmail", " " + EMAIL] + WORDS[25:]
    stream = _upstream(pieces)[0]
    for cut in (("events", 1), ("events", 4), None):
        as_read, _, error = _relayed(stream, cut, "redact", True)
        by_event = _relayed(stream, cut, "redact", False)[0]
        assert error is None and _frames(as_read) == _frames(by_event)
        assert _frames(as_read)[0] == "".join(pieces).replace(EMAIL, "[EMAIL_1]")


def test_a_guarded_stream_with_restore_on_goes_event_by_event():
    from routing.front import stages
    from routing.front.call import Call

    call = Call("chat.completions")
    guard = _Call("redact").guard
    call.guard = Guard(policies.Resolved((), guard.resolved.output, True, 96))
    assert stages.verbatim_reads(call) == (False, None)
