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

import time
from collections import Counter
from collections.abc import AsyncIterator

import orjson

from providers.adapters.base import StreamEvent

from . import native, policies

_SPACE = " \n\t"
# Held text is released in runs of at least this many characters: each release rescans what is held.
RELEASE_AT_LEAST = 24


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


def _take(events: list[StreamEvent]):
    """The new text of choice 0, each event's chunks (see `_parsed`), where the text was (each piece's
    place, then the places to put text back in), whether the answer ended, and a chunk to copy should
    the text need one of its own. Nothing is changed yet."""
    text, chunk_lists, filled, slots, final, template = [], [], [], [], False, None
    for event in events:
        chunks = _parsed(event)
        chunk_lists.append(chunks)
        final = final or event.done
        for chunk in chunks or ():
            template = chunk
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0):
                    continue
                container, key = _text_slot(choice)
                piece = container.get(key)
                if piece and isinstance(piece, str):
                    text.append(piece)
                    filled.append((container, key))
                    slots.append((container, key))
                if choice.get("finish_reason"):
                    final = True
                    slots.append((container, key))
    return "".join(text), chunk_lists, filled, slots, final, template


def _rewritable(events: list[StreamEvent], chunk_lists: list[list[dict] | None]) -> None:
    """The pass-through events turned into their parsed chunks, in place, so that text can be moved."""
    for i, (event, chunks) in enumerate(zip(events, chunk_lists, strict=True)):
        if event.forward is not None and chunks is not None:
            events[i] = StreamEvent(forward=None, usage=event.usage, has_content=event.has_content,
                                    done=event.done, chunks=chunks)


def _put(events: list[StreamEvent], slots, template: dict | None, text: str) -> None:
    if slots:
        container, key = slots[-1]
        container[key] = text
        return
    if template is None:
        return
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


def _prune(events: list[StreamEvent]) -> None:
    for event in events:
        if event.forward is None and event.chunks:
            event.chunks[:] = [chunk for chunk in event.chunks if not _emptied(chunk)]


def _cut(text: str, window: int) -> int:
    """Where held text may be released up to: a word boundary at least `window` characters back."""
    limit = len(text) - window
    if limit <= 0:
        return 0
    cut = max(text.rfind(space, 0, limit + 1) for space in _SPACE)
    return cut + 1 if cut >= 0 else (limit if len(text) > 4 * window else 0)


class Held:
    """The checks' state over one stream."""

    def __init__(self, call) -> None:
        self.call = call
        self.guard = call.guard
        self.checks = self.guard.resolved.output
        self.window = self.guard.resolved.hold_back
        self.hold_all = any(not c.local for c in self.checks)
        self.counts = {c.label: Counter() for c in self.checks}
        self.spent = {c.label: 0.0 for c in self.checks}
        self.failed: dict[str, str] = {}
        self.pending = ""
        self.whole: list[str] = []  # every released piece, for checks that see the answer once

    async def release(self, final: bool) -> str:
        """The text that may leave now, checked (raises to block)."""
        cut = len(self.pending) if final else (0 if self.hold_all else _cut(self.pending, self.window))
        if not final and cut < RELEASE_AT_LEAST:
            return ""  # nothing (or too little) to release: no need to scan yet
        for check in self.checks:
            if check.local and check.label not in self.failed:
                cut = await self._local(check, cut, final)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        if final and self.hold_all:
            await self._remote(out)
        return out

    async def _local(self, check, cut: int, final: bool) -> int:
        started = time.perf_counter()
        try:
            findings = await policies.find(check, self.pending)
        except Exception as exc:  # detectors.PatternTimeout, or a detector's own failure
            self.spent[check.label] += time.perf_counter() - started
            self.failed[check.label] = "time limit" if type(exc).__name__ == "PatternTimeout" else "error"
            if check.closed:
                self._decide()
                raise policies.unavailable(check, self.failed[check.label]) from None
            return cut
        if not final:
            for finding in findings:
                if finding.start < cut < finding.end:
                    cut = finding.start  # not released until its check has settled it
        settled = [f for f in findings if f.end <= cut]
        if settled:
            self.counts[check.label].update(f.type for f in settled)
            if check.action == "block":
                self.spent[check.label] += time.perf_counter() - started
                self._decide()
                raise policies.refusal(check, Counter(f.type for f in settled))
            if check.action == "redact":
                head = policies.redacted(self.pending[:cut], settled, self.guard.vault)
                self.pending = head + self.pending[cut:]
                cut = len(head)
        self.spent[check.label] += time.perf_counter() - started
        return cut

    async def _remote(self, text: str) -> None:
        for check in self.checks:
            if not check.local:
                await policies.run_remote(check, "output", [text], self.call, self.guard.decisions)

    def _decide(self) -> None:
        """Each local check's decision over the whole stream, into the call's record (once)."""
        for check in self.checks:
            if not check.local or check.label not in self.counts:
                continue
            counts = self.counts.pop(check.label)
            if check.label in self.failed:
                action = "refused" if check.closed else "failed_open"
            elif not counts:
                action = "passed"
            else:
                action = {"block": "blocked", "redact": "redacted", "flag": "flagged"}[check.action]
            started = time.perf_counter() - self.spent[check.label]
            self.guard.decisions.add(check, "output", action, counts, started, self.failed.get(check.label, ""))
        self.call.guardrails = self.guard.record()


async def held_back(call, reads: AsyncIterator[list[StreamEvent]]) -> AsyncIterator[list[StreamEvent]]:
    """The stream with its text held back and checked. A read whose text all leaves as it came (nothing
    held before it, nothing held after it, nothing redacted) goes on untouched: pass-through payloads
    are relayed verbatim, not parsed and serialised again."""
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
            text, chunk_lists, filled, slots, final, template = _take(events)
            if not text and not final:
                yield events
                continue
            before = held.pending
            held.pending += text
            out = await held.release(final)
            if not before and out == text:
                yield events
                continue
            _rewritable(events, chunk_lists)
            for container, key in filled:
                container[key] = ""
            if out:
                _put(events, slots, template, out)
            _prune(events)
            yield events
    finally:
        held._decide()


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
        text, chunk_lists, filled, slots, final, template = _take(events)
        if not text and not final and not pending:
            yield events
            continue
        _rewritable(events, chunk_lists)
        for container, key in filled:
            container[key] = ""
        pending += text
        cut = _restorable(pending, final)
        out, pending = vault.restore(pending[:cut]), pending[cut:]
        if out:
            _put(events, slots, template, out)
        _prune(events)
        yield events
