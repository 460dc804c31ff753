"""Where the text is in a front's own form, for calls that go natively.

/v1/messages to an Anthropic deployment and /v1/responses to a native one keep
the client's request and the provider's answer as they are (`call.form`), so
the checks read and redact the texts in place there: the prompt's (system or
instructions, every message's text, tool results), the answer's text blocks or
output_text parts, and, in a stream, the text deltas, held back and released as
for the chat form (streaming.py). A text part's end (Anthropic's
content_block_stop, the Responses output_text.done) releases what is held
before it; the Responses events that repeat the whole text (output_text.done,
content_part.done, output_item.done, response.completed) are given the text
that was released.
"""

from collections.abc import AsyncIterator, Awaitable, Callable

import orjson

from providers.adapters.base import StreamEvent

Slot = tuple[object, object]


def _text_parts(content, found: list[Slot], kinds=("text",)) -> None:
    for part in content:
        if isinstance(part, dict) and part.get("type") in kinds and isinstance(part.get("text"), str):
            found.append((part, "text"))


def request_slots(call) -> list[Slot]:
    """(container, key) of every text of the client's own request (Anthropic's or the Responses API's)."""
    state = call.front_state
    found: list[Slot] = []
    if call.endpoint == "messages":
        body = state.body
        _content_slots(body, "system", found)
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                _content_slots(message, "content", found)
        return found
    if isinstance(state.body.get("instructions"), str):
        found.append((state.body, "instructions"))
    for item in state.items:
        if item.get("type") == "item_reference":
            item = state.references.get(item.get("id"), item)
        name = "output" if item.get("type") == "function_call_output" else "content"
        if item.get("type") in ("message", "function_call_output"):
            _content_slots(item, name, found, ("input_text", "output_text", "text"))
    return found


def _content_slots(container: dict, name: str, found: list[Slot], kinds=("text",)) -> None:
    value = container.get(name)
    if isinstance(value, str):
        found.append((container, name))
    elif isinstance(value, list):
        _text_parts(value, found, kinds)
        for block in value:  # Anthropic's tool results hold text of their own
            if isinstance(block, dict) and block.get("type") == "tool_result":
                _content_slots(block, "content", found)


def answer_slots(answer: dict, form: str) -> list[Slot]:
    found: list[Slot] = []
    if form == "anthropic":
        _text_parts(answer.get("content") or (), found)
        return found
    for item in answer.get("output") or ():
        if isinstance(item, dict) and item.get("type") == "message":
            _text_parts(item.get("content") or (), found, ("output_text",))
    return found


# --- streams ----------------------------------------------------------------------------

class _Anthropic:
    """Text deltas of Anthropic's events; a text block's stop ends its text."""

    def __init__(self) -> None:
        self.text_blocks: set[int] = set()

    def read(self, e: dict):
        kind = e.get("type")
        if kind == "content_block_delta":
            delta = e.get("delta") or {}
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                return "delta", e.get("index", 0), (delta, "text")
        elif kind == "content_block_start":
            block = e.get("content_block") or {}
            if block.get("type") == "text":
                self.text_blocks.add(e.get("index", 0))
                if block.get("text"):
                    return "delta", e.get("index", 0), (block, "text")
        elif kind == "content_block_stop" and e.get("index", 0) in self.text_blocks:
            return "end", e.get("index", 0), None
        return None

    @staticmethod
    def delta(e: dict, key, text: str) -> dict:
        return {"type": "content_block_delta", "index": key, "delta": {"type": "text_delta", "text": text}}

    @staticmethod
    def keeps(e: dict) -> bool:
        return e.get("type") == "content_block_start"

    def fix(self, e: dict, released: dict) -> bool:
        return False


class _Responses:
    """output_text deltas of a Responses stream; output_text.done ends a part's text."""

    def read(self, e: dict):
        kind = e.get("type")
        if kind == "response.output_text.delta" and isinstance(e.get("delta"), str):
            return "delta", (e.get("output_index", 0), e.get("content_index", 0)), (e, "delta")
        if kind == "response.output_text.done":
            return "end", (e.get("output_index", 0), e.get("content_index", 0)), None
        return None

    @staticmethod
    def delta(e: dict, key, text: str) -> dict:
        return {"type": "response.output_text.delta", "item_id": e.get("item_id", ""), "output_index": key[0],
                "content_index": key[1], "delta": text, "logprobs": [], "sequence_number": e.get("sequence_number")}

    @staticmethod
    def keeps(e: dict) -> bool:
        return False

    def fix(self, e: dict, released: dict) -> bool:
        """The events that repeat a part's whole text, given the text that left (True: one changed)."""
        kind, changed = e.get("type"), False
        if kind == "response.output_text.done":
            changed = _set(e, "text", released.get((e.get("output_index", 0), e.get("content_index", 0))))
        elif kind == "response.content_part.done":
            changed = _set(e.get("part"), "text", released.get((e.get("output_index", 0), e.get("content_index", 0))))
        elif kind == "response.output_item.done":
            changed = self._item(e.get("output_index", 0), e.get("item"), released)
        elif kind in ("response.completed", "response.incomplete"):
            for index, item in enumerate((e.get("response") or {}).get("output") or ()):
                changed = self._item(index, item, released) or changed
        return changed

    @staticmethod
    def _item(index: int, item, released: dict) -> bool:
        changed = False
        if isinstance(item, dict) and item.get("type") == "message":
            for part_index, part in enumerate(item.get("content") or ()):
                if isinstance(part, dict) and part.get("type") == "output_text":
                    changed = _set(part, "text", released.get((index, part_index))) or changed
        return changed


def _set(container, key: str, text: str | None) -> bool:
    if text is None or not isinstance(container, dict) or container.get(key) == text:
        return False
    container[key] = text
    return True


def _parsed(event: StreamEvent) -> list[dict] | None:
    if event.forward is None:
        return event.chunks
    if event.forward.startswith(b"{"):
        try:
            return [orjson.loads(event.forward)]
        except orjson.JSONDecodeError:
            return None
    return None


Take = Callable[[str, bool], Awaitable[str]]


async def texts(call, reads: AsyncIterator[list[StreamEvent]], take: Take) -> AsyncIterator[list[StreamEvent]]:
    """The native stream with each text delta replaced by what `take(text, part_ended)` lets out now (a delta it
    holds back whole is left out), and what it lets out at a part's end put in a delta just before it. An event
    left as it came is relayed verbatim."""
    codec = _Anthropic() if call.form == "anthropic" else _Responses()
    released: dict = {}
    async for events in reads:
        for i, event in enumerate(events):
            parsed = _parsed(event)
            if not parsed:
                continue
            out, changed = [], False
            for e in parsed:
                found = codec.read(e)
                if found is not None and found[0] == "delta":
                    container, name = found[2]
                    piece = container[name]
                    sent = await take(piece, False)
                    released[found[1]] = released.get(found[1], "") + sent
                    if sent != piece:
                        container[name], changed = sent, True
                    if sent or codec.keeps(e):
                        out.append(e)
                    continue
                if found is not None:  # a text part's end
                    sent = await take("", True)
                    if sent:
                        out.append(codec.delta(e, found[1], sent))
                        released[found[1]] = released.get(found[1], "") + sent
                        changed = True
                changed = codec.fix(e, released) or changed
                out.append(e)
            if changed:
                events[i] = StreamEvent(forward=None, usage=event.usage, has_content=event.has_content,
                                        done=event.done, chunks=out)
        yield events
