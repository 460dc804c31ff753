"""The gateway's chat answers as Responses API answers: a response object, or its stream of events.

`from_chat` turns a chat completion into a response; `ChatEvents` turns a
stream of chat chunks into the Responses event sequence (created, in_progress,
each output item added, its deltas and done, then exactly one of completed,
incomplete or failed), with increasing sequence numbers. Both build on
`envelope`, the response object as the request shapes it.
"""

import secrets
import time

import orjson

from gateway_project.lib import errors
from providers.adapters.base import StreamEvent, Usage

from .responses_input import Request

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def envelope(request: Request, response_id: str, model: str, created_at: int | None = None) -> dict:
    """The response object before its output: the request's parameters echoed, as OpenAI does."""
    body = request.body
    reasoning = body.get("reasoning") or {}
    return {
        "id": response_id, "object": "response", "created_at": created_at or int(time.time()),
        "status": "in_progress", "background": False, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"), "model": model, "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"), "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"), "service_tier": body.get("service_tier") or "default",
        "store": request.store, "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}}, "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [], "top_logprobs": body.get("top_logprobs") or 0,
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled", "usage": None, "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def usage_of(usage: Usage | None) -> dict | None:
    if usage is None:
        return None
    # OpenAI's Responses usage: input_tokens include cache reads (and, here, cache writes: the
    # shape has no field for them), output_tokens reasoning ones.
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def finish(response: dict, finish_reason: str | None, usage: Usage | None) -> dict:
    """Close the response: its status from the chat finish reason, and its usage."""
    reason = INCOMPLETE.get(finish_reason or "")
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    response["usage"] = usage_of(usage)
    if not reason:
        response["completed_at"] = int(time.time())
    return response


def _reasoning_item(request: Request, text: str, signature: str | None, item_id: str | None = None) -> dict:
    item = {"id": item_id or new_id("rs"), "type": "reasoning",
            "summary": [{"type": "summary_text", "text": text}] if request.summary and text else []}
    if signature and "reasoning.encrypted_content" in request.include:
        item["encrypted_content"] = signature
    return item


def _reasoning_text(message: dict) -> str:
    """The reasoning of a chat message or delta: `reasoning_content` (the adapters', DeepSeek's and vLLM's
    name) or `reasoning` (other OpenAI-compatible servers')."""
    text = message.get("reasoning_content") or message.get("reasoning")
    return text if isinstance(text, str) else ""


def _logprobs(chat_logprobs) -> list:
    content = (chat_logprobs or {}).get("content") if isinstance(chat_logprobs, dict) else None
    return [{"token": t.get("token", ""), "logprob": t.get("logprob", 0), "bytes": t.get("bytes") or [],
             "top_logprobs": [{"token": x.get("token", ""), "logprob": x.get("logprob", 0), "bytes": x.get("bytes") or []}
                              for x in t.get("top_logprobs") or ()]} for t in content or ()]


def from_chat(request: Request, completion: dict, response_id: str, model: str, usage: Usage | None) -> dict:
    """A chat completion as the response to `request`."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    finish_reason = choice.get("finish_reason")
    output = []
    thought = _reasoning_text(message)
    if thought or message.get("reasoning_signature"):
        output.append(_reasoning_item(request, thought, message.get("reasoning_signature")))
    calls = (message.get("tool_calls") or [])[:request.body.get("max_tool_calls") or None]
    parts = []
    if message.get("content") or not (calls or message.get("refusal")):
        parts.append({"type": "output_text", "text": message.get("content") or "", "annotations": [],
                      "logprobs": _logprobs(choice.get("logprobs"))})
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        status = "incomplete" if finish_reason in INCOMPLETE else "completed"
        output.append({"id": new_id("msg"), "type": "message", "role": "assistant", "status": status,
                       "content": parts})
    for call in calls:
        function = call.get("function") or {}
        output.append({"id": new_id("fc"), "type": "function_call", "status": "completed", "call_id": call.get("id", ""),
                       "name": function.get("name", ""), "arguments": function.get("arguments") or "{}"})
    response = envelope(request, response_id, model)
    response["output"] = output
    return finish(response, finish_reason, usage)


def sse(kind: str, data: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(error: errors.GatewayError, sequence_number: int) -> bytes:
    """An `error` event: the Responses API's fields, and the `error` object OpenAI's SDKs raise on."""
    detail = {"type": error.type, "code": error.code, "message": error.message, "param": error.param}
    return sse("error", {"type": "error", "code": error.code, "message": error.message, "param": error.param,
                         "sequence_number": sequence_number, "error": detail})


class ChatEvents:
    """Writes a stream of chat chunks as the Responses API's events, item by item."""

    def __init__(self, request: Request, response_id: str, model: str, obfuscate: bool = False) -> None:
        self.request = request
        self.response = envelope(request, response_id, model)
        self.seq = 0
        self.started = False
        self.open: dict | None = None  # the output item being written
        self.part: dict | None = None  # its open content part (message items)
        self.text: list[str] = []  # the open part's (or reasoning summary's, or arguments') text
        self.tool_index: int | None = None
        self.signature: str | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.calls = 0
        self.max_calls = request.body.get("max_tool_calls")
        self.obfuscate = obfuscate
        self.logprobs: list = []

    # --- writing -----------------------------------------------------------------

    def _event(self, kind: str, **data) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        if self.obfuscate and "delta" in data:
            data["obfuscation"] = secrets.token_urlsafe(8)
        return sse(kind, data)

    def _where(self) -> dict:
        return {"item_id": self.open["id"], "output_index": len(self.response["output"])}

    def _add(self, item: dict) -> list[bytes]:
        out = self._close()
        self.open, self.text = item, []
        return [*out, self._event("response.output_item.added", output_index=len(self.response["output"]),
                                  item=dict(item))]

    def _close(self) -> list[bytes]:
        """Finish the open item: its done events, then it joins the response's output."""
        item = self.open
        if item is None:
            return []
        out, text = self._close_part(), "".join(self.text)
        if item["type"] == "reasoning":
            if self.request.summary and text:
                part = {"type": "summary_text", "text": text}
                out += [self._event("response.reasoning_summary_text.done", **self._where(), summary_index=0,
                                    text=text),
                        self._event("response.reasoning_summary_part.done", **self._where(), summary_index=0,
                                    part=part)]
            item.update(_reasoning_item(self.request, text, self.signature, item["id"]))
        elif item["type"] == "function_call":
            item["arguments"] = text or "{}"
            out.append(self._event("response.function_call_arguments.done", **self._where(), name=item["name"],
                                   arguments=item["arguments"]))
        if item["type"] != "reasoning":
            cut = item["type"] == "message" and self.finish_reason in INCOMPLETE
            item["status"] = "incomplete" if cut else "completed"
        out.append(self._event("response.output_item.done", output_index=len(self.response["output"]), item=item))
        self.response["output"].append(item)
        self.open, self.text = None, []
        return out

    def _part_for(self, kind: str) -> list[bytes]:
        """The open message's content part of `kind`, opening the message and the part as needed."""
        out = []
        if self.open is None or self.open["type"] != "message":
            out += self._add({"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                              "content": []})
        if self.part is None or self.part["type"] != kind:
            out += self._close_part()
            self.part = ({"type": "output_text", "text": "", "annotations": [], "logprobs": []} if kind == "output_text"
                         else {"type": "refusal", "refusal": ""})
            out.append(self._event("response.content_part.added", **self._where(),
                                   content_index=len(self.open["content"]), part=dict(self.part)))
        return out

    def _close_part(self) -> list[bytes]:
        part = self.part
        if part is None:
            return []
        text, where = "".join(self.text), {**self._where(), "content_index": len(self.open["content"])}
        if part["type"] == "output_text":
            part["text"], part["logprobs"] = text, self.logprobs
            out = [self._event("response.output_text.done", **where, text=text, logprobs=self.logprobs)]
        else:
            part["refusal"] = text
            out = [self._event("response.refusal.done", **where, refusal=text)]
        out.append(self._event("response.content_part.done", **where, part=part))
        self.open["content"].append(part)
        self.part, self.text, self.logprobs = None, [], []
        return out

    # --- reading chat chunks ---------------------------------------------------------

    def feed(self, event: StreamEvent) -> bytes:
        chunks = event.chunk_objects()
        if event.usage is not None:
            self.usage = event.usage
        out = [] if self.started else self._start()
        for chunk in chunks:
            for choice in chunk.get("choices") or ():
                out += self._delta(choice)
        if event.done:
            out += self._end()
        return b"".join(out)

    def _start(self) -> list[bytes]:
        self.started = True
        return [self._event("response.created", response=dict(self.response)),
                self._event("response.in_progress", response=dict(self.response))]

    def _delta(self, choice: dict) -> list[bytes]:
        delta, out = choice.get("delta") or {}, []
        if thought := _reasoning_text(delta):
            out += self._reasoning(thought)
        if delta.get("reasoning_signature"):
            self.signature = delta["reasoning_signature"]
        if delta.get("content"):
            out += self._part_for("output_text")
            self.text.append(delta["content"])
            logprobs = _logprobs(choice.get("logprobs"))
            self.logprobs += logprobs
            out.append(self._event("response.output_text.delta", **self._where(),
                                   content_index=len(self.open["content"]), delta=delta["content"], logprobs=logprobs))
        if delta.get("refusal"):
            out += self._part_for("refusal")
            self.text.append(delta["refusal"])
            out.append(self._event("response.refusal.delta", **self._where(),
                                   content_index=len(self.open["content"]), delta=delta["refusal"]))
        for call in delta.get("tool_calls") or ():
            out += self._tool_delta(call)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return out

    def _reasoning(self, text: str) -> list[bytes]:
        out = []
        if self.open is None or self.open["type"] != "reasoning":
            out += self._add({"id": new_id("rs"), "type": "reasoning", "summary": []})
            if self.request.summary:
                out.append(self._event("response.reasoning_summary_part.added", **self._where(), summary_index=0,
                                       part={"type": "summary_text", "text": ""}))
        self.text.append(text)
        if self.request.summary:
            out.append(self._event("response.reasoning_summary_text.delta", **self._where(), summary_index=0,
                                   delta=text))
        return out

    def _tool_delta(self, call: dict) -> list[bytes]:
        function, out = call.get("function") or {}, []
        index = call.get("index", 0)
        if self.open is None or self.open["type"] != "function_call" or index != self.tool_index:
            if self.max_calls is not None and self.calls >= self.max_calls:
                return []  # past max_tool_calls: left out, as in the JSON answer
            self.calls += 1
            self.tool_index = index
            out += self._add({"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                              "call_id": call.get("id") or new_id("call"), "name": function.get("name") or "",
                              "arguments": ""})
        elif function.get("name"):
            self.open["name"] += function["name"]
        if function.get("arguments"):
            self.text.append(function["arguments"])
            out.append(self._event("response.function_call_arguments.delta", **self._where(),
                                   delta=function["arguments"]))
        return out

    def _end(self) -> list[bytes]:
        out = self._close()
        if not self.response["output"]:  # an empty answer is still one (empty) message
            out += self._part_for("output_text") + self._close()
        finish(self.response, self.finish_reason, self.usage)
        kind = "response.completed" if self.response["status"] == "completed" else "response.incomplete"
        return [*out, self._event(kind, response=self.response)]

    def error(self, error: errors.GatewayError) -> bytes:
        """The stream broke off: the response failed, then the error itself."""
        self.response.update(status="failed", error={"code": error.code or "server_error", "message": error.message},
                             usage=usage_of(self.usage))
        failed = self._event("response.failed", response=self.response)
        event = error_event(error, self.seq)
        self.seq += 1
        return failed + event
