"""Google Gemini: POST /{version}/models/{model}:generateContent, :streamGenerateContent
(?alt=sse), :batchEmbedContents, :embedContent; GET /{version}/models.

With generationConfig.thinkingConfig.includeThoughts and the reasoning_tokens knob set, the
answer opens with `thought: true` parts and signs itself (thoughtSignature on the function call,
or on the last text part). With thinking asked for, a request is refused as Gemini 3 refuses it
when a function call of the current turn comes back without its signature, or when a signature
is not the mock's; and so is a thinkingConfig with both a budget and a level.
"""

import time

import orjson

from .answers import Answer, Ask, answer, signature, signed
from .openai import dimensions, vector
from .server import Request, count_served, send_json, send_stream, sse

STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
            429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool": "STOP"}
MODELS = ("mock-gemini", "mock-text-embed")


def error_body(status: int, key: str = "", message: str | None = None) -> dict:
    message = message or (f"API key not valid: {key}. Please pass a valid API key." if status in (400, 401) and key
                          else f"Mock Gemini failed with {status}.")
    return {"error": {"code": status, "message": message, "status": STATUSES.get(status, "UNKNOWN")}}


def stream_error(message: str) -> bytes:
    return sse({"error": {"code": 500, "message": message, "status": "INTERNAL"}})


def _texts(parts) -> str:
    texts = []
    for part in parts or ():
        if "text" in part:
            texts.append(part["text"])
        elif "functionResponse" in part:
            texts.append(orjson.dumps(part["functionResponse"].get("response")).decode())
    return " ".join(texts)


def user_text(body: dict) -> str:
    """The last user turn's own text (a turn of function responses only is the tools speaking)."""
    for content in reversed(body.get("contents") or []):
        if isinstance(content, dict) and content.get("role", "user") == "user":
            texts = [p["text"] for p in content.get("parts") or () if isinstance(p, dict) and "text" in p]
            if texts:
                return " ".join(texts)
    return ""


def ask_of(body: dict) -> Ask:
    contents = body.get("contents") or []
    texts = [_texts((body.get("systemInstruction") or {}).get("parts"))] if body.get("systemInstruction") else []
    texts += [_texts(c.get("parts")) for c in contents]
    after_tool = bool(contents) and any("functionResponse" in p for p in contents[-1].get("parts") or ())
    # Google's JSON parser takes field names in camelCase and in snake_case alike.
    tools = [{"name": f["name"], "parameters": f.get("parameters") or f.get("parametersJsonSchema")
              or f.get("parameters_json_schema") or {}}
             for t in body.get("tools") or () for f in t.get("functionDeclarations") or ()]
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode, allowed = calling.get("mode"), calling.get("allowedFunctionNames") or []
    choice = {"ANY": allowed[0] if allowed else "required", "NONE": "none"}.get(mode)
    config = body.get("generationConfig") or {}
    schema = None
    if config.get("responseMimeType") == "application/json":
        schema = config.get("responseJsonSchema") or config.get("responseSchema") or {}
    thinking = _thinking(body)
    return Ask(texts=texts, tools=tools, tool_choice=choice, after_tool=after_tool, json_schema=schema,
               max_tokens=config.get("maxOutputTokens"),
               reasoning=bool(thinking.get("includeThoughts")) and thinking.get("thinkingBudget") != 0)


def _thinking(body: dict) -> dict:
    """generationConfig.thinkingConfig, its names in camelCase (Google's SDKs send snake_case)."""
    config = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
    return {"".join(w if i == 0 else w.title() for i, w in enumerate(k.split("_"))): v for k, v in config.items()}


def thinking_error(body: dict) -> str | None:
    """What Gemini says of a request's thought signatures and thinking config, None when they are fine."""
    thinking = _thinking(body)
    if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
        return "You can only set only one of thinking budget and thinking level."
    contents = body.get("contents") or []
    # The current turn: everything after the last user message that is not a function response.
    start = max((i for i, c in enumerate(contents) if c.get("role", "user") == "user"
                 and not any("functionResponse" in p for p in c.get("parts") or ())), default=0)
    for i, content in enumerate(contents):
        parts = content.get("parts") or ()
        for j, part in enumerate(parts):
            if part.get("thoughtSignature") and not signed(part["thoughtSignature"]):
                return f"Corrupted thought signature at contents[{i}].parts[{j}]."
        calls = [p for p in parts if "functionCall" in p]
        if i > start and thinking.get("includeThoughts") and calls and not calls[0].get("thoughtSignature"):
            return (f"Function call is missing a thought_signature in functionCall parts. This is required for "
                    f"tools to work correctly. Additional data, function call `default_api:"
                    f"{calls[0]['functionCall'].get('name')}` , position {i + 1}.")
    return None


