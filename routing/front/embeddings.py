"""OpenAI's embeddings (POST /v1/embeddings) on every provider kind that embeds."""

import orjson

from providers.adapters import for_kind
from routing import upstream

from . import estimates, stages, validation
from .endpoint import front_view
from .pipeline import Front, json_response, read_json


def build(adapter, target, body: dict, call):
    return adapter.embeddings_request(target, body, call.request_id)


async def answer(call, attempt, body: dict):
    raw, data = await read_json(call, attempt, allow_list=True)
    target = attempt.target
    answer = upstream.decode(target, for_kind(target.kind).embeddings_response, target, body, data)
    if answer is not None and "usage" not in answer:
        # The upstream reported no tokens: answer with the gateway's estimate.
        answer["usage"] = {"prompt_tokens": call.usage.prompt_tokens, "total_tokens": call.usage.prompt_tokens}
    if stages.has_output(call):
        answer = await stages.run_answer(call, data if answer is None else answer)
    return json_response(raw if answer is None else orjson.dumps(answer))


FRONT = Front("embeddings", "POST", "embedding", validation.embeddings_body, build, answer, estimates.embeddings)
embeddings = front_view(FRONT)
