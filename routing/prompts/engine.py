"""The template engine: Jinja2's immutable sandbox, cut down to plain names.

A template's text may hold `{{ name }}` and nothing else: no attribute or item access, no
filters, calls, tests, loops, conditions, assignments, includes or macros. That is checked on the
parsed tree when a version is published (a 400 naming what is refused), so rendering only ever
substitutes strings the caller sent for names the version declares; the sandbox and an empty set
of globals stand behind it, should a check ever miss. Jinja2 was chosen over a mustache engine for
its parser (the tree tells exactly which names a text uses, and what else it tries) and its
maintained sandbox.
"""

import functools

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True,
                                     auto_reload=False, cache_size=0)
_env.globals.clear()  # range, lipsum, cycler, ...: a name is a variable or nothing
_env.filters.clear()
_env.tests.clear()
ALLOWED = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name)
# What the refused constructs are called in the message a template's author reads.
REFUSED = {
    nodes.Getattr: "attribute access", nodes.Getitem: "item access", nodes.Call: "a call", nodes.Filter: "a filter",
    nodes.Test: "a test", nodes.For: "a loop", nodes.If: "a condition", nodes.CondExpr: "a condition",
    nodes.Assign: "an assignment", nodes.AssignBlock: "an assignment", nodes.Include: "an include",
    nodes.Import: "an import", nodes.FromImport: "an import", nodes.Macro: "a macro", nodes.Extends: "extends",
    nodes.Block: "a block", nodes.Const: "a literal",
}
MAX_CHARS = 100_000


class TemplateProblem(ValueError):
    """A text that is not a template of plain names; the message says what and where."""


def variables(text: str) -> frozenset[str]:
    """The names `text` uses, after checking it holds nothing but text and `{{ name }}`."""
    if len(text) > MAX_CHARS:
        raise TemplateProblem(f"a message is longer than {MAX_CHARS} characters")
    try:
        tree = _env.parse(text)
    except TemplateSyntaxError as error:
        raise TemplateProblem(f"line {error.lineno}: {error.message}") from None
    names = set()
    for node in tree.find_all(nodes.Node):
        if not isinstance(node, ALLOWED):
            what = next((label for kind, label in REFUSED.items() if isinstance(node, kind)), type(node).__name__)
            raise TemplateProblem(f"line {node.lineno}: {what} is not allowed; only {{{{ name }}}} is")
        if isinstance(node, nodes.Name):
            if node.ctx != "load" or node.name.startswith("_"):
                raise TemplateProblem(f"line {node.lineno}: '{node.name}' is not a variable name")
            names.add(node.name)
    return frozenset(names)


@functools.lru_cache(maxsize=2048)
def _compiled(text: str):
    return _env.from_string(text)


def render(text: str, values: dict[str, str]) -> str:
    """`text` with its names replaced by `values` (checked by `variables` when it was published)."""
    if "{" not in text:
        return text
    return _compiled(text).render(values)
