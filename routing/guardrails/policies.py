"""A call's guardrail checks: found from the policies in one in-process table, run in order.

The table (every active policy and its checks, compiled) reloads when a policy
changes (config_cache "guardrails"), so a call's checks cost no database query.
Running a check on text gives findings; the check's action decides: `block`
refuses the call (code content_policy_violation, naming the check, never the
text), `redact` replaces each finding with a typed placeholder ([EMAIL_1]),
`flag` lets it pass. A check that fails (a webhook that hangs, a pattern past
its time limit) refuses the call under failure mode `closed` and passes it,
recorded, under `open`. What each check did goes into the usage record:
counts by type, never the matched text.
"""

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field

from gateway_project.lib import config_cache, errors, metrics

from . import detectors

log = logging.getLogger(__name__)
LOCAL = ("pii", "secrets", "terms", "regex")
_PLACEHOLDER = re.compile(r"\[[A-Z_]+_[0-9]+\]")


@dataclass(frozen=True, slots=True)
class Check:
    label: str  # "<policy>/<kind>#<n>": how a refusal and the record name it
    kind: str
    input: bool
    output: bool
    action: str
    closed: bool
    timeout_ms: int
    pii_types: tuple[str, ...] = ()
    phone_region: str = "US"
    compiled: tuple = ()  # terms: one RE2 pattern; regex: each pattern
    model: str = ""
    categories: tuple[str, ...] = ()
    url: str = ""
    secret: str = ""
    allow_private_network: bool = False

    @property
    def local(self) -> bool:
        return self.kind in LOCAL


@dataclass(frozen=True, slots=True)
class Policy:
    api_key_id: int | None
    route: str
    restore: bool
    hold_back: int
    checks: tuple[Check, ...]


@dataclass(frozen=True, slots=True)
class Resolved:
    """The checks that apply to one call."""

    input: tuple[Check, ...]
    output: tuple[Check, ...]
    restore: bool
    hold_back: int
    # Worked out once here rather than for every stream: the local output checks, and whether a check
    # on output sees the answer only whole (moderation, webhook).
    output_local: tuple[Check, ...] = field(init=False)
    holds_all: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_local", tuple(c for c in self.output if c.local))
        object.__setattr__(self, "holds_all", len(self.output_local) < len(self.output))


class CheckFailed(Exception):
    """A check could not give an answer (timeout, error status, unreachable)."""


def _compile(check) -> tuple:
    if check.kind == "terms":
        return (detectors.compile_terms(check.terms or []),)
    if check.kind == "regex":
        return tuple(detectors.compile_pattern(p) for p in check.patterns or ())
    return ()


def _check(policy, check, n: int) -> Check:
    return Check(
        label=f"{policy.name}/{check.kind}#{n}", kind=check.kind, input=check.stage in ("input", "both"),
        output=check.stage in ("output", "both"), action=check.action, closed=check.failure_mode == "closed",
        timeout_ms=check.timeout_ms, pii_types=tuple(check.pii_types or detectors.PII_TYPES),
        phone_region=check.phone_region or "US", compiled=_compile(check), model=check.model,
        categories=tuple(check.categories or ()), url=check.url, secret=check.secret(),
        allow_private_network=check.allow_private_network)


def load() -> dict[int, tuple[Policy, ...]]:
    """Every active policy by tenant (sync, ORM): the tenant's, then its routes', then its keys'."""
    from .models import GuardrailPolicy  # deferred: this module loads before the app registry is ready

    table: dict[int, list[Policy]] = {}
    rows = GuardrailPolicy.objects.filter(is_active=True).prefetch_related("checks")
    for row in sorted(rows, key=lambda p: (p.tenant_id, p.api_key_id is not None, bool(p.route), p.id)):
        checks = tuple(_check(row, c, n) for n, c in enumerate(row.checks.all(), 1))
        table.setdefault(row.tenant_id, []).append(
            Policy(row.api_key_id, row.route, row.restore, row.hold_back_chars, checks))
    return {tenant: tuple(policies) for tenant, policies in table.items()}


