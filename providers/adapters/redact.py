"""Keeping a provider's credentials out of what an upstream says when it fails.

An upstream's error text reaches the client (JSON errors and errors inside a
stream), the admin's test connection, the health checks, the breakers' log and
traces. Upstreams echo what they were sent: the key whole or masked, the
Authorization header, base64 in a Basic header. So every error text passes
through `clean` before anything else sees it, and `clean` keeps one invariant:

    what it returns holds no run of MIN_RUN or more consecutive characters of
    a secret, in any letter case, as is, percent-encoded, JSON- or
    HTML-escaped, hex, or base64/base64url of the secret alone or inside a
    longer value (`user:key`, whatever the alignment).

A run found in the text as it stands is replaced by "***"; a run that only
shows once the text is decoded (%xx, \\uXXXX, &#NN;) cannot be cut out cleanly,
so the text is withheld whole: `clean` returns None and the caller says
something generic naming the provider and the status.

Why MIN_RUN = 8: providers that mask a key in their own errors keep a short
prefix and the last four characters ("sk-proj-****abcd"); fewer than eight
consecutive characters of a 32-plus-character key leave well over 100 bits
unknown. Eight characters of a random key almost never occur in ordinary
text by chance, so legitimate messages are not mangled; shorter runs
(base64's four-character groups) would match ordinary words.

It runs on error paths only, never per stream chunk: a few microseconds for
a typical message once a key's runs are cached, about a millisecond at most
for an error page (only its first SCAN_CHARS are read, KEEP_CHARS kept).
"""

import base64
import functools
import html
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote_plus

import orjson

MIN_RUN = 8
SCAN_CHARS = 2000
KEEP_CHARS = 500
MASK = "***"

# Letter case folded without changing any position (str.lower may lengthen non-ASCII text).
_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_URLSAFE = str.maketrans("+/", "-_")
# Anything else that looks like a credential, whoever's it is.
_SECRET_LIKE = re.compile(r"(sk|key|token)[-_][A-Za-z0-9_\-]{6,}", re.IGNORECASE)
_UNICODE_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
# Header names whose values in a provider's extra_headers are credentials too.
_CREDENTIAL_HEADER = re.compile(r"auth|key|token|secret|cookie|password", re.IGNORECASE)


def secrets_of(target) -> list[str]:
    """The credentials the gateway sends a target: its key and any credential-like extra header."""
    found = [target.api_key] if target.api_key else []
    for name, value in (target.extra_headers or {}).items():
        if _CREDENTIAL_HEADER.search(name) and len(value) >= MIN_RUN:
            found.append(value.removeprefix("Bearer ").removeprefix("Basic "))
    return found


def _forms(secret: str) -> set[str]:
    """The secret as an upstream may write it back, letter case folded."""
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), quote_plus(secret), orjson.dumps(secret).decode()[1:-1], raw.hex()}
    for skip in range(3):
        # Base64 of the secret inside a longer value (`user:key`) is these characters, whatever
        # came before it: from its first byte on a 3-byte boundary, the groups it fills alone.
        part = raw[skip:]
        encoded = base64.b64encode(part).decode()[: len(part) // 3 * 4]
        forms.update((encoded, encoded.translate(_URLSAFE)))
    shortest = min(MIN_RUN, len(secret))
    return {form.translate(_FOLD) for form in forms if len(form) >= shortest}


def _runs(secrets: Iterable[str]) -> dict[int, frozenset[str]]:
    return _runs_of(tuple(s for s in secrets if s))


# Cached: an outage makes every call an error path. What it holds is derived from keys the
# process holds anyway (the routing table), and it never leaves the process.
@functools.lru_cache(maxsize=256)
def _runs_of(secrets: tuple[str, ...]) -> dict[int, frozenset[str]]:
    """Run length -> every run of that length of every form of every secret."""
    runs: dict[int, set[str]] = {}
    for secret in secrets:
        for form in _forms(secret):
            n = min(MIN_RUN, len(form))
            runs.setdefault(n, set()).update(form[i : i + n] for i in range(len(form) - n + 1))
    return {n: frozenset(found) for n, found in runs.items()}


def _covered(text: str, runs: dict[int, frozenset[str]]) -> bytearray:
    folded = text.translate(_FOLD)
    covered = bytearray(len(text))
    for n, found in runs.items():
        for i in range(len(folded) - n + 1):
            if folded[i : i + n] in found:
                covered[i : i + n] = b"\1" * n
    return covered


def _masked(text: str, covered: bytearray) -> str:
    out, i = [], 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append(MASK)
        else:
            start = i
            while i < len(text) and not covered[i]:
                i += 1
            out.append(text[start:i])
    return "".join(out)


def _decoded_views(text: str) -> list[str]:
    views = []
    if "%" in text or "+" in text:
        views.append(unquote_plus(text))
    if "\\" in text:
        views.append(_UNICODE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text).replace("\\/", "/"))
    if "&" in text:
        views.append(html.unescape(text))
    return views


def holds(text: str, secrets: Iterable[str]) -> bool:
    """Whether text holds any form of any secret, as it stands or once decoded."""
    runs = _runs(secrets)
    return bool(runs) and any(any(_covered(view, runs)) for view in (text, *_decoded_views(text)))


def clean(text: str, secrets: Iterable[str]) -> str | None:
    """Text with every form of the secrets masked, cut to KEEP_CHARS; None when it must be withheld whole."""
    runs = _runs(secrets)
    text = text[:SCAN_CHARS]
    if runs:
        covered = _covered(text, runs)
        if any(covered):
            text = _masked(text, covered)
        if any(any(_covered(view, runs)) for view in _decoded_views(text)):
            return None
    return _SECRET_LIKE.sub(r"\1-***", text)[:KEEP_CHARS]


def withheld(status: int | str) -> str:
    """The generic text in place of an upstream message that cannot be relayed."""
    when = f"status {status}" if isinstance(status, int) else status
    return f"its message ({when}) was withheld because it echoed the gateway's credentials"


def clean_or_withheld(text: str, secrets: Iterable[str], status: int | str) -> str:
    cleaned = clean(text, secrets)
    return withheld(status) if cleaned is None else cleaned
