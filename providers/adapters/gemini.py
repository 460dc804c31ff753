"""Google Gemini (generateContent / streamGenerateContent / batchEmbedContents),
translated from and to OpenAI's chat and embeddings.

The provider's base URL is https://generativelanguage.googleapis.com; the API
version (provider setting `api_version`, default v1beta) and the model name are
put in the path. The key goes in `x-goog-api-key`.

reasoning_effort becomes generationConfig.thinkingConfig: a thinkingBudget from
openai_format.BUDGETS for Gemini 1.x and 2.x models (none: 0, thinking off), a
thinkingLevel for Gemini 3 and later (LEVELS), with includeThoughts so that the
thought summaries come back as reasoning_content. The thoughtSignature Gemini
puts on a part comes back as reasoning_signature, and goes back on the same
part: the first function call (where Gemini 3 requires it), else the last text.
"""

import mimetypes
import re
from urllib.parse import quote

import orjson

from . import base
from . import openai_format as fmt
from .base import StreamEvent, UpstreamRequest, Usage, mapped_error

STREAM_FRAMING = "sse"
EMBEDDINGS = True
KIND = "gemini"
SUPPORTED = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "tools",
                       "tool_choice", "response_format", "presence_penalty", "frequency_penalty",
                       "reasoning_effort"})
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
                  "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
                  "IMAGE_SAFETY": "content_filter", "MALFORMED_FUNCTION_CALL": "stop"}
# Gemini 3 thinks by level and cannot stop thinking: "none" asks for the least there is. Gemini 3 Pro
# knows only low and high and refuses the others with its own 400.
LEVELS = {"none": "minimal", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high",
          "xhigh": "high"}
_GENERATION = re.compile(r"gemini-(\d+)")
CONFIG = (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
          ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"))


def _url(target, method: str) -> str:
    version = target.settings.get("api_version", "v1beta")
    return f"{target.base_url}/{version}/models/{quote(target.upstream_model, safe='')}:{method}"


def _headers(target, request_id: str) -> dict[str, str]:
    return base.request_headers(target, request_id, key_header="x-goog-api-key", key_prefix="")


def _image(part: dict, param: str) -> dict:
    url = fmt.image_url_of(part, param)
    inline = fmt.inline_image(url)
    if inline is not None:
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    return {"fileData": {"mimeType": mimetypes.guess_type(url)[0] or "image/jpeg", "fileUri": url}}


def _parts(content, param: str) -> list[dict]:
    parts = []
    for i, part in enumerate(fmt.parts_of(content)):
        if part.get("type") == "text":
            parts.append({"text": part.get("text", "")})
        elif part.get("type") == "image_url":
            parts.append(_image(part, f"{param}[{i}]"))
        else:
            raise fmt.unsupported(KIND, f"{param}[{i}]", f"content parts of type '{part.get('type')}'")
    return parts


def _function_response(message: dict, names: dict[str, str]) -> dict:
    text = fmt.text_of(message.get("content"))
    try:
        result = orjson.loads(text)
    except orjson.JSONDecodeError:
        result = None
    call_id = message.get("tool_call_id", "")
    return {"functionResponse": {"id": call_id, "name": names.get(call_id, ""),
                                 "response": result if isinstance(result, dict) else {"result": text}}}


def _turn(message: dict, param: str, names: dict[str, str]) -> tuple[str, list[dict]]:
    role = message["role"]
    if role == "tool":
        return "user", [_function_response(message, names)]
    if role == "assistant":
        parts = [p for p in _parts(message.get("content"), param + ".content") if p.get("text") != ""]
        first_call = len(parts)
        for call in message.get("tool_calls") or ():
            parts.append({"functionCall": {"id": call.get("id", ""), "name": (call.get("function") or {}).get(
                "name", ""), "args": fmt.arguments_of(call, param + ".tool_calls")}})
        signature = fmt.reasoning_of(message, param)[1]
        if signature and parts:
            # Where Gemini puts it: the first function call of a turn that has one, else the last part.
            parts[first_call if first_call < len(parts) else -1]["thoughtSignature"] = signature
        return "model", parts
    return "user", _parts(message.get("content"), param + ".content")


def _contents(messages: list) -> tuple[list[dict], list[dict]]:
    names = fmt.tool_names_by_id(messages)
    system, contents = [], []
    for i, message in enumerate(messages):
        if message["role"] in ("system", "developer"):
            system.append({"text": fmt.text_of(message.get("content"))})
            continue
        role, parts = _turn(message, f"messages[{i}]", names)
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _thinking_config(target, effort: str) -> dict:
    generation = _GENERATION.search(target.upstream_model)
    if generation and int(generation.group(1)) >= 3:
        return {"thinkingLevel": LEVELS[effort], "includeThoughts": effort != "none"}
    if effort == "none":
        return {"thinkingBudget": 0}
    return {"thinkingBudget": fmt.BUDGETS[effort], "includeThoughts": True}


def _generation_config(target, body: dict) -> dict:
    config = {theirs: body[ours] for ours, theirs in CONFIG if body.get(ours) is not None}
    if (effort := fmt.reasoning_effort_of(body)) is not None:
        config["thinkingConfig"] = _thinking_config(target, effort)
    if (limit := fmt.max_tokens_of(body)) is not None:
        config["maxOutputTokens"] = limit
    if stop := fmt.stop_of(body):
        config["stopSequences"] = stop
    if json_format := fmt.json_schema_of(body):
        config["responseMimeType"] = "application/json"
        if json_format[1] is not None:
            config["responseJsonSchema"] = json_format[1]
    return config


def _tools(body: dict, payload: dict) -> None:
    functions = fmt.functions_of(body)
    if functions:
        payload["tools"] = [{"functionDeclarations": [
            {k: v for k, v in (("name", f.get("name")), ("description", f.get("description")),
                               ("parameters", f.get("parameters"))) if v is not None} for f in functions]}]
    choice = body.get("tool_choice")
    forced = fmt.forced_function(choice)
    if forced:
        payload["toolConfig"] = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [forced]}}
    elif choice in ("auto", "none", "required"):
        mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]
        payload["toolConfig"] = {"functionCallingConfig": {"mode": mode}}


