"""What the guardrails recognise in text: personal data, secrets, blocked terms and patterns.

Each detector returns `Finding`s (a type and a span), never acting on them: the
policy (policies.py) decides whether a finding blocks, is redacted or is only
recorded. Candidates are found in one linear-time RE2 pass (a prompt cannot make
a pattern backtrack), then validated by the libraries that know the formats:
email-validator for addresses, phonenumbers for phone numbers, python-stdnum
for card numbers (Luhn), IBANs (ISO 7064 mod 97) and national ids, the
standard library's ipaddress for IP addresses, and detect-secrets' catalogue
of credential formats (AWS, GitHub, GitLab, Slack, Stripe, OpenAI, JWT,
private keys, ...). A candidate that fails its checksum is not a finding.

Names and postal addresses are not recognised: that needs an entity recogniser
with a trained model, and the registries reached here carry spaCy's English
models only as unofficial re-uploads (the official ones are released outside
PyPI), so none is installed.
"""

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import phonenumbers
import re2
from email_validator import EmailNotValidError, validate_email
from stdnum import iban, luhn
from stdnum.es import dni
from stdnum.fr import nir
from stdnum.gb import nhs
from stdnum.in_ import aadhaar
from stdnum.us import ssn

PII_TYPES = ("email", "phone", "card", "iban", "national_id", "ip")


@dataclass(frozen=True, slots=True)
class Finding:
    type: str  # "email", "secret", "term", ...: the placeholder's name, upper-cased
    start: int
    end: int


