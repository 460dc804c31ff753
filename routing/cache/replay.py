"""A cache entry served through the caller's own front, as if an upstream had answered it.

The entry holds the answer in the gateway's internal form (an OpenAI chat
completion, a legacy text completion or an embeddings list), or in the form of
the native provider that made it (native.py). A hit hands the front an upstream
attempt whose body is that answer as such a provider would send it (Anthropic's
message or events, a Responses object or events, from a "deployment" of that
kind, so the front answers natively as with a live answer) or else as an
OpenAI-compatible server would send it: JSON, or for a streamed request a stream of chunks (with
its usage chunk, relayed when the client asked for usage). So every front shapes
a hit as it shapes a live answer (Anthropic events on /v1/messages, the
Responses event sequence and a stored response on /v1/responses), the output
stages see it, and a JSON hit gets a new id.
"""

import secrets
import time
from dataclasses import dataclass
from decimal import Decimal

import orjson

from providers.targets import Target
from routing import upstream

from . import native

ZERO = Decimal(0)


class _Body:
    """What the upstream reader takes of an aiohttp response: the whole body, or its stream."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.content = self

    async def read(self) -> bytes:
        return self.data

    async def readany(self) -> bytes:
        """The stream in one read, then its end (b"")."""
        data, self.data = self.data, b""
        return data

    async def iter_any(self):
        yield self.data

    def release(self) -> None:
        pass


@dataclass(slots=True)
class Replay(upstream.Attempt):
    def release(self) -> None:
        self.released = True  # no connection, no deployment's in-flight count


def target(entry: dict, mode: str) -> Target:
    """The answering "deployment" of a hit: the provider and model that made the answer, at no cost, of a kind
    that answers in the entry's form."""
    form = entry.get("f", "")
    return Target(deployment_id=None, provider_id=None, provider_name=entry.get("p", ""), tenant_id=None,
                  kind="anthropic" if form == "anthropic" else "openai", native_responses=form == "responses",
                  base_url="", api_key="", extra_headers={}, settings={}, public_model="",
                  upstream_model=entry.get("m", ""), mode=mode, context_window=0, max_output_tokens=0,
                  input_price_per_mtok=ZERO, output_price_per_mtok=ZERO, created=0,
                  cached_input_price_per_mtok=ZERO, cache_write_price_per_mtok=ZERO,
                  cache_write_1h_price_per_mtok=ZERO)


def attempt(entry: dict, mode: str, stream: bool) -> Replay:
    answer, form = entry["a"], entry.get("f", "")
    if form:
        answer = native.renamed(answer, form)
        events = native.message_events if form == "anthropic" else native.response_events
        data = events(answer) if stream else orjson.dumps(answer)
    else:
        data = _sse(answer) if stream else orjson.dumps(_renamed(answer))
    return Replay(target(entry, mode), _Body(data), attempts=0, started=time.perf_counter())


def _renamed(answer: dict) -> dict:
    """The answer with a new id and creation time (an embeddings list has neither)."""
    if "id" in answer:
        prefix = "cmpl-" if answer.get("object") == "text_completion" else "chatcmpl-"
        answer = {**answer, "id": prefix + secrets.token_hex(12), "created": int(time.time())}
    return answer


def _sse(answer: dict) -> bytes:
    answer = _renamed(answer)
    head = {"id": answer["id"], "created": answer["created"], "model": answer.get("model", "")}
    text = answer.get("object") == "text_completion"
    chunks = [_text_chunk(head, c) if text else _chat_chunk(head, c) for c in answer.get("choices") or ()]
    chunks += [_finish_chunk(head, c, text) for c in answer.get("choices") or ()]
    if answer.get("usage"):
        chunks.append({**head, "object": "text_completion" if text else "chat.completion.chunk", "choices": [],
                       "usage": answer["usage"]})
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _chat_chunk(head: dict, choice: dict) -> dict:
    message = choice.get("message") or {}
    delta = {"role": "assistant", "content": message.get("content") or ""}
    for name in ("reasoning_content", "reasoning_signature", "refusal"):
        if message.get(name):
            delta[name] = message[name]
    if message.get("tool_calls"):
        delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
    return {**head, "object": "chat.completion.chunk",
            "choices": [{"index": choice.get("index", 0), "delta": delta, "finish_reason": None}]}


def _text_chunk(head: dict, choice: dict) -> dict:
    return {**head, "object": "text_completion", "choices": [
        {"text": choice.get("text") or "", "index": choice.get("index", 0), "logprobs": None, "finish_reason": None}]}


def _finish_chunk(head: dict, choice: dict, text: bool) -> dict:
    finish = choice.get("finish_reason") or "stop"
    if text:
        return {**head, "object": "text_completion", "choices": [
            {"text": "", "index": choice.get("index", 0), "logprobs": None, "finish_reason": finish}]}
    return {**head, "object": "chat.completion.chunk",
            "choices": [{"index": choice.get("index", 0), "delta": {}, "finish_reason": finish}]}
