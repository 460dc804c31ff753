"""The request path of every /v1 call, as one function of named steps.

`run` reads top to bottom: parse, authenticate, authorize, input stages, route,
admit, admitted stages, call upstream, then the front answers (output stages
inside it) and the endpoint wrapper (routing/front/endpoint.py) accounts and
responds. Each step is one call into the module that owns it. Routing comes
before admission because the reservation is priced at the deployments the call
may reach.

A front (chat.py, messages.py, completions.py, embeddings.py) says how to
parse its request into the internal (OpenAI-shaped) form, how to build the
upstream request and how to answer; a stage (stages.py) slots in at a point.
"""

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from django.http import HttpResponse

from gateway_project.lib import errors
from gateway_project.lib.settings_cache import conf
from keys import throttle
from keys.auth import authenticate as authenticate_key
from keys.auth import key_from_headers
from providers.adapters import for_kind
from providers.adapters.base import UpstreamRequest
from routing import strategies, table, upstream
from usage import inflight, limits, recorder

from . import relay, stages
from .call import Call


@dataclass(frozen=True, slots=True)
class Front:
    """One API family at the gateway's door.

    - `parse(request)`: the validated body in the internal form (400 in the front's shape otherwise);
    - `build(adapter, target, body, call)`: the upstream request for one deployment;
    - `answer(call, attempt, body)`: the response, JSON or a stream, once the upstream answered;
    - `mode`: "chat" or "embedding", the deployments it may use;
    - `estimate(body, targets, prompt)`: (tokens, micro-dollars) to reserve against the limits;
    - `prepare(call, spec)`, optional: once the key is known, finish the body (the Responses API reads
      its stored conversation here) before the input stages see it; it may narrow the route (returns
      the spec to use, or None to keep it);
    - `cache_body(call)`, optional, for a front with a native path: the request in the front's own form, as
      the response cache keys it (None: not cached);
    - `rebuild(call)`, optional, with it: the chat form made again from that request once a stage changed it
      in place (the guardrails' redactions), so that both forms say the same.
    """

    endpoint: str
    method: str
    mode: str
    parse: Callable
    build: Callable[..., UpstreamRequest]
    answer: Callable
    estimate: Callable
    error_shape: Callable[[errors.GatewayError], HttpResponse] | None = None
    prepare: Callable | None = None
    cache_body: Callable | None = None
    rebuild: Callable | None = None

    def streams(self, body: dict) -> bool:
        return bool(body.get("stream"))


async def run(front: Front, request, call: Call) -> HttpResponse:
    body = front.parse(request)
    call.body, call.model, call.front = body, body["model"], front
    await authenticate(request, call)
    spec = await authorize(call, front.mode) if call.model else None  # none yet: a prompt template's default
    if front.prepare is not None:
        spec = await front.prepare(call, spec) or spec
    asked = call.model
    if (reply := await stages.run_request(stages.INPUT, call, front)) is not None:
        return reply.response
    if spec is None or call.model != asked or call.pinned_deployment is not None:
        spec = await reauthorize(call, spec, front.mode)
    spec, targets = await route(call, spec, request, front.mode)
    await admit(call, front.estimate, targets or spec.targets)
    if (reply := await stages.run_request(stages.ADMITTED, call, front)) is not None:
        return reply.response
    body = call.body  # as the input stages left it
    attempt = await call_upstream(call, spec, targets, lambda adapter, t: front.build(adapter, t, body, call),
                                  stream=front.streams(body))
    return upstream_headers(await front.answer(call, attempt, body), call)


# --- the steps --------------------------------------------------------------------

async def key_of(request):
    """The key the request authenticates with (401 otherwise; a failure counts against its address)."""
    if (info := getattr(request, "gateway_key", None)) is not None:
        return info  # the admin's playground: the user signed in and may use this key
    try:
        return await authenticate_key(key_from_headers(request.headers))
    except errors.GatewayError:
        await throttle.failed_attempt(request.META.get("REMOTE_ADDR", ""))
        raise


async def authenticate(request, call: Call) -> None:
    call.key = await key_of(request)
    if (ttl := request.headers.get("x-gateway-cache-ttl")) is not None and not ttl.isdigit():
        raise errors.GatewayError(400, "x-gateway-cache-ttl must be a whole number of seconds.",
                                  code="invalid_cache_ttl")
    if call.model == "default" and call.key.default_model:
        call.model = call.key.default_model  # the key's default route, else its tenant's


async def authorize(call: Call, mode: str) -> table.RouteSpec:
    """The route serving the model for this key: 404 for a name the tenant cannot see, 403 for one it may not use."""
    return await table.route_for_key(call.key, call.model, mode)


async def reauthorize(call: Call, spec: table.RouteSpec | None, mode: str) -> table.RouteSpec:
    """After the input stages: the route of the model a stage chose (a template's default, an experiment's
    variant), authorized for the key like the one asked for; narrowed to the deployment a variant pins."""
    if spec is None or call.model != spec.name:
        spec = await authorize(call, mode)
    if call.pinned_deployment is not None:
        pinned = tuple(t for t in spec.targets if t.deployment_id == call.pinned_deployment)
        if pinned:
            spec = dataclasses.replace(spec, targets=pinned, rules=())
    return spec


