"""OpenAI's Responses API (POST /v1/responses, POST /v1/responses/input_tokens) on every provider kind.

A deployment that speaks the Responses API natively (OpenAI and Azure, by
default; an OpenAI-compatible server when its deployment says so) gets the
request as the client sent it, with the conversation the gateway stored put in
`input`, under the response cache and the guardrails too (they read and store
the Responses form: `call.form`); every other deployment, and every call that
another stage of the request path applies to, is served through the gateway's chat form: the request becomes a
chat request (responses_input.py) and the chat answer a response or a stream of
Responses events (responses_output.py). Either way the gateway stores the
response for `previous_response_id` (usage/responses_store.py), so that a
conversation may continue on another provider kind, and a follow-up sent the
moment an answer ends finds it.
"""

import dataclasses

import orjson
from django.http import HttpResponse

from gateway_project.lib import errors, tokens
from providers.adapters import for_kind
from providers.adapters.base import StreamEvent
from usage import responses_store

from . import estimates, relay, stages, validation
from .endpoint import endpoint, front_view
from .pipeline import Front, authenticate, authorize, json_response, read_chat, read_json
from .responses_input import NotInChatForm, Request, read, to_chat
from .responses_output import ChatEvents, error_event, from_chat, new_id, sse


def parse(request) -> dict:
    body = validation.json_body(request)
    state = request.gateway_call.front_state = read(body)
    request.gateway_call.prompt = state.prompt
    return state.body


async def prepare(call, spec):
    """The conversation (stored history, referenced items) as the chat request the rest of the path reads.

    A request the chat form cannot carry (a built-in tool, say) goes only to the route's native
    deployments; the chat request then stands in for it in routing and the limits estimate."""
    state: Request = call.front_state
    previous = state.body.get("previous_response_id")
    if previous:
        state.history = await responses_store.history(call.key, previous)
    wanted = [item["id"] for item in state.input if item["type"] == "item_reference"]
    state.references = await responses_store.find_items(call.key, wanted) if wanted else {}
    try:
        body = to_chat(state, state.references)
    except NotInChatForm:
        natives = tuple(t for t in spec.targets if t.native_responses) if spec is not None else ()
        if not natives or not native(natives[0], call):
            raise
        state.native_only = True
        spec = dataclasses.replace(spec, targets=natives)
        text = orjson.dumps([state.body.get("instructions"), state.items, state.body.get("tools")]).decode()
        body = {"model": call.model, "messages": [{"role": "user", "content": text}]}
        if state.body.get("max_output_tokens"):
            body["max_completion_tokens"] = state.body["max_output_tokens"]
        if state.body.get("stream"):
            body["stream"] = True
    state.targets = spec.targets if spec is not None else ()  # None: a template names the model, later
    _chat_form(call, body)
    return spec


def _chat_form(call, body: dict) -> None:
    state: Request = call.front_state
    body["model"] = call.model
    body.update(call.chat_only)  # a template's or a variant's parameters the Responses form has no field for
    if state.body.get("truncation") == "auto" and state.targets and not state.native_only:
        _truncate(body, state.targets, call.model)  # a template's turns come in later, untruncated
    call.body = validation.chat(body, prompted=state.prompt is not None)


def rebuild(call) -> None:
    """The chat form again, from the conversation as a stage changed it in place (a redaction); the native
    request is then made from the items too."""
    state: Request = call.front_state
    state.edited = True
    if not state.native_only:
        _chat_form(call, to_chat(state, state.references))


def cache_body(call) -> dict | None:
    """The request as the cache keys it: the client's, with the conversation it stands for (its stored history
    and referenced items resolved) for input. None for a request the chat form cannot carry (a built-in tool)."""
    state: Request = call.front_state
    if state.native_only:
        return None
    body = {k: v for k, v in state.body.items() if k != "previous_response_id"}
    body["input"] = _resolved(state.items, state.references)
    return body


def _truncate(body: dict, targets, model: str) -> None:
    """Truncation "auto": drop the oldest turns (never the instructions) until the conversation fits the
    largest context window of the model's deployments, as OpenAI drops items from the start."""
    window = max(t.context_window for t in targets)
    room = window - (body.get("max_completion_tokens") or 0)
    messages = body["messages"]
    head = 1 if messages and messages[0]["role"] == "system" else 0
    while len(messages) - head > 1 and tokens.count_messages(messages, model) > room:
        del messages[head]
        while len(messages) - head > 1 and messages[head]["role"] == "tool":
            del messages[head]  # results of a call no longer in the conversation


def native(target, call) -> bool:
    """Whether this call goes to `target` as a Responses request (else through the chat form)."""
    return target.native_responses and stages.all_native(call)


def build(adapter, target, body: dict, call):
    if native(target, call):
        return adapter.responses_request(target, _native_body(call.front_state, target), call.request_id)
    return adapter.chat_request(target, body, call.request_id)


def _native_body(state: Request, target) -> dict:
    """The client's request for a native deployment: the stored conversation inlined (the gateway, not the
    provider, keeps it), so the provider stores nothing."""
    body = {k: v for k, v in state.body.items() if k not in ("previous_response_id", "store", "metadata")}
    body["model"] = target.upstream_model
    body["store"] = False
    if state.history or state.references or state.edited:
        body["input"] = [_replayed(item) for item in _resolved(state.items, state.references) if _replayable(item)]
    return body


def _resolved(items: list[dict], references: dict[str, dict]) -> list[dict]:
    """`items` with each item_reference replaced by the stored item it names."""
    return [references.get(item["id"], item) if item["type"] == "item_reference" else item for item in items]