_table = config_cache.Reloaded("guardrails", load, "guardrail policies")


def may_apply(tenant_id: int) -> bool:
    """Without waiting: False only when the table is loaded, current and has nothing for the tenant."""
    value = _table.value
    if value is None or _table.generation != config_cache.generation("guardrails"):
        return True
    return tenant_id in value


async def resolve(key, route: str) -> Resolved | None:
    """The checks for a call by `key` to `route`, worked out once per table (per key and route)."""
    table = await _table.get()
    if _resolved.get("table") is not table:
        _resolved.clear()
        _resolved["table"] = table
    at = (key.id, route)
    if at in _resolved:
        return _resolved[at]
    if len(_resolved) > 10_000:  # routes are the tenant's own names, keys its own keys: a bound for safety
        _resolved.clear()
        _resolved["table"] = table
    _resolved[at] = found = _resolve(table.get(key.tenant_id, ()), key.id, route)
    return found


_resolved: dict = {}


def _resolve(policies: tuple[Policy, ...], key_id: int, route: str) -> Resolved | None:
    policies = [p for p in policies
                if (p.api_key_id is None or p.api_key_id == key_id) and (not p.route or p.route == route)]
    if not policies:
        return None
    checks = [c for p in policies for c in p.checks]
    return Resolved(tuple(c for c in checks if c.input), tuple(c for c in checks if c.output),
                    any(p.restore for p in policies), max(p.hold_back for p in policies))


# --- running checks ----------------------------------------------------------------

@dataclass(slots=True)
class Vault:
    """The values redacted from one call's prompt, by placeholder, for `restore`."""

    values: dict[str, str] = field(default_factory=dict)
    by_value: dict[tuple[str, str], str] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)

    def placeholder(self, kind: str, value: str) -> str:
        if (known := self.by_value.get((kind, value))) is not None:
            return known
        self.counts[kind] += 1
        name = f"[{kind.upper()}_{self.counts[kind]}]"
        self.values[name], self.by_value[(kind, value)] = value, name
        return name

    def restore(self, text: str) -> str:
        if not self.values or "[" not in text:
            return text
        return _PLACEHOLDER.sub(lambda m: self.values.get(m.group(), m.group()), text)


@dataclass(slots=True)
class Decisions:
    """What the checks did to one call, as its usage record keeps it."""

    checks: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, check: Check, stage: str, action: str, findings: dict, started: float,
            error: str = "") -> None:
        elapsed = time.perf_counter() - started
        self.seconds += elapsed
        entry = {"check": check.label, "kind": check.kind, "stage": stage, "action": action,
                 "findings": dict(findings), "ms": _ms(elapsed)}
        if error:
            entry["error"] = error
        self.checks.append(entry)
        metrics.inc("gateway_guardrail_decisions_total", check.kind, action)

    def record(self) -> dict:
        actions = {c["action"] for c in self.checks}
        overall = next((a for a in ("blocked", "refused", "redacted", "flagged", "failed_open") if a in actions),
                       "passed")
        return {"action": overall, "ms": _ms(self.seconds), "checks": self.checks}


def _ms(seconds: float) -> float:
    """Milliseconds to the microsecond (round(x, 3) formats the number in decimal to round it: 3x slower)."""
    return round(seconds * 1e6) / 1000


def refusal(check: Check, findings: Counter) -> errors.GatewayError:
    found = ", ".join(f"{kind} x{count}" for kind, count in sorted(findings.items()))
    return errors.GatewayError(400, f"The guardrail check '{check.label}' refused this content ({found}).",
                               code="content_policy_violation", param=check.kind)


def unavailable(check: Check, why: str) -> errors.GatewayError:
    return errors.GatewayError(
        400, f"The guardrail check '{check.label}' could not run ({why}) and its policy refuses what it "
             "cannot check.", code="content_policy_violation", param=check.kind)