async def route(call: Call, spec: table.RouteSpec, request, mode: str):
    """Order the route's targets for this request (rules, context window, strategy, breakers); no network."""
    body = call.body
    if mode == "chat":
        facts = strategies.facts_for_chat(body, len(request.body), request.headers)
        count_prompt = call.estimated_prompt
    else:
        facts = strategies.Facts(len(request.body), 0, False, False, "", request.headers)
        count_prompt = lambda: facts.prompt_tokens  # noqa: E731
    spec, targets = await strategies.plan(spec, facts, call.key.tenant_id, count_prompt)
    call.route, call.strategy = spec.name, spec.strategy
    return spec, targets


async def admit(call: Call, estimate, targets) -> None:
    """Check every limit and reserve the estimate; raises 429 when refused.

    With Redis, an admitted call also gets its in-flight entry (usage/inflight.py):
    should this worker die before the call is recorded, the reaper bills its
    prompt as an interrupted call. The admission script writes it; with no limit
    to check, it is written beside the upstream call. The script also reads the key
    an ADMITTED stage asks for (the response cache's entry), sparing it a round trip;
    with no limit, that read and the in-flight entry go in one round trip of their own.
    The value read is `call.read`.
    """
    started = time.perf_counter()
    call.planned = targets[0] if targets else None
    entry = _inflight_entry(call, call.planned) if conf.REDIS_URL and call.planned else None
    read = stages.admission_read(call) if conf.REDIS_URL else None
    try:
        call.admission = await limits.admit(call.key.tenant_id, call.key.id, call.model,
                                            lambda: estimate(call.body, targets, call.estimated_prompt()), entry,
                                            read, conf.BATCH_LIMIT_SHARE if call.batch_id else 1.0)
    except errors.GatewayError:
        call.inflight = None  # refused: no entry was written
        raise
    finally:
        call.admit_span = (started, time.perf_counter())
    if call.admission is not None and call.admission.read_key:
        call.read = (call.admission.read_key, call.admission.read_value)
    if entry is None:
        return
    if call.admission is None:
        _, _, event = entry()
        if read is None:
            call.checkpointing = asyncio.ensure_future(relay.write_checkpoint(call, event))
        else:
            call.read = (read[0], await inflight.checkpoint_and_read(call.inflight, call.request_id, event, read))
    elif call.admission.engine != "redis":
        call.inflight = None  # Redis is unreachable: the offline policy admitted it, with no entry


def _inflight_entry(call: Call, target):
    """The call's in-flight entry as it stands before the upstream answers (prompt only, at
    `target`'s prices), for the admission script to write."""

    def entry() -> tuple[str, str, bytes]:
        call.inflight = inflight.entries_key(call.key.tenant_id)
        return call.inflight, call.request_id, orjson.dumps(call.interrupted_event(target))

    return entry


async def call_upstream(call: Call, spec, targets, build, stream: bool = False) -> upstream.Attempt:
    """Open the upstream call: retries and fallbacks happen here, before the first byte reaches the client."""
    call.upstream_started = time.perf_counter()
    try:
        attempt = await upstream.open_call(targets, build, stream=stream, max_attempts=spec.max_attempts,
                                           deadline_seconds=spec.deadline_seconds,
                                           hedge_after_ms=spec.hedge_after_ms, log=call.attempt_log)
    except errors.GatewayError:
        call.upstream_ended = time.perf_counter()
        call.attempts = min(len(targets), spec.max_attempts) or 0
        raise
    call.target, call.attempts, call.answered_started = attempt.target, attempt.attempts, attempt.started
    if attempt.hedge_loser is not None:
        await recorder.record(call.hedge_loser_event(attempt.hedge_loser))
    return attempt


async def read_json(call: Call, attempt: upstream.Attempt, *, allow_list: bool = False,
                    parse_usage: Callable | None = None) -> tuple[bytes, dict]:
    """The upstream's whole answer, and its usage (estimated when the upstream reported none): read by
    the adapter's `parse_usage`, or by `parse_usage` for an answer of another API than chat's."""
    try:
        raw, data = await upstream.read_json(attempt, allow_list=allow_list)
    finally:
        call.upstream_ended = time.perf_counter()
    target = attempt.target
    call.usage = upstream.decode(target, parse_usage or for_kind(target.kind).parse_usage, data)
    call.estimate_usage()
    return raw, data


async def read_chat(call: Call, attempt: upstream.Attempt, body: dict) -> tuple[bytes, dict, bool]:
    """The upstream's chat answer as (raw body, internal completion, whether raw already is that completion),
    after the output stages (which may change it: then raw is no longer the answer)."""
    raw, data = await read_json(call, attempt)
    call.first_token()
    target = attempt.target
    completion = upstream.decode(target, for_kind(target.kind).chat_response, target, body, data)
    verbatim = completion is None
    completion = data if verbatim else completion
    if stages.has_output(call):
        return raw, await stages.run_answer(call, completion), False
    return raw, completion, verbatim


def json_response(body: bytes) -> HttpResponse:
    response = HttpResponse(body, content_type="application/json")
    response["content-length"] = str(len(body))
    return response


def upstream_headers(response: HttpResponse, call: Call) -> HttpResponse:
    """The route, provider and model headers of an answered call."""
    target = call.target
    if target is None:  # answered by a stage
        return response
    response["x-gateway-provider"] = target.provider_name
    response["x-gateway-model"] = target.upstream_model
    response["x-gateway-deployment"] = str(target.deployment_id)
    response["x-gateway-route"] = call.route
    response["x-gateway-strategy"] = call.strategy
    response["x-gateway-attempts"] = str(call.attempts)
    return response
