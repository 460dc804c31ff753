"""Template expansion as a stage of the request path (INPUT, order 5: after an experiment picked the
variant, before the guardrails see the prompt, so they check the text as sent upstream).

A call naming a template (`prompt` on the Responses API, `gateway_prompt` on chat completions and
Anthropic messages: routing/front/validation.py `take_prompt`) gets the version's messages, filled
with its variables, before its own, and the version's parameters where the request set none; a
request without a model takes the version's. Missing or unknown variables are a 400 naming them.

On /v1/messages and /v1/responses the expansion is written into the client's own request (native.py) and
the chat form made again from it, so that a call to an Anthropic or a native Responses deployment keeps its
native path, every field the chat form lacks included.
"""

from gateway_project.lib import errors
from routing.front import stages, validation

from . import engine, lookup, native

LIMIT_NAMES = ("max_tokens", "max_completion_tokens")
COUNTING = ("messages.count_tokens", "responses.input_tokens")


def checked_values(version: lookup.Version, values: dict[str, str], param: str) -> dict[str, str]:
    missing = sorted(version.variables - set(values))
    extra = sorted(set(values) - version.variables)
    where = f"prompt template '{version.template}' version {version.number}"
    if missing:
        raise errors.bad_request(f"Missing variables for {where}: {', '.join(missing)}.", param=f"{param}.variables",
                                 code="missing_variables")
    if extra:
        raise errors.bad_request(f"Unknown variables for {where}: {', '.join(extra)} (it takes "
                                 f"{', '.join(sorted(version.variables)) or 'none'}).", param=f"{param}.variables",
                                 code="unknown_variables")
    return values


def expand(body: dict, version: lookup.Version, values: dict[str, str]) -> None:
    rendered = [{"role": m["role"], "content": engine.render(m["content"], values)} for m in version.messages]
    body["messages"] = rendered + list(body.get("messages") or ())
    for name, value in version.parameters.items():
        if name in LIMIT_NAMES and any(body.get(n) is not None for n in LIMIT_NAMES):
            continue
        if body.get(name) is None:
            body[name] = value


def expand_native(call, form: str, version: lookup.Version, values: dict[str, str]) -> None:
    native.messages(call, form, native.render(version, values))
    if call.endpoint not in COUNTING:  # a count takes the prompt only (Anthropic's refuses sampling fields)
        native.parameters(call, form, version.parameters, override=False)
    state = call.front_state
    if call.chat_only and getattr(state, "native_only", False):
        raise errors.bad_request(f"The prompt template '{version.template}' version {version.number} sets "
                                 f"{', '.join(sorted(call.chat_only))}, which the Responses API has no field for, "
                                 "and the request needs a native deployment (a built-in tool).",
                                 param=f"{call.prompt['param']}.id", code="unsupported_parameter")


class Expand(stages.Stage):
    name = "prompt-templates"
    order = 5
    native = True  # expanded into the client's own request on /v1/messages and /v1/responses

    def applies(self, call) -> bool:
        return call.prompt is not None

    async def on_request(self, call, front):
        ref = call.prompt
        version = await lookup.version_for(call.key.tenant_id, ref)
        values = checked_values(version, ref["variables"], ref["param"])
        form = native.form_of(call, front)
        if form:
            expand_native(call, form, version, values)
        else:
            expand(call.body, version, values)
        if not call.model:
            if not version.model:
                raise errors.bad_request(f"You must provide a model parameter: the prompt template '{version.template}'"
                                         f" version {version.number} names none.", param="model",
                                         code="missing_required_parameter")
            call.model = call.body["model"] = version.model
        call.prompt_template, call.prompt_version = version.template, version.number
        call.prompt_counted = None
        if form:
            call.front_state.body["model"] = call.body["model"] = call.model
            front.rebuild(call)
        else:
            call.body = validation.chat(call.body)
        return None


def register() -> None:
    stages.register(stages.INPUT, Expand())
