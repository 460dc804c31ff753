"""The response cache on the request path: the lookup at ADMITTED, the store at OUTPUT.

The lookup runs once the key is authenticated, the model authorized, every
INPUT stage (templates, guardrails on input) has passed and the limits have
admitted the call (request rate, concurrency, and the token and budget
reservation, which a hit settles at nothing unless its policy counts hits). A
call no policy covers costs a lookup in the routing table's copy of the
policies, and no Redis round trip. Answers are stored in the form they came in
(the internal form; Anthropic's or the Responses API's own for a call that went
natively), one entry for JSON and streamed requests alike, and replayed in the
caller's form (replay.py). A front with a native path is keyed by the client's
own request (`Front.cache_body`), so fields the chat form lacks are in the key.
"""

import time
from dataclasses import dataclass
from decimal import Decimal

import orjson

from gateway_project.lib import metrics
from providers.adapters.openai_format import usage_dict
from routing import table

from ..front import stages
from ..front.call import Call
from . import embedding, hashing, native, replay, semantic, store
from .policies import Policy, covering

HEADER, TTL_HEADER, KEY_HEADER = "x-gateway-cache", "x-gateway-cache-ttl", "x-gateway-cache-key"
SIMILARITY_HEADER = "x-gateway-cache-similarity"


@dataclass(slots=True)
class State:
    policy: Policy
    key: str
    lookup: bool  # Cache-Control: no-cache skips it (the answer refreshes the entry)
    ttl: int  # seconds the answer is stored for; 0: not stored (no-store, x-gateway-cache-ttl: 0)
    question: tuple[str, str] | None = None  # semantic: (scope, text to embed)
    vector: object = None  # semantic: the question's embedding, once made
    result: str = "miss"  # x-gateway-cache until a hit: "miss", or "bypass" (Cache-Control)


_NOT_CACHED = object()


def state_of(call: Call) -> State | None:
    """The call's cache state, worked out once per call (None: no policy covers it; Cache-Control:
    no-store gives a state that neither reads nor writes)."""
    state = call.cache
    if state is None:
        state = call.cache = _resolve(call) or _NOT_CACHED
    return None if state is _NOT_CACHED else state


def _resolve(call: Call) -> State | None:
    if call.key is None or (routing := table.loaded()) is None or not routing.cache_policies:
        return None
    front = call.front
    keyed = front.cache_body(call) if front is not None and front.cache_body is not None else call.body
    if keyed is None:
        # A Responses request only a native deployment can serve (a built-in tool): not cached.
        return None
    policy = covering(routing.cache_policies, call.key.tenant_id, call.key.id, call.model, call.endpoint)
    if policy is None:
        return None
    headers = call.request_headers or {}
    control = (headers.get("cache-control") or "").lower()
    if "no-store" in control:
        return State(policy, "", False, 0, result="bypass")  # neither read nor written
    ttl = policy.ttl_seconds
    if (asked := headers.get(TTL_HEADER, "")).isdigit():
        ttl = min(ttl, int(asked))  # a client may shorten its entry's life, not extend the tenant's policy
    key = hashing.entry_key(call.key.tenant_id, call.model, call.endpoint, keyed)
    question = semantic.question(call) if policy.semantic and call.endpoint != "embeddings" else None
    return State(policy, key, "no-cache" not in control, ttl, question, result="miss" if "no-cache" not in control
                 else "bypass")


def _header(call: Call, result: str, key: str = "") -> None:
    headers = call.response_headers = call.response_headers or {}
    headers[HEADER] = result
    if key:
        headers[KEY_HEADER] = hashing.entry_id(key)
    if result == "bypass":
        metrics.inc("gateway_cache_lookups_total", call.endpoint, "exact", "bypass")


