"""Stages of the request path: policies that slot in at a named point of every /v1 call.

A stage is one module with one object registered here at import time (its app's
`ready()` imports it). The pipeline (routing/front/pipeline.py) runs the
stages registered at each point, in their order; with none registered a point
costs one empty-tuple loop.

- INPUT runs after the key is authenticated and the model authorized, before
  routing and admission: template expansion, guardrails on the prompt. It may
  rewrite `call.body`, refuse the call by raising a GatewayError, or answer it
  by returning a `Reply` (a cache hit); a reply is still accounted and logged.
- ADMITTED runs once the limits admitted the call, just before the upstream
  call: the place for a step that must count against the limits (a cache
  lookup that is billed as a request).
- OUTPUT sees the answer in the gateway's internal form (an OpenAI-shaped chat
  completion, a legacy completion or an embeddings list), or for a call that
  went natively in the front's own form (`call.form`), before the front
  turns it into the client's shape: guardrails on the answer, cache store. It
  returns the answer, changed or not, or raises a GatewayError. For a stream it
  wraps the events as they are read (`on_stream`), so that a check may hold
  back text before it reaches the client.
"""

import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse

from providers.adapters.base import StreamEvent

from .call import Call

INPUT, ADMITTED, OUTPUT = "input", "admitted", "output"
POINTS = (INPUT, ADMITTED, OUTPUT)


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer a stage gives instead of the upstream: the response to send as it is."""

    response: HttpResponse


class Stage:
    """One policy of the request path. Override what the stage does; `applies` says for which calls."""

    name = "stage"
    # Where the stage runs among those at its point, lowest first (equal orders: as registered).
    # Guardrails take 10, so that a cache lookup (100 by default) only answers prompts that passed
    # them, and a cache stores an answer as they left it.
    order = 100
    # Whether `on_stream` takes events as they come, pass-through payloads unparsed (it parses what it
    # needs itself); by default a stage sees every event as parsed chunks.
    takes_forwarded = False
    # Whether the stage serves a call that goes to its deployment in the front's own form (/v1/messages to an
    # Anthropic deployment, /v1/responses to a native one: `call.form` says which, and the answers, JSON and
    # streamed, are in that form). A call that any other stage applies to goes through the chat form.
    native = False

    def applies(self, call: Call) -> bool:
        return True

    async def on_request(self, call: Call, front) -> Reply | None:
        """At INPUT or ADMITTED: rewrite `call.body`, raise to refuse, or return a Reply."""
        return None

    def admission_read(self, call: Call) -> tuple[str, int, str] | None:
        """At ADMITTED: a Redis key that `on_request` will read, the TTL to renew it at (or 0) and a sorted set
        to record its renewed expiry in (or ""), for the admission to read in its round trip (found as
        `call.read`: the key and its value)."""
        return None

    async def on_answer(self, call: Call, answer: dict) -> dict:
        """At OUTPUT, for a JSON answer in the internal form."""
        return answer

    def on_stream(self, call: Call, reads: AsyncIterator[list[StreamEvent]]) -> AsyncIterator[list[StreamEvent]]:
        """At OUTPUT, for a stream: wrap the translated events, one list per upstream read."""
        return reads

    def on_reads(self, call: Call):
        """At OUTPUT, for an OpenAI stream to an OpenAI client relayed read by read as it came
        (relay.relay_verbatim): the filter of its reads (`read`, `events`, `close`, as
        routing/guardrails/streaming.py HeldReads), or None: the stage needs every event (`on_stream`)."""
        return None


_registered: dict[str, tuple[Stage, ...]] = {point: () for point in POINTS}


def register(point: str, stage: Stage) -> None:
    """Add `stage` at `point` (by its `order`, after those of the same order already there). Registering a stage by the same name again replaces it."""
    if point not in POINTS:
        raise ValueError(f"unknown point {point!r}; one of {POINTS}")
    kept = tuple(s for s in _registered[point] if s.name != stage.name)
    _registered[point] = tuple(sorted((*kept, stage), key=lambda s: s.order))


def load_configured(entries: list[str]) -> None:
    """Register the stages named in GATEWAY_STAGES: each "point=module.path:attribute"."""
    for entry in entries:
        point, _, target = entry.partition("=")
        module_name, _, attribute = target.partition(":")
        if not (point and module_name and attribute):
            raise ImproperlyConfigured(f"GATEWAY_STAGES entry {entry!r} is not point=module.path:attribute")
        register(point.strip(), getattr(importlib.import_module(module_name.strip()), attribute.strip()))


def unregister(point: str, name: str) -> None:
    _registered[point] = tuple(s for s in _registered[point] if s.name != name)


def at(point: str, call: Call) -> tuple[Stage, ...]:
    """The stages at `point` that apply to `call`, in order."""
    stages = _registered[point]
    return tuple(s for s in stages if s.applies(call)) if stages else ()


def named(point: str, name: str) -> Stage | None:
    """The stage registered at `point` under `name` (a counting endpoint runs the template stage alone)."""
    return next((s for s in _registered[point] if s.name == name), None)


async def expand_template(call: Call, front) -> None:
    """Only the template stage, for an endpoint that counts a request's tokens and calls no model."""
    if call.prompt is not None and (stage := named(INPUT, "prompt-templates")) is not None:
        await stage.on_request(call, front)


