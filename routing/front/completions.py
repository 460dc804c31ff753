"""Legacy text completions (POST /v1/completions).

Kinds that have them natively (OpenAI, Azure, OpenAI-compatible servers) get the
request as it is and their answer is relayed. Every other kind gets the prompt
as one user message of a chat request, and the chat answer comes back as a
text completion.
"""

import orjson

from gateway_project.lib import errors
from providers.adapters import for_kind
from providers.adapters.base import StreamEvent, UpstreamRequest
from routing import upstream

from . import estimates, relay, stages, validation
from .endpoint import front_view
from .pipeline import Front, json_response, read_chat

# Completions parameters that mean the same in chat.
SHARED = ("model", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options",
          "presence_penalty", "frequency_penalty", "logit_bias", "user")


def is_native(adapter) -> bool:
    return hasattr(adapter, "completions_request")


def to_chat(body: dict) -> dict:
    prompt = body["prompt"]
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise errors.bad_request("This model takes exactly one text prompt (no batches or token arrays).",
                                     param="prompt", code="unsupported_parameter")
        prompt = prompt[0]
    chat = {name: body[name] for name in SHARED if name in body}
    # What has no chat counterpart (echo, suffix, best_of, logprobs) goes along
    # under its own name, so that the adapter refuses it by name.
    chat.update({k: v for k, v in body.items() if k not in SHARED and k != "prompt"})
    chat["messages"] = [{"role": "user", "content": prompt}]
    return chat


def request(adapter, target, body: dict, request_id: str) -> UpstreamRequest:
    if is_native(adapter):
        return adapter.completions_request(target, body, request_id)
    return adapter.chat_request(target, to_chat(body), request_id)


def _choice(text: str, finish: str | None) -> dict:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}


def from_chat(completion: dict) -> dict:
    choice = (completion.get("choices") or [{}])[0]
    answer = {"id": "cmpl-" + str(completion.get("id", "")).removeprefix("chatcmpl-"), "object": "text_completion",
              "created": completion.get("created", 0), "model": completion.get("model", ""),
              "choices": [_choice((choice.get("message") or {}).get("content") or "", choice.get("finish_reason"))]}
    if "usage" in completion:
        answer["usage"] = completion["usage"]
    return answer


class Stream:
    """Writes translated chat chunks as text_completion chunks (OpenAI's SSE)."""

    def feed(self, event: StreamEvent) -> bytes:
        out = []
        for chunk in event.chunks or ():
            choices = chunk.get("choices") or []
            completion = {"id": "cmpl-" + chunk["id"].removeprefix("chatcmpl-"), "object": "text_completion",
                          "created": chunk["created"], "model": chunk["model"],
                          "choices": [_choice((c.get("delta") or {}).get("content") or "", c.get("finish_reason"))
                                      for c in choices]}
            if "usage" in chunk:
                completion["usage"] = chunk["usage"]
            if choices and not completion["choices"][0]["text"] and not completion["choices"][0]["finish_reason"]:
                continue  # a role-only or tool chunk: nothing to say in a text completion
            out.append(b"data: " + orjson.dumps(completion) + b"\n\n")
        if event.done:
            out.append(b"data: [DONE]\n\n")
        return b"".join(out)

    def error(self, error: errors.GatewayError) -> bytes:
        return b"data: " + error.body() + b"\n\n"


# --- the endpoint (POST /v1/completions) -------------------------------------------

def build(adapter, target, body: dict, call) -> UpstreamRequest:
    return request(adapter, target, body, call.request_id)


async def answer(call, attempt, body: dict):
    adapter = for_kind(attempt.target.kind)
    native = is_native(adapter)
    chat_body = body if native else to_chat(body)
    if body.get("stream"):
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        translate = adapter.chat_stream(attempt.target, chat_body, want_usage)
        verbatim_read = getattr(adapter, "verbatim_read", None) if native else None
        if verbatim_read is not None and not stages.has_output(call):
            return relay.relay_verbatim(call, attempt, translate, verbatim_read)
        writer = relay.OpenAIStream() if native else Stream()
        return relay.relay_stream(call, attempt, translate, writer)
    raw, completion, verbatim = await read_chat(call, attempt, chat_body)
    return json_response(raw if verbatim else orjson.dumps(
        completion if native else upstream.decode(attempt.target, from_chat, completion)))


FRONT = Front("completions", "POST", "chat", validation.completions_body, build, answer, estimates.chat)
completions = front_view(FRONT)
