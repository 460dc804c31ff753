"""What the hot path knows about one call, and the usage event it becomes."""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal

import orjson

from gateway_project.lib import tokens
from gateway_project.lib.errors import GatewayError
from gateway_project.lib.messages import prompt_inputs
from gateway_project.lib.request_ids import new_request_id
from keys.auth import KeyInfo
from providers.adapters.base import Usage
from providers.targets import Target
from usage import events, limits, prompts, recorder
from usage.limits import Admission

log = logging.getLogger(__name__)

@dataclass(slots=True)
class Call:
    endpoint: str
    client_request_id: str = ""
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    ts: float = field(default_factory=time.time)
    key: KeyInfo | None = None
    model: str = ""
    body: dict | None = None
    target: Target | None = None
    attempts: int = 0
    usage: Usage | None = None
    tokens_estimated: bool = False
    delivered_chunks: int = 0
    ttft_ms: int | None = None
    status: str = "ok"
    http_status: int = 200
    error_type: str = ""
    streamed: bool = False
    # A stream records its own event when it ends; the view must not.
    recorded_by_stream: bool = False
    admission: Admission | None = None
    # The key an ADMITTED stage asked the admission to read (Stage.admission_read) and its value, read in the
    # admission's round trip (the limits script's, or with no limit the in-flight entry's); None: not read.
    read: tuple[str, bytes | None] | None = None
    route: str = ""
    strategy: str = ""
    # For metrics and traces (perf_counter times): around admission, the upstream
    # calls (first attempt sent to last byte read) and accounting.
    admit_span: tuple[float, float] | None = None
    upstream_started: float = 0.0
    upstream_ended: float = 0.0
    answered_started: float = 0.0  # the attempt that answered
    account_span: tuple[float, float] | None = None
    # Each upstream attempt, (target, start, end, error or None), kept only while tracing.
    attempt_log: list | None = None
    traceparent: str = ""
    recorded: dict | None = None  # the usage event, once built
    # A stream's in-flight entry (usage/inflight.py): the hash holding it, and when to rewrite it next.
    inflight: str | None = None  # "" when there is none (no Redis)
    checkpoint_due: float = 0.0
    checkpointing: asyncio.Future | None = None  # the last in-flight write (a task, or a turn's shared future)
    # A stream's in-flight entry serialised, cut where its counts, cost and latency go (checkpoint_entry).
    checkpoint_template: tuple[bytes, ...] | None = None
    prompt_counted: int | None = None
    planned: Target | None = None  # the deployment the upstream call goes to first
    front_state: object = None  # what a front keeps between its steps (the Responses API's parsed request)
    front: object = None  # the pipeline.Front serving the call
    # The form the answer comes in: "" the gateway's internal (chat) form; "anthropic" or "responses" when the
    # call went natively (Anthropic's message and events, a Responses object and events), for output stages.
    form: str = ""
    request_headers: object = None  # the client's headers, for stages that read them (Cache-Control)
    response_headers: dict | None = None  # headers stages add to the answer (x-gateway-cache)
    cache: object = None  # what the response cache (routing/cache/) knows of this call
    # Redis SETs, (key, value, TTL in seconds, sorted set to record its expiry in or "") each, that a stage leaves to the round trip that settles the
    # call and buffers its usage event (the response cache's entry of a JSON answer), instead of one of its own.
    writes: list | None = None
    # A cache hit: answered by the gateway at no upstream cost; whether it spends of token quotas and
    # budgets (its tokens and the cost it saved), as its policy says.
    cache_hit: bool = False
    cost_saved: Decimal = Decimal(0)
    hit_spends_limits: bool = False
    guard: object = None  # the guardrails' state for this call (routing/guardrails/stage.py)
    guardrails: dict | None = None  # what the guardrails decided, for the usage record (no matched text)
    # The prompt template the request names ({id, version, variables, param}: validation.take_prompt), and the
    # version it was expanded from (routing/prompts/stage.py), for the usage record.
    prompt: dict | None = None
    prompt_template: str = ""
    prompt_version: int | None = None
    # Parameters a template or a variant set that the front's own form has no field for (routing/prompts/native.py):
    # a call with any goes through the chat form, and the front's `rebuild` puts them in it.
    chat_only: dict = field(default_factory=dict)
    # The experiment the call took part in and the variant it was given (routing/experiments/stage.py);
    # a variant may pin one deployment of the route.
    experiment_id: int | None = None
    variant: str = ""
    pinned_deployment: int | None = None
    # A batch line (routing/batches/): the batch's id, in its usage record; its admission takes
    # BATCH_LIMIT_SHARE of the rate limits.
    batch_id: str = ""

    @property
    def response_id(self) -> str:
        return self.client_request_id or self.request_id

    def cost(self) -> Decimal:
        if self.target is None or self.usage is None:
            return Decimal(0)
        return self.target.usage_cost(self.usage)

    async def settle_and_record(self) -> None:
        """Settle the limits reservation with what the call used, and buffer its usage event."""
        started = time.perf_counter()
        if self.checkpointing is not None:
            try:
                # The in-flight entry lands before the event that deletes it (shielded: a stream's
                # checkpoint future is shared with the other streams of its turn).
                await asyncio.shield(self.checkpointing)
            except Exception:
                log.exception("request %s: in-flight entry failed", self.request_id)
        event = self.recorded = self.event()
        if self.key.prompt_retention_days:
            prompts.attach(event, self.body, self.key.prompt_retention_days)
        try:
            inflight = (self.inflight, self.request_id) if self.inflight else None
            writes = tuple(self.writes or ())
            if self.admission is not None:
                used, spent = self.spent_of_limits()
                serialized = orjson.dumps(event) if self.admission.engine == "redis" else None
                if await limits.settle(self.admission, used, limits.to_micros(spent), serialized, inflight, writes):
                    return  # the settle script buffered the event too (deleted the in-flight entry, set the writes)
            await recorder.record(event, self.inflight or None, writes)
        finally:
            self.account_span = (started, time.perf_counter())

    def spent_of_limits(self) -> tuple[int, Decimal]:
        """Tokens and cost the call spends of the limits: what it used, or for a cache hit nothing
        unless its policy counts hits (then its tokens and the cost it saved)."""
        used = self.usage.prompt_tokens + self.usage.completion_tokens if self.usage else 0
        if self.cache_hit:
            return (used, self.cost_saved) if self.hit_spends_limits else (0, Decimal(0))
        return used, self.cost()

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = self.elapsed_ms()

    def failed(self, error: GatewayError) -> None:
        self.http_status = error.status
        self.error_type = error.code or error.type
        if error.code == "upstream_timeout":
            self.status = "upstream_timeout"
        elif getattr(error, "retryable", None) is not None or error.status >= 500:
            self.status = "upstream_error"
        else:
            self.status = "client_error"

    def client_left(self) -> None:
        """The client hung up before the answer: once the upstream was called, its prompt is billed
        (estimated, at the first deployment's prices when none has answered yet)."""
        self.status, self.http_status, self.error_type = "client_disconnected", 499, "client_disconnected"
        if self.upstream_started:
            self.target = self.target or self.planned
            self.estimate_usage()

    def estimate_usage(self) -> None:
        """Fill in usage the upstream did not report, marked as estimated."""
        if self.usage is not None:
            return
        self.tokens_estimated = True
        self.usage = Usage(prompt_tokens=self.estimated_prompt(), completion_tokens=self.delivered_chunks)

    def interrupted_event(self, target: Target | None = None) -> dict:
        """The usage event as it stands if the call stopped now: what is billed should this worker die.

        Before the upstream answers, `target` is the deployment it is about to
        call; the client then gets no answer, which a proxy in front reports as 502.
        """
        reported = self.usage or Usage()
        usage = Usage(prompt_tokens=reported.prompt_tokens or self.estimated_prompt(),
                      completion_tokens=max(reported.completion_tokens, self.delivered_chunks),
                      cached_tokens=reported.cached_tokens, reasoning_tokens=reported.reasoning_tokens,
                      cache_write_tokens=reported.cache_write_tokens,
                      cache_write_1h_tokens=reported.cache_write_1h_tokens)
        event = self.event(usage, target)
        event.update(status="interrupted", error_type="worker_lost", tokens_estimated=True)
        if not self.streamed:
            event["http_status"] = 502
        return event

    def checkpoint_whole(self) -> bytes:
        """`interrupted_event()` serialised whole, as an exact-size copy (orjson's output keeps a 4-8 KiB
        buffer while the write waits for Redis)."""
        return _exact(orjson.dumps(self.interrupted_event()))

    def checkpoint_entry(self) -> bytes:
        """`interrupted_event()` serialised, for a stream's in-flight checkpoint. A stream rewrites it every
        second and, until the upstream reports usage, only the completion count, the total, the cost and
        the latency change: the event is made whole once, kept cut at those four values, and then only
        they are written into it (the same bytes, at a fifth of the cost)."""
        if self.usage is not None or self.ttft_ms is None or self.target is None:
            self.checkpoint_template = None
            return self.checkpoint_whole()
        if self.checkpoint_template is None:
            event = self.interrupted_event()
            marks = {"completion_tokens": -900000001, "total_tokens": -900000002, "cost_usd": "\x00cost",
                     "latency_ms": -900000003}
            if event["prompt_tokens"] != self.estimated_prompt() or set(marks) - event.keys():
                return _exact(orjson.dumps(event))  # clamped by events.clean, or not the expected shape
            event.update(marks)
            rest, pieces = orjson.dumps(event), []
            for mark in marks.values():
                piece, found, rest = rest.partition(orjson.dumps(mark))
                if not found:
                    return self.checkpoint_whole()
                pieces.append(piece)
            self.checkpoint_template = (*pieces, rest)
        before_completion, before_total, before_cost, before_latency, after = self.checkpoint_template
        prompt, completion = self.estimated_prompt(), self.delivered_chunks
        cost = self.target.usage_cost(Usage(prompt_tokens=prompt, completion_tokens=completion))
        return b"".join((before_completion, b"%d" % completion, before_total, b"%d" % (prompt + completion),
                         before_cost, orjson.dumps(str(cost)), before_latency, b"%d" % self.elapsed_ms(), after))

    def estimated_prompt(self) -> int:
        """The prompt's tokens as the gateway counts them, counted once per call (routing,
        the limits estimate, the in-flight entry and a missing usage report share it)."""
        if self.prompt_counted is None:
            self.prompt_counted = self._count_prompt()
        return self.prompt_counted

    def _count_prompt(self) -> int:
        messages, texts, pretokenized = prompt_inputs(self.body)
        if messages is not None:
            return tokens.count_messages(messages, self.model)
        return pretokenized + sum(tokens.count_text(t, self.model) for t in texts)

    def hedge_loser_event(self, target: Target) -> dict:
        """The call a hedge cancelled: recorded (no tokens known) so that nothing sent upstream is hidden."""
        event = self.event()
        event.update(request_id=f"{self.request_id}-hedge", provider_id=target.provider_id,
                     provider_name=target.provider_name, deployment_id=target.deployment_id,
                     upstream_model=target.upstream_model, prompt_tokens=0, completion_tokens=0, total_tokens=0,
                     cached_tokens=0, cache_write_tokens=0, cache_write_1h_tokens=0, reasoning_tokens=0,
                     cost_usd="0", status="hedge_cancelled", ttft_ms=None)
        return event

    def event(self, usage: Usage | None = None, target: Target | None = None) -> dict:
        """The usage event (also the request log line's fields; a call with no key is logged, not recorded),
        made to fit the ledger's columns: caller-chosen text never keeps it from being written."""
        target = target or self.target
        cost = self.cost() if usage is None else target.usage_cost(usage)
        usage = usage or self.usage or Usage()
        event = events.clean({
            "request_id": self.request_id,
            "client_request_id": self.client_request_id,
            "ts": self.ts,
            "tenant_id": self.key.tenant_id if self.key else None,
            "api_key_id": self.key.id if self.key else None,
            "key_prefix": self.key.prefix if self.key else "",
            "provider_id": target.provider_id if target else None,
            "provider_name": target.provider_name if target else "",
            "deployment_id": target.deployment_id if target else None,
            "endpoint": self.endpoint,
            "route": self.route[:200],
            "strategy": self.strategy,
            "attempts": self.attempts,
            "public_model": self.model[:200],
            "upstream_model": target.upstream_model if target else "",
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "cache_write_1h_tokens": usage.cache_write_1h_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "tokens_estimated": self.tokens_estimated,
            "cost_usd": str(cost),
            "latency_ms": self.elapsed_ms(),
            "ttft_ms": self.ttft_ms,
            "status": self.status,
            "http_status": self.http_status,
            "error_type": self.error_type,
            "streamed": self.streamed,
            "cache_hit": self.cache_hit,
            "cost_saved_usd": str(self.cost_saved),
            "guardrails": self.guardrails,
            "prompt_template": self.prompt_template,
            "prompt_version": self.prompt_version,
            "experiment_id": self.experiment_id,
            "variant": self.variant,
        })
        if self.batch_id:
            event["batch_id"] = self.batch_id
        return event


def _exact(data: bytes) -> bytes:
    return bytes(memoryview(data))
