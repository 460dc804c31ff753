"""What the mock model answers, whatever wire format asked: words, a tool call,
a JSON object or a refusal, with token counts. Each format module turns a
request into an Ask and the Answer into its own JSON or stream.

A test scripts an agent's turns with knobs: `tool` picks the offered tool to
call, `tool_args` gives its arguments verbatim (`tool_input` a custom tool's
text); once the last message is a tool result the model answers in words, so
the first turn is the scripted call and the next the final text."""

import base64
import hashlib
from dataclasses import dataclass, field

import orjson

from .server import KnobError

WORDS = ("mock", "reply", "from", "the", "gateway", "test", "upstream", "with", "some", "words")
REFUSAL = "I'm sorry, but I cannot help with that request."
THOUGHTS = ("thinking", "it", "over", "step", "by", "step")


@dataclass
class Ask:
    texts: list[str]  # the text of every message (system included), for prompt token counts
    # [{"name": ..., "parameters": JSON schema}], with "type": "custom" for a Responses freeform tool
    tools: list[dict] = field(default_factory=list)
    tool_choice: str | None = None  # None/"auto", "none", "required", or a function name
    after_tool: bool = False  # the last message is a tool result: answer in words
    json_schema: dict | None = None  # {} asks for any JSON object
    max_tokens: int | None = None
    reasoning: bool = False  # the request asks to see the model's reasoning


@dataclass
class Answer:
    pieces: list[str]  # text in stream-sized pieces
    tool_name: str = ""
    tool_arguments: dict | None = None
    tool_input: str | None = None  # a custom tool's call carries text instead of arguments
    tool_pieces: list[str] = field(default_factory=list)  # the arguments' JSON text (or the input), in pieces
    refusal: bool = False  # the pieces are a refusal (formats without a refusal field show them as text)
    finish: str = "stop"  # stop, length or tool
    prompt_tokens: int = 0
    completion_tokens: int = 0  # visible output, reasoning not included
    cached_tokens: int = 0  # of the prompt tokens, read from the cache
    cache_write_tokens: int = 0  # of the prompt tokens, written to the cache for 5 minutes
    cache_write_1h_tokens: int = 0  # and for 1 hour
    reasoning_tokens: int = 0
    # The reasoning text in pieces, one per reasoning token, when the request asks for it
    # and the reasoning_tokens knob is set.
    reasoning: list[str] = field(default_factory=list)

    @property
    def cache_written(self) -> int:
        return self.cache_write_tokens + self.cache_write_1h_tokens

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def thoughts(self) -> str:
        return "".join(self.reasoning)


def signature(text: str) -> str:
    """The mock's signature of a reasoning text, as opaque as a provider's, and checkable when sent back."""
    return base64.b64encode(b"mocksig:" + hashlib.sha256(text.encode()).digest()[:12]).decode()


def signed(value: str, text: str | None = None) -> bool:
    """Whether `value` is a signature the mock gave (of `text`, when given)."""
    if text is not None:
        return value == signature(text)
    try:
        return base64.b64decode(value, validate=True).startswith(b"mocksig:")
    except ValueError:
        return False


def prompt_tokens(texts: list[str]) -> int:
    """Deterministic: words in every message plus 3 per message."""
    return sum(3 + len(t.split()) for t in texts)


def _value(schema: dict):
    if not isinstance(schema, dict):
        return "mock"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        return example_object(schema)
    return {"integer": 1, "number": 1, "boolean": True, "array": [], "null": None}.get(kind, "mock")


def example_object(schema: dict) -> dict:
    """An object satisfying `schema`'s required properties (all of them when none are required)."""
    properties = schema.get("properties") or {}
    names = schema.get("required") or list(properties)
    return {name: _value(properties.get(name, {})) for name in names}


def split(text: str, size: int = 8) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def pieces_of(text: str) -> list[str]:
    """`text` in word pieces, each after the first with its leading space."""
    words = text.split(" ")
    return words[:1] + [" " + word for word in words[1:]]


def _words(count: int) -> list[str]:
    return [(WORDS[i % len(WORDS)] if i == 0 else " " + WORDS[i % len(WORDS)]) for i in range(count)]


def _tool(ask: Ask, knobs: dict) -> dict | None:
    if not ask.tools or ask.tool_choice == "none" or ask.after_tool:
        return None
    if wanted := knobs.get("tool"):
        if tool := next((t for t in ask.tools if t["name"] == wanted), None):
            return tool
        raise KnobError(f"tool={wanted}, but the request offers no tool of that name")
    return next((t for t in ask.tools if t["name"] == ask.tool_choice), ask.tools[0])


def _call(result: Answer, tool: dict, knobs: dict) -> Answer:
    result.tool_name = tool["name"]
    if tool.get("type") == "custom":
        result.tool_input = knobs.get("tool_input", "mock")
        result.tool_pieces = split(result.tool_input)
    else:
        args = knobs.get("tool_args")
        result.tool_arguments = example_object(tool.get("parameters") or {}) if args is None else args
        result.tool_pieces = split(orjson.dumps(result.tool_arguments).decode())
    result.finish = "tool"
    result.completion_tokens = len(result.tool_pieces)
    return result


def answer(ask: Ask, knobs: dict) -> Answer:
    result = Answer(pieces=[], prompt_tokens=prompt_tokens(ask.texts), cached_tokens=knobs.get("cached_tokens", 0),
                    cache_write_tokens=knobs.get("cache_write_tokens", 0),
                    cache_write_1h_tokens=knobs.get("cache_write_1h_tokens", 0),
                    reasoning_tokens=knobs.get("reasoning_tokens", 0))
    result.prompt_tokens = max(result.prompt_tokens, result.cached_tokens + result.cache_written)
    if ask.reasoning:
        result.reasoning = [(" " if i else "") + THOUGHTS[i % len(THOUGHTS)] for i in range(result.reasoning_tokens)]
    if knobs.get("refusal"):
        result.refusal = True
        result.pieces = pieces_of(REFUSAL)
    elif tool := _tool(ask, knobs):
        return _call(result, tool, knobs)
    elif "say" in knobs:
        result.pieces = split(knobs["say"], 4)  # small pieces: a test's text is split across chunks
    elif ask.json_schema is not None:
        value = example_object(ask.json_schema) if ask.json_schema else {"answer": "".join(_words(3))}
        result.pieces = split(orjson.dumps(value).decode())
    else:
        count = max(0, knobs["chunks"])
        if ask.max_tokens and 0 < ask.max_tokens < count:
            count, result.finish = ask.max_tokens, "length"
        result.pieces = _words(count)
    result.completion_tokens = len(result.pieces)
    return result
