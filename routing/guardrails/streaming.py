"""Output checks on a stream, as it arrives.

The text of the answer (choice 0) is taken out of the chunks as they are read
and held back; what is released goes out in the read's last text chunk. Text is
released only once it lies `hold_back` characters behind the newest text, cut
at a word boundary, and never in the middle of a finding: a finding shorter than
the window is always seen whole (wherever the chunks split it) before any of it
leaves. Findings in released text are settled by their check's action; a block
raises, and the relay ends the stream with an error event in the caller's format.
A policy with a moderation or webhook check on output holds the whole answer:
those see it once, whole, at its end.
"""

import re
import time
from collections import Counter
from collections.abc import AsyncIterator

import orjson

from providers.adapters.base import StreamEvent

from . import native, policies

_SPACE = " \n\t"
# Held text is released in runs of at least this many characters: each release rescans what is held.
RELEASE_AT_LEAST = 24


# A pass-through chunk that carries choice 0's text and nothing else (read in _Read), as OpenAI (and most servers
# that speak its format) write it: "choices":[{"index":0,"delta":{"content":"<text>"},"logprobs":null,
# "finish_reason":null}], the payload's only "choices", the text with no quote or backslash in it. Its
# text is read, and taken out or put back, in the payload's own bytes: parsing every chunk, and
# serialising again the ones that change, cost more than the checks. Any other chunk (text with an
# escape in it included) is parsed. A JSON string holds no unescaped quote, so the head found is the
# choices array itself, not text inside a string. Searched with bytes.find (a regular expression's search
# costs several times more per chunk; bytes' `in` raises a TypeError inside CPython before it searches).
_HEAD = b'"choices":[{"index":0,"delta":{"content":"'
_TAIL = b'"},"logprobs":null,"finish_reason":null}]'
_HEAD_LEN = len(_HEAD)
_CHOICES = b'"choices"'


def _text_slot(choice: dict) -> tuple[dict, str]:
    if "text" in choice:
        return choice, "text"  # a legacy completion relayed as the upstream sent it
    delta = choice.get("delta")
    if delta is None:
        delta = choice["delta"] = {}
    return delta, "content"


def _parsed(event: StreamEvent) -> list[dict] | None:
    """The event's chunks: its own, or its pass-through payload parsed (None: no chunk in it)."""
    forward = event.forward
    if forward is None:
        return event.chunks
    if forward.startswith(b"{"):
        try:
            return [orjson.loads(forward)]
        except orjson.JSONDecodeError:
            pass
    return None


# Chunks known by their bytes to carry no text of choice 0 and no end of it, left unparsed (as the only
# "choices" of their payload): OpenAI's opening chunk (the role, empty content) and a usage chunk.
_NO_TEXT = (b'"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,'
            b'"finish_reason":null}]', b'"choices":[]')


def _no_text(forward: bytes) -> bool:
    return (forward.find(_NO_TEXT[0]) != -1 or forward.find(_NO_TEXT[1]) != -1) and forward.count(_CHOICES) == 1


# A whole read at once, when every "choices" in it is one of four forms: a text-only chunk (_HEAD ... _TAIL,
# the text with no quote, backslash or newline), OpenAI's opening chunk, a choice 0 that ends with an empty
# delta, or no choice at all (usage). Its text is then read with one regular expression over its payloads,
# in C, rather than chunk by chunk in Python; the read is relayed untouched when all of it may leave, and
# read chunk by chunk (_Read) only when it must be rewritten. Payloads are joined by newlines, which no JSON
# payload holds raw, so no match spans two.
# One pass: each match is one "choices" of those forms; group 1 a text-only chunk's text, group 2 the first
# character of choice 0's finish_reason.
_FORMS = re.compile(rb'"choices":\[(?:\{"index":0,"delta":\{(?:"content":"([^"\\\n]*)"\},"logprobs":null,'
                    rb'"finish_reason":null\}\]|"role":"assistant","content":"","refusal":null\},"logprobs":null,'
                    rb'"finish_reason":null\}\]|\},"logprobs":null,"finish_reason":"([^"\n]))|\])')