def _usage(a: Answer, final: bool) -> dict:
    usage = {"promptTokenCount": a.prompt_tokens, "promptTokensDetails": [
        {"modality": "TEXT", "tokenCount": a.prompt_tokens}]}
    if final:
        count_served(a.prompt_tokens, a.completion_tokens + a.reasoning_tokens)
        usage["candidatesTokenCount"] = a.completion_tokens
        usage["totalTokenCount"] = a.prompt_tokens + a.completion_tokens + a.reasoning_tokens
        if a.reasoning_tokens:
            usage["thoughtsTokenCount"] = a.reasoning_tokens
    else:
        usage["totalTokenCount"] = a.prompt_tokens
    if a.cached_tokens:
        usage["cachedContentTokenCount"] = a.cached_tokens
    return usage


def _response(model: str, parts: list[dict], a: Answer, finish: bool, no_usage: bool) -> dict:
    candidate = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = FINISH[a.finish]
    result = {"candidates": [candidate], "modelVersion": model, "responseId": f"mock{int(time.time() * 1e3)}"}
    if not no_usage:
        result["usageMetadata"] = _usage(a, finish)
    return result


async def generate(req: Request) -> None:
    model, method = req.match.group("model"), req.match.group("method")
    if not isinstance(req.body.get("contents"), list) or not req.body["contents"]:
        await send_json(req.send, 400, {"error": {"code": 400, "message": "* GenerateContentRequest.contents: "
                                                  "contents is not specified", "status": "INVALID_ARGUMENT"}})
        return
    if error := thinking_error(req.body):
        await send_json(req.send, 400, {"error": {"code": 400, "message": error, "status": "INVALID_ARGUMENT"}})
        return
    a = answer(ask_of(req.body), req.knobs)
    no_usage = bool(req.knobs.get("no_usage"))
    signed_by = {"thoughtSignature": signature(a.thoughts)} if a.reasoning else {}
    call = {"functionCall": {"name": a.tool_name, "args": a.tool_arguments}, **signed_by}
    if method == "generateContent":
        thoughts = [{"text": a.thoughts, "thought": True}] if a.reasoning else []
        parts = thoughts + ([call] if a.tool_name else [{"text": a.text, **signed_by}])
        await send_json(req.send, 200, _response(model, parts, a, True, no_usage))
        return

    def frames():
        for piece in a.reasoning:
            yield sse(_response(model, [{"text": piece, "thought": True}], a, False, no_usage)), True
        if a.tool_name:
            yield sse(_response(model, [call], a, False, no_usage)), True
        for piece in a.pieces:
            yield sse(_response(model, [{"text": piece}], a, False, no_usage)), True
        # A text answer's signature comes on its last part, here the empty one closing the stream.
        last = {} if a.tool_name else signed_by
        yield sse(_response(model, [{"text": "", **last}], a, True, no_usage)), False

    await send_stream(req, frames())


async def embed(req: Request) -> None:
    method = req.match.group("method")
    requests = req.body.get("requests") if method == "batchEmbedContents" else [req.body]
    if not isinstance(requests, list) or not requests:
        await send_json(req.send, 400, error_body(400))
        return
    vectors = []
    for request in requests:
        text = _texts((request.get("content") or {}).get("parts"))
        dims = dimensions(request.get("outputDimensionality"), 768)
        if dims is None:
            await send_json(req.send, 400, error_body(400))
            return
        vectors.append({"values": vector(text.encode(), dims)})
    await send_json(req.send, 200, {"embeddings": vectors} if method == "batchEmbedContents" else
                    {"embedding": vectors[0]})


async def models(req: Request) -> None:
    await send_json(req.send, 200, {"models": [
        {"name": f"models/{m}", "version": "001", "displayName": m, "inputTokenLimit": 1_048_576,
         "outputTokenLimit": 8192, "supportedGenerationMethods": ["generateContent", "countTokens"]}
        for m in MODELS]})