def payload(target, body: dict) -> dict:
    fmt.refuse_unsupported(KIND, body, SUPPORTED)
    system, contents = _contents(body["messages"])
    result: dict = {"contents": contents}
    if system:
        result["systemInstruction"] = {"parts": system}
    _tools(body, result)
    if config := _generation_config(target, body):
        result["generationConfig"] = config
    return result


def chat_request(target, body: dict, request_id: str) -> UpstreamRequest:
    url = _url(target, "streamGenerateContent") + "?alt=sse" if body.get("stream") else _url(target, "generateContent")
    return UpstreamRequest(url, _headers(target, request_id), orjson.dumps(payload(target, body)))


def parse_usage(data: dict) -> Usage | None:
    meta = data.get("usageMetadata") if isinstance(data, dict) else None
    if not isinstance(meta, dict):
        return None
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    # OpenAI counts reasoning inside completion tokens; Gemini reports it apart.
    return Usage(prompt_tokens=int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0),
                 completion_tokens=int(meta.get("candidatesTokenCount") or 0) + thoughts,
                 cached_tokens=int(meta.get("cachedContentTokenCount") or 0), reasoning_tokens=thoughts)


def _candidate(data: dict) -> dict:
    candidates = data.get("candidates") or [{}]
    return candidates[0] if isinstance(candidates[0], dict) else {}


def _finish(candidate: dict, data: dict) -> str | None:
    if not data.get("candidates") and (data.get("promptFeedback") or {}).get("blockReason"):
        return "content_filter"
    reason = candidate.get("finishReason")
    return FINISH_REASONS.get(reason, "stop") if reason else None


def chat_response(target, body: dict, data: dict) -> dict:
    candidate = _candidate(data)
    text, calls, thoughts, signature = [], [], [], ""
    for i, part in enumerate((candidate.get("content") or {}).get("parts") or ()):
        signature = signature or part.get("thoughtSignature") or ""
        if part.get("thought"):
            thoughts.append(part.get("text") or "")
        elif "text" in part:
            text.append(part["text"])
        elif "functionCall" in part:
            call = part["functionCall"]
            calls.append(fmt.tool_call(call.get("id") or f"call_{i}", call.get("name", ""), call.get("args")))
    return fmt.completion(target.upstream_model, "".join(text), calls, _finish(candidate, data) or "stop",
                          parse_usage(data), completion_id=data.get("responseId"), reasoning="".join(thoughts),
                          signature=signature)


class Stream(fmt.ChunkStream):
    """Each streamed GenerateContentResponse to OpenAI chunks; the one with a
    finish reason ends the stream (Gemini sends no end marker of its own)."""

    signed = False  # a thoughtSignature was passed on: the client needs only the first

    def __call__(self, data: bytes) -> StreamEvent:
        response = orjson.loads(data)
        if response.get("error"):
            raise self.failed(data)
        usage = parse_usage(response)
        if usage is not None:
            self.usage = usage
        candidate = _candidate(response)
        chunks = []
        for part in (candidate.get("content") or {}).get("parts") or ():
            if part.get("thought") and part.get("text"):
                chunks.append(self.reasoning(part["text"]))
            if part.get("thoughtSignature") and not self.signed:
                # Before the part it signs: the reasoning it seals is then complete (on /v1/messages,
                # the thinking block closes with its signature before the answer's blocks open).
                self.signed = True
                chunks.append(self.signature(part["thoughtSignature"]))
            if part.get("thought"):
                continue
            if part.get("text"):
                chunks.append(self.text(part["text"]))
            elif "functionCall" in part:
                call = part["functionCall"]
                chunks.append(self.tool_start(call.get("id") or f"call_{self.tool_calls}", call.get("name", ""),
                                              orjson.dumps(call.get("args") or {}).decode()))
        finish = _finish(candidate, response)
        return self.end(finish, chunks) if finish is not None else self.event(chunks)


def chat_stream(target, body: dict, want_usage: bool) -> Stream:
    return Stream(target, want_usage)


def embeddings_request(target, body: dict, request_id: str) -> UpstreamRequest:
    model = f"models/{target.upstream_model}"
    requests = []
    for text in fmt.embedding_texts(KIND, body):
        request = {"model": model, "content": {"parts": [{"text": text}]}}
        if body.get("dimensions"):
            request["outputDimensionality"] = body["dimensions"]
        requests.append(request)
    return UpstreamRequest(_url(target, "batchEmbedContents"), _headers(target, request_id),
                           orjson.dumps({"requests": requests}))


def embeddings_response(target, body: dict, data: dict) -> dict:
    vectors = [e.get("values") or [] for e in data.get("embeddings") or ()]
    # Gemini reports no token counts for embeddings; the gateway estimates them.
    return fmt.embeddings_list(target.upstream_model, vectors, body, None)


def models_request(target) -> UpstreamRequest:
    version = target.settings.get("api_version", "v1beta")
    return UpstreamRequest(f"{target.base_url}/{version}/models", _headers(target, "connection-test"), None,
                           method="GET")


def parse_models(data: dict) -> list[str]:
    return [m["name"].removeprefix("models/") for m in data.get("models") or () if isinstance(m, dict) and "name" in m]


map_error = mapped_error