class Lookup(stages.Stage):
    name = "response-cache-lookup"
    native = True  # entries are replayed in the form they were stored in

    def applies(self, call: Call) -> bool:
        return state_of(call) is not None

    def admission_read(self, call: Call) -> tuple[str, int] | None:
        """The exact entry, read in the admission's round trip (one round trip less)."""
        state = call.cache
        if not (state.lookup and state.policy.exact):
            return None
        return state.key, state.policy.ttl_seconds if state.policy.sliding else 0, store.expiries_of(state.key)

    async def on_request(self, call: Call, front) -> stages.Reply | None:
        state = call.cache
        _header(call, state.result, state.key)  # only now: a call the limits refuse says nothing of the cache
        if not state.lookup:
            return None
        renew = state.policy.ttl_seconds if state.policy.sliding else 0
        if state.policy.exact:
            started = time.perf_counter()
            if call.read is not None and call.read[0] == state.key:
                raw = call.read[1]  # read in the admission's round trip
            else:
                raw = await store.get(state.key, renew)
            metrics.observe("gateway_cache_lookup_seconds", time.perf_counter() - started, "exact")
            metrics.inc("gateway_cache_lookups_total", call.endpoint, "exact", "miss" if raw is None else "hit")
            if raw is not None:
                return await hit(call, front, orjson.loads(raw))
        if state.question is not None:
            started = time.perf_counter()
            found = await _semantic_lookup(call, state, renew)
            metrics.observe("gateway_cache_lookup_seconds", time.perf_counter() - started, "semantic")
            metrics.inc("gateway_cache_lookups_total", call.endpoint, "semantic", "miss" if found is None else "hit")
            if found is not None:
                call.response_headers[SIMILARITY_HEADER] = f"{found[1]:.4f}"
                return await hit(call, front, found[0])
        return None


async def _semantic_lookup(call: Call, state: State, renew: int) -> tuple[dict, float] | None:
    """The stored answer to the closest question in the call's scope, at or above the threshold."""
    vector = await _vector(call, state)
    if vector is None:
        return None
    found = await semantic.nearest(state.question[0], vector)
    if found is None or found[1] < state.policy.semantic_threshold:
        return None
    raw = await store.get(found[0], renew)
    return None if raw is None else (orjson.loads(raw), found[1])


async def _vector(call: Call, state: State):
    if state.vector is None:
        model, text = state.policy.semantic_embedding_model, state.question[1]
        state.vector = (await embedding.embed_with_deployment(call, model, text) if model
                        else embedding.embed_locally(text))
    return state.vector


async def hit(call: Call, front, entry: dict) -> stages.Reply | None:
    """Answer `call` with `entry` through its front: a usage record at no upstream cost, the cost it saved.
    None (a miss) for a Responses-form entry that this call cannot be answered natively with (another
    stage applies to it, which reads only the chat form)."""
    if entry.get("f") == "responses" and not stages.all_native(call):
        return None
    call.cache_hit, call.cost_saved = True, Decimal(entry.get("s") or 0)
    call.hit_spends_limits = call.cache.policy.hits_count_against_limits
    call.response_headers[HEADER] = "hit"
    attempt = replay.attempt(entry, front.mode, front.streams(call.body))
    call.target = attempt.target
    return stages.Reply(await front.answer(call, attempt, call.body))


class Store(stages.Stage):
    name = "response-cache-store"
    native = True
    takes_forwarded = True  # _collected parses what it reads; the events go on as they came

    def applies(self, call: Call) -> bool:
        state = state_of(call)
        return state is not None and state.ttl > 0 and not call.cache_hit

    async def on_answer(self, call: Call, answer: dict) -> dict:
        if isinstance(answer, dict):
            # A JSON answer leaves once the call is settled: its entry goes in that round trip, and is
            # there before the client has the answer. A stream's (below) is stored before its end leaves.
            await save(call, _normalised(call, answer), deferred=True)
        return answer

    def on_stream(self, call: Call, reads):
        return _collected(call, reads)


def _normalised(call: Call, answer: dict) -> dict:
    """The answer as the entry keeps it: legacy completions always as a text completion."""
    if call.endpoint == "completions" and answer.get("object") == "chat.completion":
        from ..front.completions import from_chat  # deferred: the fronts import the stages module

        return from_chat(answer)
    return answer


async def save(call: Call, answer: dict, deferred: bool = False) -> None:
    """Store `answer` under the call's key; `deferred`, with Redis and no semantic index to add to: in the
    round trip that settles the call (call.writes), not one of its own."""
    state: State = call.cache
    if not state.policy.cache_tool_calls and _calls_tools(answer):
        return
    target = call.target
    stored = {"a": answer, "m": target.upstream_model if target else "", "p": target.provider_name if target else "",
              "s": str(call.cost())}
    if call.form:
        stored["f"] = call.form
    entry = orjson.dumps(stored)
    if len(entry) > state.policy.max_answer_bytes:
        return
    if deferred and state.question is None and store.shared():
        call.writes = [*(call.writes or ()), (state.key, entry, state.ttl, store.expiries_of(state.key))]
    elif not await store.put(state.key, entry, state.ttl):
        return
    metrics.inc("gateway_cache_stores_total", call.endpoint)
    if state.question is not None and (vector := await _vector(call, state)) is not None:
        await semantic.add(state.question[0], state.key, vector, state.ttl)


TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use"})
TOOL_ITEMS = frozenset({"function_call", "custom_tool_call", "web_search_call", "file_search_call", "computer_call",
                        "code_interpreter_call", "local_shell_call", "mcp_call", "image_generation_call"})


