"""A template's expansion and an experiment's parameters in a front's own form, for calls that may go natively.

/v1/messages and /v1/responses keep the client's request (`call.front_state`) so that a call to an Anthropic or
a native Responses deployment gets it as sent (routing/front/messages.py, responses.py). The template stage
and the experiment stage write into that request, and the front makes the chat form again from it
(`Front.rebuild`), so either path sees the same prompt:

- Anthropic's Messages API: the version's system messages go before the request's `system`, its other
  messages before `messages`.
- The Responses API: its system and developer messages go before `instructions`, its other messages before
  the conversation (as items of the stored history: a stored response's input stays the client's own).

Parameters with a native name are set under it (`NATIVE`); one with none (a seed on Anthropic's API, say) is
kept in `call.chat_only`, which sends that call through the chat form, where it is carried.
"""

from . import engine

SYSTEM_ROLES = ("system", "developer")
LIMITS = ("max_tokens", "max_completion_tokens")
# The chat form's parameter -> (the native field, how its value is written), per front.
NATIVE = {
    "messages": {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens",
                 "max_completion_tokens": "max_tokens", "stop": "stop_sequences"},
    "responses": {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_output_tokens",
                  "max_completion_tokens": "max_output_tokens", "reasoning_effort": "reasoning"},
}


def form_of(call, front) -> str:
    """The front whose own request the stages write into ("messages", "responses"), or "" (the chat form only)."""
    if front is None or front.rebuild is None or front.endpoint not in NATIVE:
        return ""
    return front.endpoint


def _value(name: str, value, current):
    if name == "stop_sequences":
        return [value] if isinstance(value, str) else list(value)
    if name == "reasoning":
        return {**(current if isinstance(current, dict) else {}), "effort": value}
    return value


def _is_set(body: dict, native: str) -> bool:
    if native == "reasoning":
        return isinstance(body.get("reasoning"), dict) and body["reasoning"].get("effort") is not None
    return body.get(native) is not None


def parameters(call, form: str, values: dict, override: bool) -> None:
    """Set `values` (chat-form names) on the client's own request; `override` False: only those it set none of."""
    body, names = call.front_state.body, NATIVE[form]
    for name, value in values.items():
        native = names.get(name)
        if native is None:
            if override or call.body.get(name) is None:
                call.chat_only[name] = value
            continue
        if override or not _is_set(body, native):
            body[native] = _value(native, value, body.get(native))


def messages(call, form: str, rendered: list[dict]) -> None:
    """Put a version's rendered messages before the request's own."""
    state = call.front_state
    system = "\n\n".join(m["content"] for m in rendered if m["role"] in SYSTEM_ROLES)
    turns = [m for m in rendered if m["role"] not in SYSTEM_ROLES]
    if form == "messages":
        body = state.body
        if system:
            own = body.get("system")
            if isinstance(own, list):
                body["system"] = [{"type": "text", "text": system}, *own]
            else:
                body["system"] = f"{system}\n\n{own}" if own else system
        body["messages"] = [{"role": m["role"], "content": m["content"]} for m in turns] + list(body["messages"])
        return
    if system:
        own = state.body.get("instructions")
        state.body["instructions"] = f"{system}\n\n{own}" if isinstance(own, str) and own else system
    items = [{"type": "message", "role": m["role"], "content": m["content"]} for m in turns]
    state.history = items + state.history


def render(version, values: dict[str, str]) -> list[dict]:
    return [{"role": m["role"], "content": engine.render(m["content"], values)} for m in version.messages]
