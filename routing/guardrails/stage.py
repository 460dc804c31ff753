"""The guardrails as stages of the request path: input checks, output checks, and restore.

- `InputGuard` (INPUT, order 10: before any cache lookup, so a cached answer is only ever
  given to a prompt that passed) finds the call's policies, runs the input checks on every
  text of the prompt (messages, a legacy prompt, embeddings input) and rewrites the
  redacted ones in `call.body` before the upstream sees them.
- `OutputGuard` (OUTPUT, order 10: before the cache stores an answer) runs the output
  checks on the answer, JSON or streamed. A stream is held back by the policy's window
  (`hold_back_chars`) and released at a word boundary, so a finding split across chunks is
  seen whole before any of it leaves; a block ends the stream with an error event in the
  caller's format (relay.py), a redaction rewrites the held text. An OpenAI stream to an OpenAI
  client is relayed as read, the upstream's events held whole (`on_reads`: streaming.HeldReads).
- `Restore` (OUTPUT, order 900, after everything else) puts redacted values back for the
  caller where the answer repeats their placeholders.

On /v1/messages and /v1/responses the checks read the client's own request (native.py), and a
redaction there makes the chat form again (`Front.rebuild`), so that a call to an Anthropic or a
native Responses deployment keeps its native path, every field the chat form lacks included; its
answer is checked in its own form (`call.form`).
"""

from dataclasses import dataclass, field

from routing.front import stages

from . import native, policies
from .policies import Decisions, Resolved, Vault


@dataclass(slots=True)
class Guard:
    """One call's guardrail state (on `call.guard`)."""

    resolved: Resolved
    vault: Vault = field(default_factory=Vault)
    decisions: Decisions = field(default_factory=Decisions)

    def record(self) -> dict:
        return self.decisions.record()


def _slots(body: dict) -> list[tuple[object, object]]:
    """(container, key) of every text in a request in the internal form."""
    found = []
    for message in body.get("messages") or ():
        content = message.get("content")
        if isinstance(content, str):
            found.append((message, "content"))
        elif isinstance(content, list):
            found.extend((part, "text") for part in content
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
    for name in ("prompt", "input"):
        value = body.get(name)
        if isinstance(value, str):
            found.append((body, name))
        elif isinstance(value, list):
            found.extend((value, i) for i, item in enumerate(value) if isinstance(item, str))
    return found


def _answer_slots(answer: dict) -> list[tuple[object, object]]:
    found = []
    for choice in answer.get("choices") or ():
        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            found.append((message, "content"))
        if isinstance(choice.get("text"), str):
            found.append((choice, "text"))
    return found


def _output_slots(call, answer: dict) -> list[tuple[object, object]]:
    return native.answer_slots(answer, call.form) if call.form else _answer_slots(answer)


async def _run(call, checks, stage: str, slots) -> bool:
    """Run `checks` on the texts at `slots`, rewriting those they redacted (True: one was)."""
    guard: Guard = call.guard
    texts = [container[key] for container, key in slots]
    try:
        results = await policies.run_checks(checks, stage, texts, call, guard.vault, guard.decisions)
    finally:
        call.guardrails = guard.record()
    changed = False
    for (container, key), old, new in zip(slots, texts, results, strict=True):
        if new is not old:
            container[key], changed = new, True
    return changed


class InputGuard(stages.Stage):
    name = "guardrails-input"
    order = 10
    native = True

    def applies(self, call) -> bool:
        return policies.may_apply(call.key.tenant_id)

    async def on_request(self, call, front):
        resolved = await policies.resolve(call.key, call.model)
        if resolved is None:
            return None
        call.guard = Guard(resolved)
        if not resolved.input:
            return None
        if front.rebuild is None:
            await _run(call, resolved.input, "input", _slots(call.body))
        elif await _run(call, resolved.input, "input", native.request_slots(call)):
            front.rebuild(call)  # the client's own request is checked; the chat form follows it
        return None


class OutputGuard(stages.Stage):
    name = "guardrails-output"
    order = 10
    native = True
    takes_forwarded = True  # held_back parses each payload itself, and relays it verbatim when it can

    def applies(self, call) -> bool:
        return call.guard is not None and bool(call.guard.resolved.output) and call.endpoint != "embeddings"

    async def on_answer(self, call, answer: dict) -> dict:
        await _run(call, call.guard.resolved.output, "output", _output_slots(call, answer))
        return answer

    def on_stream(self, call, reads):
        from .streaming import held_back  # deferred: streams with output checks only

        return held_back(call, reads)

    def on_reads(self, call):
        from .streaming import HeldReads  # deferred: as on_stream's

        return HeldReads(call)


class Restore(stages.Stage):
    name = "guardrails-restore"
    order = 900
    native = True
    takes_forwarded = True  # restored parses each payload itself

    def applies(self, call) -> bool:
        guard = call.guard
        return guard is not None and guard.resolved.restore and call.endpoint != "embeddings"

    async def on_answer(self, call, answer: dict) -> dict:
        if call.guard.vault.values:
            for container, key in _output_slots(call, answer):
                container[key] = call.guard.vault.restore(container[key])
        return answer

    def on_stream(self, call, reads):
        from .streaming import restored  # deferred: streams with restore on only

        return restored(call, reads)


def register() -> None:
    stages.register(stages.INPUT, InputGuard())
    stages.register(stages.OUTPUT, OutputGuard())
    stages.register(stages.OUTPUT, Restore())