def find_now(check: Check, text: str) -> list[detectors.Finding] | None:
    """A local check's findings in `text`, found without waiting: None for a check with a pattern that
    runs in Python's engine (in a child process, under its time limit: `find`)."""
    if check.kind == "pii":
        return detectors.pii(text, check.pii_types, check.phone_region)
    if check.kind == "secrets":
        return detectors.secrets(text)
    kind = "term" if check.kind == "terms" else "pattern"
    found = []
    for compiled in check.compiled:
        if isinstance(compiled, re.Pattern):
            return None
        found.extend(detectors.matches_now(compiled, text, kind))
    return found


async def find(check: Check, text: str) -> list[detectors.Finding]:
    """A local check's findings in `text` (PatternTimeout when a pattern runs past its limit)."""
    if (found := find_now(check, text)) is not None:
        return found
    kind = "term" if check.kind == "terms" else "pattern"
    found = []
    for compiled in check.compiled:
        found.extend(await detectors.matches(compiled, text, kind, check.timeout_ms))
    return found


def redacted(text: str, findings: list[detectors.Finding], vault: Vault) -> str:
    """`text` with each finding replaced by its placeholder (overlaps: the first one wins)."""
    out, at = [], 0
    for finding in sorted(findings, key=lambda f: (f.start, -f.end)):
        if finding.start < at:
            continue
        out.append(text[at:finding.start])
        out.append(vault.placeholder(finding.type, text[finding.start:finding.end]))
        at = finding.end
    out.append(text[at:])
    return "".join(out)


async def run_local(check: Check, stage: str, texts: list[str], vault: Vault, decisions: Decisions) -> list[str]:
    """Run a local check on each text: the texts as they go on (redacted or not); raises to block."""
    started = time.perf_counter()
    counts: Counter | None = None  # made on the first finding: most texts have none
    results = []
    try:
        for text in texts:
            if not text:
                findings = None
            elif (findings := find_now(check, text)) is None:
                findings = await find(check, text)
            if not findings:
                results.append(text)
                continue
            counts = counts or Counter()
            counts.update(f.type for f in findings)
            results.append(redacted(text, findings, vault) if check.action == "redact" else text)
    except detectors.PatternTimeout:
        return _failed(check, stage, texts, "time limit", started, decisions)
    if not counts:
        decisions.add(check, stage, "passed", {}, started)
        return texts
    action = {"block": "blocked", "redact": "redacted", "flag": "flagged"}[check.action]
    decisions.add(check, stage, action, counts, started)
    if check.action == "block":
        raise refusal(check, counts)
    return results


def _failed(check: Check, stage: str, texts: list[str], why: str, started: float, decisions: Decisions):
    decisions.add(check, stage, "refused" if check.closed else "failed_open", Counter(), started, why)
    if check.closed:
        raise unavailable(check, why)
    return texts


async def run_remote(check: Check, stage: str, texts: list[str], call, decisions: Decisions) -> None:
    """Moderation or a webhook on the texts together; raises to block."""
    from . import remote  # deferred: it reaches the routing table and the upstream client

    started = time.perf_counter()
    try:
        flagged = await remote.flagged(check, "\n\n".join(t for t in texts if t), stage, call)
    except CheckFailed as exc:
        _failed(check, stage, texts, str(exc), started, decisions)
        return
    counts = Counter({kind: 1 for kind in flagged})
    if not flagged:
        decisions.add(check, stage, "passed", counts, started)
        return
    decisions.add(check, stage, "blocked" if check.action == "block" else "flagged", counts, started)
    if check.action == "block":
        raise refusal(check, counts)


async def run_checks(checks: tuple[Check, ...], stage: str, texts: list[str], call, vault: Vault,
                     decisions: Decisions) -> list[str]:
    for check in checks:
        if check.local:
            texts = await run_local(check, stage, texts, vault, decisions)
        else:
            await run_remote(check, stage, texts, call, decisions)
    return texts
