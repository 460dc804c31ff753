"""OpenAI's chat completions (POST /v1/chat/completions): the internal form itself."""

import orjson

from providers.adapters import for_kind

from . import estimates, relay, stages, validation
from .endpoint import front_view
from .pipeline import Front, json_response, read_chat


def build(adapter, target, body: dict, call):
    return adapter.chat_request(target, body, call.request_id)


async def answer(call, attempt, body: dict):
    if body.get("stream"):
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        adapter = for_kind(attempt.target.kind)
        translate = adapter.chat_stream(attempt.target, body, want_usage)
        if (verbatim_read := getattr(adapter, "verbatim_read", None)) is not None:
            verbatim, held = stages.verbatim_reads(call)
            if verbatim:
                return relay.relay_verbatim(call, attempt, translate, verbatim_read, held)
        return relay.relay_stream(call, attempt, translate, relay.OpenAIStream())
    raw, completion, verbatim = await read_chat(call, attempt, body)
    return json_response(raw if verbatim else orjson.dumps(completion))


FRONT = Front("chat.completions", "POST", "chat", validation.chat_body, build, answer, estimates.chat)
chat_completions = front_view(FRONT)