def _calls_tools(answer: dict) -> bool:
    if "content" in answer:  # Anthropic's message
        return any(block.get("type") in TOOL_BLOCKS for block in answer["content"] or ())
    if "output" in answer:  # a Responses object
        return any(item.get("type") in TOOL_ITEMS for item in answer["output"] or ())
    return any((c.get("message") or {}).get("tool_calls") or c.get("finish_reason") in ("tool_calls", "function_call")
               for c in answer.get("choices") or ())


def _chunks(event) -> list[dict]:
    """The event's chunks (or native events), a pass-through payload parsed."""
    if event.forward is None:
        return event.chunks or ()
    if event.chunks is not None:
        return event.chunks
    try:
        return [orjson.loads(event.forward)] if event.forward.startswith(b"{") else ()
    except orjson.JSONDecodeError:
        return ()


async def _collected(call: Call, reads):
    """The stream passed on as read; the whole answer, once its last event came, stored before that event
    leaves (a client that asks again the moment a stream ends finds it)."""
    if call.form:
        async for events in _collected_native(call, reads):
            yield events
        return
    choices: dict[int, dict] = {}
    usage, head = None, {}
    async for events in reads:
        done = False
        for event in events:
            usage = event.usage or usage
            for chunk in _chunks(event):
                head = head or chunk
                for choice in chunk.get("choices") or ():
                    _add(choices.setdefault(choice.get("index", 0), {}), choice)
            done = done or event.done
        if done and choices:
            call.usage = usage or call.usage
            await save(call, _assembled(call, head, choices, usage))
        yield events


async def _collected_native(call: Call, reads):
    """A native stream passed on as read, its answer (Anthropic's message put together from its events, the
    Responses object its last event carries) stored before the last event leaves."""
    message = native.Assembled() if call.form == "anthropic" else None
    usage = None
    async for events in reads:
        answer = None
        for event in events:
            usage = event.usage or usage
            for chunk in _chunks(event) if message is not None or event.done else ():
                if message is not None:
                    message.add(chunk)
                elif chunk.get("type") == "response.completed":
                    answer = chunk.get("response")
            if event.done and message is not None and message.message is not None:
                answer = message.message
        if answer is not None:
            call.usage = usage or call.usage
            await save(call, answer)
        yield events


def _add(into: dict, choice: dict) -> None:
    delta = choice.get("delta") or {}
    text = delta.get("content") if "delta" in choice else choice.get("text")
    if text:
        into["content"] = into.get("content", "") + text
    for name in ("reasoning_content", "reasoning_signature", "refusal"):
        if delta.get(name):
            into[name] = into.get(name, "") + delta[name]
    for call in delta.get("tool_calls") or ():
        calls = into.setdefault("tool_calls", {})
        known = calls.setdefault(call.get("index", 0), {"id": "", "type": "function",
                                                        "function": {"name": "", "arguments": ""}})
        function = call.get("function") or {}
        known["id"] = call.get("id") or known["id"]
        known["function"]["name"] += function.get("name") or ""
        known["function"]["arguments"] += function.get("arguments") or ""
    if choice.get("finish_reason"):
        into["finish_reason"] = choice["finish_reason"]


def _assembled(call: Call, head: dict, choices: dict[int, dict], usage) -> dict:
    """A streamed answer as the JSON answer it stands for."""
    text = call.endpoint == "completions"
    answer = {"id": head.get("id", ""), "object": "text_completion" if text else "chat.completion",
              "created": head.get("created", 0), "model": head.get("model", ""), "choices": []}
    for index, parts in sorted(choices.items()):
        finish = parts.get("finish_reason") or "stop"
        if text:
            answer["choices"].append({"text": parts.get("content", ""), "index": index, "logprobs": None,
                                      "finish_reason": finish})
            continue
        message = {"role": "assistant", "content": parts.get("content")}
        message.update({k: parts[k] for k in ("reasoning_content", "reasoning_signature", "refusal") if k in parts})
        if "tool_calls" in parts:
            message["tool_calls"] = [c for _, c in sorted(parts["tool_calls"].items())]
        answer["choices"].append({"index": index, "message": message, "finish_reason": finish})
    if usage is not None:
        answer["usage"] = usage_dict(usage)
    return answer


lookup, store_answer = Lookup(), Store()


def register() -> None:
    """At ADMITTED, so that every INPUT stage (guardrails on input) has passed before a hit is served."""
    stages.register(stages.ADMITTED, lookup)
    stages.register(stages.OUTPUT, store_answer)