# One alternation, tried left to right at each position: IBANs and IPs before the digit runs they
# would otherwise be read as. RE2 finds the candidates in linear time, with no capturing groups
# (google-re2's Match objects cost per group); each candidate, a few dozen characters at most, is
# then named by the first alternative that matches it whole, which is the one RE2 took: an earlier
# one matching there at all would have been taken instead.
_PII_KINDS = (
    ("email", r"[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}\.)+[A-Za-z]{2,24}"),
    ("iban", r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b"),
    ("ipv6", r"(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f:.]*[0-9A-Fa-f]|::[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*"),
    ("ipv4", r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b"),
    ("dni", r"\b[0-9]{8}-?[A-Za-z]\b"),
    ("number", r"\+?\(?[0-9][0-9 ().\-]{5,22}[0-9]\b"),
)
_PII = re2.compile("|".join(f"(?:{pattern})" for _, pattern in _PII_KINDS))
_PII_BYTES = re2.compile(_PII.pattern.encode())
_PII_EACH = {kind: re.compile(pattern) for kind, pattern in _PII_KINDS}


def spans(pattern, pattern_bytes, text: str) -> Iterable[tuple[int, int]]:
    """(start, end) of each match. ASCII text (most prompts) goes to RE2 as bytes, whose offsets are
    the text's own: google-re2's wrapper maps every match's byte offsets back to characters in
    Python for a str, which costs more than the match itself."""
    if text.isascii():
        return (m.span() for m in pattern_bytes.finditer(text.encode()))
    return (m.span() for m in pattern.finditer(text))


def _kind_of(candidate: str) -> str:
    """The first alternative of _PII_KINDS that matches the candidate whole (the one RE2 took),
    told mostly by its characters: only an address has "@", only an IPv6 address ":", only an
    IBAN (of the rest) starts with a letter, only a DNI ends with one."""
    if "@" in candidate:
        kind = "email"
    elif ":" in candidate:
        kind = "ipv6"
    elif candidate[0].isalpha():
        kind = "iban"
    elif candidate[-1].isalpha():
        kind = "dni"
    elif candidate.count(".") == 3:
        kind = "ipv4"
    else:
        return "number"
    return kind if _PII_EACH[kind].fullmatch(candidate) else "number"


_DIGITS_ONLY = re.compile(r"[^0-9]")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}( [0-9]{1,2})?")  # an ISO date is no phone number
_SSN = re.compile(r"[0-9]{3}-[0-9]{2}-[0-9]{4}")
_AADHAAR = re.compile(r"[2-9][0-9]{3} [0-9]{4} [0-9]{4}")
_NHS = re.compile(r"[0-9]{3} [0-9]{3} [0-9]{4}")
_NIR = re.compile(r"[12] ?[0-9]{2} ?[0-9]{2} ?[0-9AB]{2} ?[0-9]{3} ?[0-9]{3} ?[0-9]{2}")


def _email(text: str) -> bool:
    try:
        validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _dotted_on(text: str, start: int, end: int) -> bool:
    """Four numbers inside a longer dotted run (a version 1.2.3.4.5, an OID) are no address."""
    return text[end:end + 1] == "." and text[end + 1:end + 2].isdigit() or \
        text[start - 1:start] == "." and text[start - 2:start - 1].isdigit()


def _number(text: str, region: str) -> str | None:
    """What a run of digits is, if anything: a payment card, a national id or a phone number."""
    if _DATE.fullmatch(text):
        return None  # no card (13 digits or more) nor national id has a date's shape
    digits = _DIGITS_ONLY.sub("", text)
    if 13 <= len(digits) <= 19 and not text.startswith("+") and luhn.is_valid(digits):
        return "card"
    if (_SSN.fullmatch(text) and ssn.is_valid(text)) or (_AADHAAR.fullmatch(text) and aadhaar.is_valid(text)) \
            or (_NHS.fullmatch(text) and nhs.is_valid(text)) or (_NIR.fullmatch(text) and nir.is_valid(text)):
        return "national_id"
    if len(digits) < 7:
        return None
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return "phone" if phonenumbers.is_valid_number(number) else None


# Every alternative of _PII_KINDS needs an ASCII digit, "@" or ":": text with none of them has no
# candidate, told without a call into RE2 (google-re2's wrapper costs microseconds a call; most of a
# stream's text, and much prose, is words).
_PII_NEEDS = b"0123456789@:"
_PII_NEEDS_STR = re.compile("[0-9@:]")


def _no_pii_candidate(text: str) -> bool:
    if text.isascii():
        data = text.encode()
        return len(data.translate(None, _PII_NEEDS)) == len(data)
    return _PII_NEEDS_STR.search(text) is None


def pii(text: str, types: Iterable[str] = PII_TYPES, region: str = "US") -> list[Finding]:
    if _no_pii_candidate(text):
        return []
    wanted = set(types)
    found = []
    for start, end in spans(_PII, _PII_BYTES, text):
        value = text[start:end]
        kind = _kind_of(value)
        if kind == "email":
            kind = "email" if _email(value) else None
        elif kind == "iban":
            kind = "iban" if iban.is_valid(value) else None
        elif kind in ("ipv4", "ipv6"):
            kind = "ip" if _ip(value) and not _dotted_on(text, start, end) else None
        elif kind == "dni":
            kind = "national_id" if dni.is_valid(value) else None
        else:
            kind = _number(value.strip(" ()-."), region)
        if kind in wanted:
            found.append(Finding(kind, start, end))
    return found


# --- secrets ---------------------------------------------------------------------

# Formats detect-secrets names by a regular expression of their own. Its entropy and keyword
# plugins guess from context (and fire on ordinary words in prose); its IP plugin is the PII check's.
_GUESSING = ("Base64 High Entropy String", "Hex High Entropy String", "Secret Keyword", "Public IP (ipv4)")
_PRIVATE_KEY = r"-----BEGIN[A-Z ]{0,30} PRIVATE KEY( BLOCK)?-----(?:[A-Za-z0-9+/=\s:,\-]*?-----END[A-Z ]{0,30} PRIVATE KEY( BLOCK)?-----)?"
_QUIET = re2.Options()
_QUIET.log_errors = False  # a pattern RE2 cannot read is expected here: it goes to Python's engine
_YES_NO = re2.Options()  # for a search that only says whether there is a match: no groups to fill in
_YES_NO.log_errors = False
_YES_NO.never_capture = True


# Assertions RE2 lacks, as detect-secrets writes them: dropped, they leave a pattern that matches
# at least where the original does (a prefilter), confirmed by the original in Python's engine.
_ASSERTIONS = (("(?:(?<=\\W)|(?<=^))", ""), ("(?!\\w)", ""), ("(?![a-zA-Z0-9_\\-])", ""),
               ("(?![a-f0-9])", ""), (",1024}", ",}"))


def _relaxed(pattern: str) -> str:
    for written, relaxed in _ASSERTIONS:
        pattern = pattern.replace(written, relaxed)
    return pattern


@cache
def _secret_patterns() -> tuple:
    """One RE2 alternation of the formats RE2 can read, one of the prefilters of the others (each
    also compiled for bytes: see `spans`), and (RE2 prefilter, Python pattern) for the others."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class  # 0.1 s: once, on first use

    linear, other = [_PRIVATE_KEY], []
    for name, plugin in get_mapping_from_secret_type_to_class().items():
        if name in _GUESSING or name == "Private Key":
            continue
        for pattern in getattr(plugin, "denylist", ()):
            try:
                re2.compile(pattern.pattern, _QUIET)
            except re2.error:
                try:
                    other.append((re2.compile(_relaxed(pattern.pattern), _QUIET), pattern))
                except re2.error:
                    other.append((None, pattern))
            else:
                linear.append(pattern.pattern)
    # One pass says whether any of them may match; one without a prefilter must always run.
    any_other = re2.compile("" if any(p is None for p, _ in other) else
                            "|".join(f"(?:{p.pattern})" for p, _ in other), _QUIET)
    linear = "|".join(f"(?:{p})" for p in linear)
    # Both in one: most text has no secret in it, and one search says so (each RE2 call costs more in
    # google-re2's wrapper than the scan itself).
    either = f"{linear}|{any_other.pattern}" if any_other.pattern else ""
    return (re2.compile(linear, _QUIET), re2.compile(linear.encode(), _QUIET), any_other,
            re2.compile(any_other.pattern.encode(), _YES_NO), tuple(other), re2.compile(either.encode(), _YES_NO))


def secrets(text: str) -> list[Finding]:
    linear, linear_bytes, any_other, any_other_bytes, other, either_bytes = _secret_patterns()
    if either_bytes.pattern and text.isascii() and not either_bytes.search(text.encode()):
        return []
    found = [Finding("secret", start, end) for start, end in spans(linear, linear_bytes, text)]
    if not (any_other_bytes.search(text.encode()) if text.isascii() else any_other.search(text)):
        return found
    for prefilter, pattern in other:
        if prefilter is None or prefilter.search(text):
            found.extend(Finding("secret", m.start(), m.end()) for m in pattern.finditer(text))
    return found


# --- blocked terms and patterns ---------------------------------------------------

class PatternTimeout(Exception):
    """A policy's pattern ran past its time limit (only Python patterns can: RE2 runs in linear time)."""


def compile_terms(terms: list[str]):
    """Whole-word, case-insensitive matching of every term in one RE2 pass; None for no terms."""
    terms = [t.strip() for t in terms if t.strip()]
    if not terms:
        return None
    return re2.compile(r"(?i)\b(?:" + "|".join(re2.escape(t) for t in terms) + r")\b")


def compile_pattern(pattern: str):
    """A policy's regular expression: RE2 (linear time, no stall possible) where it can read it,
    else Python's `re` run under a time limit (backreferences, lookarounds)."""
    try:
        return re2.compile(pattern, _QUIET)
    except re2.error:
        return re.compile(pattern)


async def matches(compiled, text: str, kind: str, time_limit_ms: float) -> list[Finding]:
    """The matches of a term list or pattern; PatternTimeout when a Python pattern runs past its limit."""
    if compiled is None:
        return []
    if isinstance(compiled, re.Pattern):
        from . import sandbox  # deferred: only policies with a pattern RE2 cannot read pay for it

        spans = await sandbox.finditer(compiled.pattern, text, time_limit_ms / 1000)
        if spans is None:
            raise PatternTimeout(compiled.pattern)
        return [Finding(kind, start, end) for start, end in spans]
    return matches_now(compiled, text, kind)


def matches_now(compiled, text: str, kind: str) -> list[Finding]:
    """The matches of a term list or an RE2 pattern (linear time: no limit needed)."""
    if compiled is None:
        return []
    return [Finding(kind, m.start(), m.end()) for m in compiled.finditer(text)]
