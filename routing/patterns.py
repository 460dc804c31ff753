"""Route rule patterns (rule kind `regex`), run by RE2 in time linear in the prompt.

A tenant admin writes these patterns, and every tenant's calls share the
worker that evaluates them: under Python's backtracking `re`, `^(a+)+$` held
a worker for seconds on a 28-character prompt, and each character doubled it.
RE2 never backtracks, so no pattern can do that. It refuses what needs
backtracking (backreferences, lookahead and lookbehind): such patterns are
refused when the rule is saved, with RE2's reason.

Each pattern is compiled once per process (`compiled`, cached); its length and
the memory RE2 may give its program are bounded, so a pattern is cheap to keep.
"""

import functools
import logging
from typing import Any

import re2

log = logging.getLogger(__name__)

MAX_LENGTH = 300  # characters of a pattern
MAX_PROGRAM_BYTES = 1 << 20  # memory RE2 may use for one compiled pattern


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is the admin's answer, not a line on stderr
    options.max_mem = MAX_PROGRAM_BYTES
    return options


def problem(pattern: str) -> str | None:
    """Why `pattern` cannot be a rule's pattern, in words for the admin; None when it can."""
    if len(pattern) > MAX_LENGTH:
        return f"A pattern has at most {MAX_LENGTH} characters (RE2 compiles each once); this one has {len(pattern)}."
    try:
        re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        return (f"Not a pattern the gateway can run: {reason}. Rule patterns run on RE2, in time linear "
                "in the prompt, which has no backreferences (\\1), lookahead or lookbehind ((?=...), "
                "(?<=...)), possessive quantifiers or \\Z (use \\z).")
    return None


@functools.lru_cache(maxsize=1024)
def compiled(pattern: str) -> Any:
    """The compiled pattern (RE2's, with `search` as `re`'s); None, which never matches, for a
    pattern saved before patterns were checked that RE2 refuses: logged once per process."""
    if (reason := problem(pattern)) is not None:
        log.warning("route rule pattern %r never matches: %s", pattern[:100], reason)
        return None
    return re2.compile(pattern, _options())
