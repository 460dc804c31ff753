"""Entries in a front's own form: Anthropic's message, and a Responses API object.

A call that went natively (/v1/messages to an Anthropic deployment, /v1/responses
to a native one) is stored as the provider answered it, so that a hit gives back
every field the provider sent, the chat form's or not. A streamed answer is put
together from its events (`Assembled`; a Responses stream's last event carries
the whole response), and a hit on a streamed request is replayed as the events
such a provider sends (`message_events`, `response_events`), usage included.
"""

import secrets
import time

import orjson


class Assembled:
    """Anthropic's message, put together from its stream's events as they pass."""

    def __init__(self) -> None:
        self.head: dict | None = None
        self.blocks: dict[int, dict] = {}
        self.partial: dict[int, str] = {}  # tool inputs, as their JSON arrives
        self.message: dict | None = None  # once message_stop came

    def add(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self.head = dict(event.get("message") or {})
        elif kind == "content_block_start":
            self.blocks[event.get("index", 0)] = dict(event.get("content_block") or {})
        elif kind == "content_block_delta":
            self._delta(event.get("index", 0), event.get("delta") or {})
        elif kind == "content_block_stop":
            index = event.get("index", 0)
            if index in self.partial:
                self.blocks[index]["input"] = orjson.loads(self.partial.pop(index) or "{}")
        elif kind == "message_delta" and self.head is not None:
            self.head.update(event.get("delta") or {})
            self.head["usage"] = {**(self.head.get("usage") or {}), **(event.get("usage") or {})}
        elif kind == "message_stop" and self.head is not None:
            self.message = {**self.head, "content": [block for _, block in sorted(self.blocks.items())]}

    def _delta(self, index: int, delta: dict) -> None:
        block = self.blocks.setdefault(index, {})
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta.get("text", "")
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif kind == "signature_delta":
            block["signature"] = delta.get("signature", "")
        elif kind == "input_json_delta":
            self.partial[index] = self.partial.get(index, "") + delta.get("partial_json", "")
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))


def _renamed_item(item: dict) -> dict:
    """An output item under a new id of the same kind (a stored response's items are found by id)."""
    if not isinstance(item.get("id"), str):
        return item
    prefix = item["id"].split("_", 1)[0] if "_" in item["id"] else "item"
    return {**item, "id": f"{prefix}_{secrets.token_hex(16)}"}


def renamed(answer: dict, form: str) -> dict:
    """The stored answer under a new id (and, for a response, new item ids and creation time)."""
    if form == "anthropic":
        return {**answer, "id": f"msg_{secrets.token_hex(12)}"}
    return {**answer, "id": f"resp_{secrets.token_hex(24)}", "created_at": int(time.time()),
            "output": [_renamed_item(item) for item in answer.get("output") or ()]}


def _sse(kind: str, data: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def message_events(message: dict) -> bytes:
    """A message as Anthropic streams it: message_start, each block started, filled and stopped,
    message_delta (the stop reason and the whole usage), message_stop."""
    usage = message.get("usage") or {}
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}
    out = [_sse("message_start", {"message": start})]
    for index, block in enumerate(message.get("content") or ()):
        out.extend(_block_events(index, block))
    out.append(_sse("message_delta", {"delta": {"stop_reason": message.get("stop_reason"),
                                                "stop_sequence": message.get("stop_sequence")}, "usage": usage}))
    out.append(_sse("message_stop", {}))
    return b"".join(out)


def _block_events(index: int, block: dict) -> list[bytes]:
    kind = block.get("type")
    if kind == "text":
        opened, deltas = {**block, "text": ""}, [{"type": "text_delta", "text": block.get("text", "")}]
    elif kind == "thinking":
        opened = {**block, "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": block.get("thinking", "")},
                  {"type": "signature_delta", "signature": block.get("signature", "")}]
    elif kind == "tool_use":
        opened = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": orjson.dumps(block.get("input") or {}).decode()}]
    else:  # redacted thinking, server tools' blocks: whole at their start
        opened, deltas = block, []
    return [_sse("content_block_start", {"index": index, "content_block": opened}),
            *(_sse("content_block_delta", {"index": index, "delta": d}) for d in deltas),
            _sse("content_block_stop", {"index": index})]


class _Numbered:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def add(self, kind: str, **data) -> None:
        self.out.append(_sse(kind, {**data, "sequence_number": len(self.out)}))


def response_events(response: dict) -> bytes:
    """A response as the Responses API streams it: created, in_progress, each output item added, its text or
    arguments as one delta and done, and response.completed with the whole response (its usage included)."""
    events = _Numbered()
    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    events.add("response.created", response=opening)
    events.add("response.in_progress", response=opening)
    for index, item in enumerate(response.get("output") or ()):
        _item_events(events, index, item)
    events.add("response." + ("completed" if response.get("status", "completed") == "completed" else
                              str(response.get("status"))), response=response)
    return b"".join(events.out)


def _item_events(events: _Numbered, index: int, item: dict) -> None:
    item_id, kind = item.get("id", ""), item.get("type")
    if kind == "message":
        events.add("response.output_item.added", output_index=index,
                   item={**item, "status": "in_progress", "content": []})
        for part_index, part in enumerate(item.get("content") or ()):
            where = {"item_id": item_id, "output_index": index, "content_index": part_index}
            field = "refusal" if part.get("type") == "refusal" else "text"
            events.add("response.content_part.added", **where, part={**part, field: ""})
            name = "response.refusal" if field == "refusal" else "response.output_text"
            extra = {} if field == "refusal" else {"logprobs": []}
            events.add(name + ".delta", **where, delta=part.get(field, ""), **extra)
            events.add(name + ".done", **where, **{field: part.get(field, "")}, **extra)
            events.add("response.content_part.done", **where, part=part)
    elif kind == "function_call":
        events.add("response.output_item.added", output_index=index, item={**item, "status": "in_progress",
                                                                            "arguments": ""})
        where = {"item_id": item_id, "output_index": index}
        events.add("response.function_call_arguments.delta", **where, delta=item.get("arguments", ""))
        events.add("response.function_call_arguments.done", **where, arguments=item.get("arguments", ""))
    else:
        events.add("response.output_item.added", output_index=index, item=item)
    events.add("response.output_item.done", output_index=index, item=item)