def _scanned(events: list[StreamEvent]) -> tuple[str, bool] | None:
    """(the text of choice 0, whether the answer ended) of a read of pass-through payloads in the forms
    above, found in their bytes all at once; None for any other read (read chunk by chunk: _Read)."""
    payloads, final = [], False
    for event in events:
        if event.done:
            final = True
        if event.forward is not None:
            payloads.append(event.forward)
        elif event.chunks:
            return None
    blob = b"\n".join(payloads)
    forms = _FORMS.findall(blob)
    if len(forms) != blob.count(_CHOICES):
        return None  # a "choices" of another form: every chunk is read
    try:
        return b"".join([text for text, _ in forms]).decode(), final or any(end for _, end in forms)
    except UnicodeDecodeError:
        return None


class _Read:
    """What one read's events hold: the new text of choice 0, where each piece of it was (`filled`), the
    last place to put text back in (`last`: the last of those and of the ends of choices), each event's
    parsed chunks (None for a payload read as bytes or not a chunk), whether the answer ended, and a chunk
    to copy should the text need one of its own. A place is (event index, container, key) in a parsed chunk,
    or (event index, None, (start, end)) in a payload's bytes. Nothing is changed yet. Chunks that
    `_no_text` tells apart are parsed only if the text needs a chunk of its own (`unparsed`)."""

    __slots__ = ("text", "filled", "last", "chunk_lists", "final", "template", "template_at", "unparsed")

    def __init__(self, events: list[StreamEvent]) -> None:
        text, filled, last, final, template, template_at, unparsed = [], [], None, False, None, -1, []
        chunk_lists: list[list[dict] | None] = [None] * len(events)
        for i, event in enumerate(events):
            if event.done:
                final = True
            forward = event.forward
            if forward is not None and event.usage is None and (at := forward.find(_HEAD)) != -1:
                # A text-only chunk (_HEAD), read in its bytes: this runs for nearly every chunk of a stream.
                start = at + _HEAD_LEN
                end = forward.find(b'"', start)
                if end != -1 and forward.startswith(_TAIL, end) and forward.count(_CHOICES) == 1:
                    try:
                        piece = forward[start:end].decode()
                    except UnicodeDecodeError:
                        piece = "\\"  # parsed below
                    if "\\" not in piece:  # an escape: parsed below, for the text it stands for
                        if piece:
                            text.append(piece)
                            filled.append(last := (i, None, (start, end)))
                        continue
            if forward is not None and forward.startswith(b"{") and _no_text(forward):
                unparsed.append(i)
                continue
            chunks = chunk_lists[i] = _parsed(event)
            for chunk in chunks or ():
                template, template_at = chunk, i
                for choice in chunk.get("choices") or ():
                    if choice.get("index", 0):
                        continue
                    container, key = _text_slot(choice)
                    piece = container.get(key)
                    if piece and isinstance(piece, str):
                        text.append(piece)
                        filled.append(last := (i, container, key))
                    if choice.get("finish_reason"):
                        final = True
                        last = (i, container, key)
        self.text, self.filled, self.last = "".join(text), filled, last
        self.chunk_lists, self.final, self.unparsed = chunk_lists, final, unparsed
        self.template, self.template_at = template, template_at

    def _parse_unparsed(self, events: list[StreamEvent]) -> None:
        """The chunks `_no_text` left unparsed, parsed (the text needs a chunk of its own: a template, a place)."""
        for i in self.unparsed:
            chunks = self.chunk_lists[i] = _parsed(events[i])
            if chunks and i > self.template_at:
                self.template, self.template_at = chunks[-1], i
        self.unparsed = []

    def rewrite(self, events: list[StreamEvent], out: str) -> None:
        """The text taken out of the events and `out` (the text released now) put where the last of it was."""
        put_at = self.last
        changed = set()
        for slot in self.filled:
            i, container, key = slot
            if container is not None:
                container[key] = ""
                changed.add(i)
            elif slot is not put_at or not out:
                _emptied_event(events[i])
        if out and put_at is None:
            self._parse_unparsed(events)
            if self.template is not None:
                _rewritable(events, self.chunk_lists, range(len(events)))
                _put_new(events, self.template, out)
                changed.update(range(len(events)))
        elif out:
            i, container, key = put_at
            if container is None:
                start, end = key
                forward = events[i].forward
                events[i].forward = forward[:start] + orjson.dumps(out)[1:-1] + forward[end:]
            else:
                container[key] = out
                changed.add(i)
        _rewritable(events, self.chunk_lists, changed)
        _prune(events, changed)