def _replayable(item: dict) -> bool:
    # A provider that stores nothing takes earlier reasoning back only as its encrypted content.
    return item["type"] != "reasoning" or bool(item.get("encrypted_content"))


def _replayed(item: dict) -> dict:
    if item["type"] in ("message", "function_call"):
        return {k: v for k, v in item.items() if k != "id"}  # ids of items the provider never stored
    return item


# --- answering ---------------------------------------------------------------------

async def answer(call, attempt, body: dict):
    state: Request = call.front_state
    if native(attempt.target, call):
        return await _answer_native(call, attempt, state)
    response_id = new_id("resp")
    if body.get("stream"):
        translate = for_kind(attempt.target.kind).chat_stream(attempt.target, body, True)
        return relay.relay_stream(call, attempt, translate, Stored(ChatEvents(state, response_id, call.model,
                                                                              state.obfuscate), call))
    _, completion, _ = await read_chat(call, attempt, body)
    response = from_chat(state, completion, response_id, call.model, call.usage)
    await _store(call, response)
    return json_response(orjson.dumps(response))


async def _store(call, response: dict) -> None:
    state: Request = call.front_state
    if state.store:
        # Referenced items are stored as themselves: a later turn's history needs no lookup of its own.
        await responses_store.save(call.key, response, _resolved(state.input, state.references),
                                   state.body.get("previous_response_id"))


def _echoed(state: Request, response: dict, model: str) -> dict:
    """A native answer as the client asked: the model by its public name (as through the chat form), and the
    provider stored nothing and saw no previous_response_id."""
    response["model"] = model
    response["store"] = state.store
    response["previous_response_id"] = state.body.get("previous_response_id")
    response["metadata"] = state.body.get("metadata") or {}
    return response


async def _answer_native(call, attempt, state: Request):
    adapter = for_kind(attempt.target.kind)
    call.form = "responses"
    if state.body.get("stream"):
        return relay.relay_stream(call, attempt, adapter.responses_stream(attempt.target),
                                  Stored(NativeEvents(state, call.model), call))
    raw, data = await read_json(call, attempt, parse_usage=adapter.responses_usage)
    call.first_token()
    if stages.has_output(call):
        data = await stages.run_answer(call, data)
    response = _echoed(state, data, call.model)
    await _store(call, response)
    return json_response(orjson.dumps(response))


class NativeEvents:
    """A native Responses stream, relayed event by event; the response objects it carries get the
    client's own store and previous_response_id back."""

    RESPONSE_EVENTS = frozenset({b"response.created", b"response.in_progress", b"response.completed",
                                 b"response.incomplete", b"response.failed", b"response.queued"})

    def __init__(self, state: Request, model: str) -> None:
        self.state, self.model = state, model
        self.seq = 0
        self.response: dict | None = None

    def feed(self, event: StreamEvent) -> bytes:
        data = event.forward
        if data is None:  # events an output stage rewrote (or held back: none)
            return b"".join(self._event(chunk, str(chunk.get("type", "message")).encode(), None, event.done)
                            for chunk in event.chunks or ())
        kind = _type_of(data)
        return self._event(event.chunks[0] if event.chunks else None, kind, data, event.done)

    def _event(self, parsed: dict | None, kind: bytes, data: bytes | None, done: bool) -> bytes:
        self.seq += 1
        if kind in self.RESPONSE_EVENTS:
            parsed = parsed if parsed is not None else orjson.loads(data)
            _echoed(self.state, parsed.get("response") or {}, self.model)
            if done:
                self.response = parsed.get("response")
            data = None
        data = data or orjson.dumps(parsed)
        return b"event: " + kind + b"\ndata: " + data + b"\n\n"

    def error(self, error: errors.GatewayError) -> bytes:
        return error_event(error, self.seq)


def _type_of(data: bytes) -> bytes:
    start = data.find(b'"type":"')
    if start == -1:
        return b"message"
    start += 8
    return data[start:data.find(b'"', start)]


class Stored:
    """A stream writer whose response is stored before its last event leaves (relay.py awaits `finishing`)."""

    def __init__(self, writer, call) -> None:
        self.writer, self.call = writer, call
        self.feed, self.error = writer.feed, writer.error

    async def finishing(self) -> None:
        response = self.writer.response
        if response is not None and response.get("status") in ("completed", "incomplete"):
            await _store(self.call, response)


# --- the endpoints -------------------------------------------------------------------

FRONT = Front("responses", "POST", "chat", parse, build, answer, estimates.chat, prepare=prepare,
              cache_body=cache_body, rebuild=rebuild)
responses = front_view(FRONT)


@endpoint("responses.input_tokens", "POST")
async def input_tokens(request, call) -> HttpResponse:
    """POST /v1/responses/input_tokens: the input tokens of a request, as the gateway counts them (no upstream
    call, nothing billed); a named template (`prompt`) expanded first."""
    body = parse(request)
    call.body, call.model = body, body["model"]
    await authenticate(request, call)
    spec = await authorize(call, "chat") if call.model else None  # none yet: the template names it
    await prepare(call, spec)
    await stages.expand_template(call, FRONT)
    if spec is None:
        await authorize(call, "chat")
    counted = call.estimated_prompt()
    call.key = None  # counting is free: no usage record (the request log still has the call)
    return json_response(orjson.dumps({"object": "response.input_tokens", "input_tokens": counted}))


__all__ = ["responses", "input_tokens", "sse"]