def all_native(call: Call) -> bool:
    """Whether every stage that applies to `call` serves it in the front's own form (a native stage's
    `applies` is not asked: it may need what the input stages have not done yet). A template's or a variant's
    parameter that only the chat form carries (`call.chat_only`) sends it through the chat form."""
    if call.chat_only:
        return False
    for point in POINTS:
        for stage in _registered[point]:
            if not stage.native and stage.applies(call):
                return False
    return True


def admission_read(call: Call) -> tuple[str, int, str] | None:
    """The first read an ADMITTED stage that applies asks the admission to make (None: none)."""
    for stage in at(ADMITTED, call):
        if (read := stage.admission_read(call)) is not None:
            return read
    return None


async def run_request(point: str, call: Call, front) -> Reply | None:
    for stage in at(point, call):
        if (reply := await stage.on_request(call, front)) is not None:
            return reply
    return None


async def run_answer(call: Call, answer: dict) -> dict:
    for stage in at(OUTPUT, call):
        answer = await stage.on_answer(call, answer)
    return answer


def wrap_stream(call: Call, reads: AsyncIterator[list[StreamEvent]]) -> AsyncIterator[list[StreamEvent]]:
    """The stream as the output stages leave it; untouched (no parsing, no wrapper) when none applies."""
    parsed = False
    for stage in at(OUTPUT, call):
        if not (parsed or stage.takes_forwarded):
            reads, parsed = _as_chunks(reads), True
        reads = stage.on_stream(call, reads)
    return reads


async def _as_chunks(reads: AsyncIterator[list[StreamEvent]]) -> AsyncIterator[list[StreamEvent]]:
    """Pass-through adapters relay the upstream's bytes verbatim; a stage sees every event as parsed chunks."""
    async for events in reads:
        for i, event in enumerate(events):
            if event.forward is not None and event.forward.startswith(b"{"):
                try:
                    chunk = orjson.loads(event.forward)
                except orjson.JSONDecodeError:
                    continue
                events[i] = StreamEvent(forward=None, usage=event.usage, has_content=event.has_content,
                                        done=event.done, chunks=[chunk])
        yield events


def has_output(call: Call) -> bool:
    return bool(at(OUTPUT, call))


def verbatim_reads(call: Call) -> tuple[bool, object | None]:
    """Whether an OpenAI stream of `call` may be relayed read by read as it came, and the filter of its
    reads (None: no output stage applies). One output stage may filter the reads; more go event by event."""
    applying = at(OUTPUT, call)
    if not applying:
        return True, None
    if len(applying) == 1 and (held := applying[0].on_reads(call)) is not None:
        return True, held
    return False, None