def _emptied_event(event: StreamEvent) -> None:
    """A text-only payload whose text is held back: it writes nothing (the event still counts as content
    delivered, as the upstream sent it)."""
    event.forward, event.chunks = None, []


def _rewritable(events: list[StreamEvent], chunk_lists: list[list[dict] | None], which) -> None:
    """The pass-through events at `which` turned into their parsed chunks, in place, so that text can be moved."""
    for i in which:
        event, chunks = events[i], chunk_lists[i]
        if event.forward is not None and chunks is not None:
            events[i] = StreamEvent(forward=None, usage=event.usage, has_content=event.has_content,
                                    done=event.done, chunks=chunks)


def _put_new(events: list[StreamEvent], template: dict, text: str) -> None:
    chunk = {k: v for k, v in template.items() if k not in ("choices", "usage")}
    chunk["choices"] = [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
    for event in events:
        if event.chunks is not None:
            event.chunks.insert(0, chunk)
            event.has_content = True
            return


def _emptied(chunk: dict) -> bool:
    """Whether a chunk carries nothing but the text taken out of it (held back): it is left out, and a
    read of such chunks alone writes nothing to the client."""
    choices = chunk.get("choices")
    if not choices or len(choices) != 1 or chunk.get("usage"):
        return False
    choice = choices[0]
    if choice.get("finish_reason") or choice.get("index", 0) or choice.get("logprobs"):
        return False
    if "text" in choice:
        return choice["text"] == ""
    delta = choice.get("delta")
    return isinstance(delta, dict) and delta.get("content") == "" and len(delta) == 1


def _prune(events: list[StreamEvent], which) -> None:
    for i in which:
        event = events[i]
        if event.forward is None and event.chunks:
            event.chunks[:] = [chunk for chunk in event.chunks if not _emptied(chunk)]


def _cut(text: str, window: int) -> int:
    """Where held text may be released up to: a word boundary at least `window` characters back."""
    limit = len(text) - window
    if limit <= 0:
        return 0
    cut = max(text.rfind(space, 0, limit + 1) for space in _SPACE)
    return cut + 1 if cut >= 0 else (limit if len(text) > 4 * window else 0)


def _clear_of(findings, cut: int, snap) -> int:
    """The cut moved back until it splits no finding (one is not released until its check has settled it)
    and, with `snap`, falls where the held text may be split."""
    while True:
        moved = cut
        for finding in findings:
            if finding.start < moved < finding.end:
                moved = finding.start
        if snap is not None:
            moved = snap(moved)
        if moved == cut:
            return cut
        cut = moved


class Held:
    """The checks' state over one stream."""

    def __init__(self, call) -> None:
        self.call = call
        self.guard = call.guard
        resolved = self.guard.resolved
        self.checks = resolved.output
        self.local = resolved.output_local
        self.window = resolved.hold_back
        self.hold_all = resolved.holds_all
        self.counts: dict[str, Counter] = {}  # by check: what it settled (no entry: nothing yet)
        self.spent = dict.fromkeys((c.label for c in self.local), 0.0)
        self.failed: dict[str, str] = {}
        self.decided = False
        self.pending = ""
        self.redactions = 0  # releases that rewrote the text (a redaction)

    async def release(self, final: bool, snap=None) -> str:
        """The text that may leave now, checked (raises to block). `snap(cut)`, when given, moves a cut back
        to where the held text may be split (the end of an event held whole: HeldReads)."""
        cut = len(self.pending) if final else (0 if self.hold_all else _cut(self.pending, self.window))
        if not final and snap is not None and cut >= RELEASE_AT_LEAST:
            cut = snap(cut)
        if not final and cut < RELEASE_AT_LEAST:
            return ""  # nothing (or too little) to release: no need to scan yet
        redactions = self.redactions
        for check in self.local:
            if check.label not in self.failed:
                # A redaction moves the text: `snap`'s ends no longer fall where it says.
                cut = await self._local(check, cut, final, snap if self.redactions == redactions else None)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        if final and self.hold_all:
            await self._remote(out)
        return out

    async def _local(self, check, cut: int, final: bool, snap=None) -> int:
        started = time.perf_counter()
        try:
            if (findings := policies.find_now(check, self.pending)) is None:
                findings = await policies.find(check, self.pending)
        except Exception as exc:  # detectors.PatternTimeout, or a detector's own failure
            self.spent[check.label] += time.perf_counter() - started
            self.failed[check.label] = "time limit" if type(exc).__name__ == "PatternTimeout" else "error"
            if check.closed:
                self._decide()
                raise policies.unavailable(check, self.failed[check.label]) from None
            return cut
        if not findings:
            self.spent[check.label] += time.perf_counter() - started
            return cut
        if not final:
            cut = _clear_of(findings, cut, snap)
        settled = [f for f in findings if f.end <= cut]
        if settled:
            if (counts := self.counts.get(check.label)) is None:
                counts = self.counts[check.label] = Counter()
            counts.update(f.type for f in settled)
            if check.action == "block":
                self.spent[check.label] += time.perf_counter() - started
                self._decide()
                raise policies.refusal(check, Counter(f.type for f in settled))
            if check.action == "redact":
                head = policies.redacted(self.pending[:cut], settled, self.guard.vault)
                self.pending = head + self.pending[cut:]
                cut = len(head)
                self.redactions += 1
        self.spent[check.label] += time.perf_counter() - started
        return cut

    async def checked(self, events: list[StreamEvent]) -> list[StreamEvent]:
        """One read's events with their text held back and checked. A read whose text all leaves as it came
        (nothing held before it, nothing held after it, nothing redacted) goes on untouched: pass-through
        payloads are relayed verbatim, not parsed and serialised again."""
        if not self.pending and (scanned := _scanned(events)) is not None:
            text, final = scanned
            if not text and not final:
                return events
            self.pending = text
            if (out := await self.release(final)) != text:
                read = _Read(events)
                if read.text != text:  # read two ways, two texts: what was checked may not be what is sent
                    raise RuntimeError("a stream read's text differs between its two readings")
                read.rewrite(events, out)
            return events
        read = _Read(events)
        if not read.text and not read.final:
            return events
        before = self.pending
        self.pending += read.text
        out = await self.release(read.final)
        if not before and out == read.text:
            return events
        read.rewrite(events, out)
        return events

    async def _remote(self, text: str) -> None:
        for check in self.checks:
            if not check.local:
                await policies.run_remote(check, "output", [text], self.call, self.guard.decisions)

    def _decide(self) -> None:
        """Each local check's decision over the whole stream, into the call's record (once)."""
        if not self.decided:
            self.decided = True
            now = time.perf_counter()
            for check in self.local:
                counts = self.counts.get(check.label)
                if check.label in self.failed:
                    action = "refused" if check.closed else "failed_open"
                elif not counts:
                    action = "passed"
                else:
                    action = {"block": "blocked", "redact": "redacted", "flag": "flagged"}[check.action]
                self.guard.decisions.add(check, "output", action, counts or {}, now - self.spent[check.label],
                                         self.failed.get(check.label, ""))
        self.call.guardrails = self.guard.record()


async def held_back(call, reads: AsyncIterator[list[StreamEvent]]) -> AsyncIterator[list[StreamEvent]]:
    """The stream with its text held back and checked, read by read (`Held.checked`)."""
    held = Held(call)
    if call.form:  # Anthropic's or the Responses API's own events
        async def take(text: str, ended: bool) -> str:
            held.pending += text
            return await held.release(ended)

        try:
            async for events in native.texts(call, reads, take):
                yield events
        finally:
            held._decide()
        return
    try:
        async for events in reads:
            yield await held.checked(events)
    finally:
        held._decide()


class HeldReads:
    """Output checks on an OpenAI stream relayed to an OpenAI client read by read, as it came
    (routing/front/relay.py `relay_verbatim`): what is held back is the upstream's own events, whole, and
    they leave byte for byte once the text they carry has passed. A read of whole events in the forms
    `_FORMS` reads (nearly all of a stream) is searched for its text and never parsed; the checks run on
    that text as on any stream's (`Held`), and a release is cut only at the end of an event. Only when a
    check redacts, or a read needs its events (an event cut across reads, an escape in the text, the
    usage chunk), are the held events handed over as events and the stream goes on as `held_back` writes it:
    a redaction rewrites the held text before any of it is sent, a block raises before it is sent.

    `read` and `events` return what leaves now: bytes to write as they are, then events to write."""

    __slots__ = ("held", "queue", "queued")

    def __init__(self, call) -> None:
        self.held = Held(call)
        self.queue: list[tuple[bytes, int]] = []  # events held whole: their bytes (no ending blank line), text length
        self.queued = 0  # the text the queue carries; all of `held.pending` while the stream goes as read

    async def read(self, read: bytes) -> tuple[bytes, list[StreamEvent]] | None:
        """For a read of whole one-line `data: {` events (the adapter's `verbatim_read` passed it): what leaves
        now, or None when it must go as events (`events`)."""
        held = self.held
        forms = _FORMS.findall(read)
        events = read.count(b"\n\n")
        if len(held.pending) != self.queued or len(forms) != events or read.count(_CHOICES) != events:
            return None  # held text no event carries (the stream went as events), or a chunk of another form
        try:
            text = b"".join([piece for piece, _ in forms]).decode()
        except UnicodeDecodeError:
            return None
        final = any(end for _, end in forms)
        if not text and not final and not self.queue:
            return read, []  # nothing held, nothing to check: out as it came
        if events == 1:
            self.queue.append((read[:-2], len(text)))
        else:
            sizes = [len(p) for p, _ in forms] if text.isascii() else [len(p.decode()) for p, _ in forms]
            self.queue.extend(zip(read[:-2].split(b"\n\n"), sizes, strict=True))
        held.pending += text
        self.queued += len(text)
        redactions = held.redactions
        out = await held.release(final, self._snap)
        return self._released(out) if held.redactions == redactions else self._rewritten(out, [])

    async def events(self, events: list[StreamEvent]) -> tuple[bytes, list[StreamEvent]]:
        """For any other read, its events: what leaves now. A read of events in the forms (one cut across
        reads) is held whole as a read of `read` is; the events returned are written and counted."""
        held = self.held
        if len(held.pending) != self.queued or (scanned := _scanned(events)) is None:
            if not self.queue:
                return b"", await held.checked(events)
            # The held events go on as events, their text checked again with this read's (none of it settled).
            held.pending = ""
            return b"", await held.checked(self._taken() + events)
        text, final = scanned
        if not final:
            if not self._hold(events):
                held.pending = ""
                return b"", await held.checked(self._taken() + events)
            held.pending += text
            self.queued += len(text)
            redactions = held.redactions
            out = await held.release(False, self._snap)
            if held.redactions != redactions:
                return b"", self._rewritten(out, [])[1] + events
            return self._released(out)[0], events  # held: they write nothing now, and count as read
        if not self.queue:
            return b"", await held.checked(events)
        # The answer's end (the usage chunk, `[DONE]`): all that is held leaves now, and this read as it is.
        held.pending += text
        redactions = held.redactions
        out = await held.release(True)
        if held.redactions != redactions:
            return self._rewritten(out, events)
        raw = b"\n\n".join([event for event, _ in self.queue]) + b"\n\n"
        self.queue, self.queued = [], 0
        return raw, events

    def _hold(self, events: list[StreamEvent]) -> bool:
        """Hold a read's events whole (each a chunk in the forms), leaving them to write nothing now; False
        (nothing held) when one is not such a chunk."""
        held = []
        for event in events:
            forward = event.forward
            if forward is None:
                if event.chunks or event.usage is not None:
                    return False
                continue  # dropped by the adapter: it writes nothing
            if event.usage is not None or event.done or not forward.startswith(b"{"):
                return False
            held.append((b"data: " + forward, len(b"".join([piece for piece, _ in _FORMS.findall(forward)]).decode())))
        self.queue.extend(held)
        for event in events:
            event.forward = None
        return True

    def close(self) -> None:
        """The checks' decisions, into the call's record, however the stream ended."""
        self.held._decide()

    def _snap(self, cut: int) -> int:
        """The end of the last held event whose text lies wholly before `cut`."""
        total = 0
        for _, size in self.queue:
            if total + size > cut:
                return total
            total += size
        return total

    def _released(self, out: str) -> tuple[bytes, list[StreamEvent]]:
        """The held events whose text is `out` (released unchanged), as the upstream wrote them."""
        taken, total, queue = 0, 0, self.queue
        for _, size in queue:
            if total + size > len(out):
                break
            total, taken = total + size, taken + 1
        if total != len(out):  # never send text other than what passed
            raise RuntimeError("a release of held stream text does not end where a held event does")
        self.queued -= total
        if not taken:
            return b"", []
        raw = b"\n\n".join([event for event, _ in queue[:taken]]) + b"\n\n"
        del queue[:taken]
        return raw, []

    def _taken(self) -> list[StreamEvent]:
        """The held events, as events (their content counted when they were read), the queue emptied."""
        taken = [StreamEvent(forward=event[6:]) for event, _ in self.queue]
        self.queue, self.queued = [], 0
        return taken

    def _rewritten(self, out: str, events: list[StreamEvent]) -> tuple[bytes, list[StreamEvent]]:
        """A redaction: every held event, and `events`, with their text taken out and `out` put in the last
        place of it; what is still held leaves later in the events after it (the stream goes as events)."""
        events = self._taken() + events
        _Read(events).rewrite(events, out)
        return b"", events


def _restorable(pending: str, final: bool) -> int:
    """How much of `pending` may be restored now: all, but a placeholder that may still be arriving."""
    open_at = pending.rfind("[")
    return open_at if not final and open_at >= len(pending) - 40 and "]" not in pending[open_at:] else len(pending)


async def restored(call, reads: AsyncIterator[list[StreamEvent]]) -> AsyncIterator[list[StreamEvent]]:
    """Placeholders put back in a stream; a placeholder split across chunks is held until it is whole."""
    vault, pending = call.guard.vault, ""
    if call.form and vault.values:
        async def take(text: str, ended: bool) -> str:
            nonlocal pending
            pending += text
            cut = _restorable(pending, ended)
            out, pending = vault.restore(pending[:cut]), pending[cut:]
            return out

        async for events in native.texts(call, reads, take):
            yield events
        return
    async for events in reads:
        if not vault.values:
            yield events
            continue
        read = _Read(events)
        if not read.text and not read.final and not pending:
            yield events
            continue
        pending += read.text
        cut = _restorable(pending, read.final)
        out, pending = vault.restore(pending[:cut]), pending[cut:]
        read.rewrite(events, out)
        yield events
