"""The configuration file's schema (pydantic) and a YAML reader that keeps every value's line.

The shape is checked here: which keys exist, their types, secrets given as references. What each
value may be (a known provider kind, a base URL the network guard allows, a time zone) is the
models' own validation (`full_clean`), run by routing.config.apply on every object it builds, so a
file cannot build what the admin would refuse. Both kinds of error come back as `Problem`s naming
the path in the file (`tenants[0].limits[1].period`) and its line.
"""

import os
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

VERSION = 1


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '(top)'}: {self.message}"


class ConfigError(Exception):
    """The file cannot be applied; `problems` says where and why."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source, self.problems = source, problems
        super().__init__("\n".join(f"{source}: {problem}" for problem in problems))


def dotted(loc: tuple) -> str:
    """('tenants', 0, 'slug') -> 'tenants[0].slug'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class Lines:
    """Where each path of a YAML document starts (a mapping key's line for its value)."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple, int] = {}
        self.duplicates: list[Problem] = []
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, value in node.value:
                name = key.value
                if name in seen:
                    self.duplicates.append(Problem(dotted((*path, name)), key.start_mark.line + 1,
                                                   "given twice in the same mapping"))
                seen.add(name)
                self.lines[(*path, name)] = key.start_mark.line + 1
                self._walk(value, (*path, name))
        elif isinstance(node, yaml.SequenceNode):
            for n, item in enumerate(node.value):
                self._walk(item, (*path, n))

    def line(self, loc: tuple) -> int | None:
        """The line of `loc`, or of its nearest enclosing path that has one."""
        for end in range(len(loc), -1, -1):
            if (found := self.lines.get(tuple(loc[:end]))) is not None:
                return found
        return None


# --- The schema ----------------------------------------------------------------------


class Strict(BaseModel):
    """Every key of the file is known: a misspelt one is an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class SecretRef(Strict):
    """Where a secret is: an environment variable (read by the gateway on every use, its name as
    PROVIDER_KEY_ENV_PREFIX allows), a file (read once, by apply_config, and stored encrypted), or
    `stored: true` (keep what this database holds: what export_config writes for encrypted keys)."""

    env: str | None = None
    file: str | None = None
    stored: bool | None = None

    @model_validator(mode="after")
    def one_source(self):
        given = [name for name in ("env", "file", "stored") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of env (a variable's name), file (a path) or stored: true")
        return self


def _no_inline_secret(value):
    if isinstance(value, str):
        raise ValueError("a secret is never written in the file: use {env: VARIABLE} or {file: PATH}")
    return value


class Prices(Strict):
    """USD per million tokens (exact decimals; quote them to be sure: "0.15")."""

    input: Decimal | None = None
    output: Decimal | None = None
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    long_context_threshold: int | None = None
    long_input: Decimal | None = None
    long_output: Decimal | None = None
    long_cached_input: Decimal | None = None
    long_cache_write: Decimal | None = None
    long_cache_write_1h: Decimal | None = None


class Deployment(Strict):
    public_model: str
    upstream_model: str | None = None  # default: the public name
    mode: str | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    prices: Prices | None = None  # absent: a new deployment takes the price catalogue's, an old one keeps its own
    priority: int | None = None
    supports_vision: bool | None = None
    supports_tools: bool | None = None
    native_responses: bool | None = None
    connect_timeout: float | None = None
    first_byte_timeout: float | None = None
    total_timeout: float | None = None
    is_active: bool | None = None


class Provider(Strict):
    name: str
    kind: str
    base_url: str
    api_key: SecretRef | None = None
    allow_private_network: bool | None = None
    extra_headers: dict[str, str] | None = None
    settings: dict[str, str] | None = None
    is_active: bool | None = None
    deployments: list[Deployment] = Field(default_factory=list)

    _check_key = field_validator("api_key", mode="before")(_no_inline_secret)

    @field_validator("extra_headers")
    @classmethod
    def no_credential_headers(cls, headers):
        credentials = {"authorization", "api-key", "x-api-key", "proxy-authorization", "cookie"}
        if headers and (named := sorted(h for h in headers if h.lower() in credentials)):
            raise ValueError(f"{', '.join(named)} would put a secret in the file: give it as api_key")
        return headers


class Target(Strict):
    deployment: str  # "provider/public_model"
    upstream_model: str | None = None  # when the provider serves that public name from several models
    weight: int | None = None
    priority: int | None = None
    is_active: bool | None = None


class Rule(Strict):
    kind: str
    value: str | None = None
    header: str | None = None
    deployment: str | None = None  # "provider/public_model", or
    sub_route: str | None = None  # a route's name
    upstream_model: str | None = None


class Route(Strict):
    name: str
    strategy: str | None = None
    hedge_after_ms: int | None = None
    max_attempts: int | None = None
    deadline_seconds: float | None = None
    context_fallback: str | None = None  # a route's name
    is_active: bool | None = None
    targets: list[Target] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)


class Limit(Strict):
    model: str | None = None
    period: str | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    token_quota: int | None = None
    budget_usd: Decimal | None = None
    alert_thresholds: list[int | float] | None = None
    offline_credit_usd: Decimal | None = None


class CachePolicy(Strict):
    model: str = ""
    mode: str | None = None
    ttl_seconds: int | None = None
    expiry: str | None = None
    endpoints: list[str] | None = None
    cache_tool_calls: bool | None = None
    max_answer_bytes: int | None = None
    hits_count_against_limits: bool | None = None
    semantic_threshold: float | None = None
    semantic_embedding_model: str | None = None


class GuardrailCheck(Strict):
    kind: str
    stage: str | None = None
    action: str | None = None
    failure_mode: str | None = None
    pii_types: list[str] | None = None
    phone_region: str | None = None
    terms: list[str] | None = None
    patterns: list[str] | None = None
    model: str | None = None
    categories: list[str] | None = None
    url: str | None = None
    secret: SecretRef | None = None  # a webhook's HMAC key
    allow_private_network: bool | None = None
    timeout_ms: int | None = None

    _check_secret = field_validator("secret", mode="before")(_no_inline_secret)


class GuardrailPolicy(Strict):
    name: str
    route: str | None = None
    is_active: bool | None = None
    restore: bool | None = None
    hold_back_chars: int | None = None
    checks: list[GuardrailCheck] = Field(default_factory=list)


class Member(Strict):
    """A user by e-mail address (created if none has it), or by username for one without an address."""

    email: str | None = None
    username: str | None = None
    role: Literal["owner", "admin", "member"] = "member"

    @model_validator(mode="after")
    def one_name(self):
        if bool(self.email) == bool(self.username):
            raise ValueError("give the member's email (or, for a user without one, username)")
        return self


class Tenant(Strict):
    slug: str
    name: str | None = None  # default: the slug
    is_active: bool | None = None
    allowed_models: list[str] | None = None
    default_model: str | None = None
    time_zone: str | None = None
    retention_days: int | None = None
    log_prompts: bool | None = None
    prompt_retention_days: int | None = None
    members: list[Member] = Field(default_factory=list)
    providers: list[Provider] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    limits: list[Limit] = Field(default_factory=list)
    cache: list[CachePolicy] = Field(default_factory=list)
    guardrails: list[GuardrailPolicy] = Field(default_factory=list)


class Config(Strict):
    version: Literal[1] = VERSION
    providers: list[Provider] = Field(default_factory=list)  # shared by every tenant
    routes: list[Route] = Field(default_factory=list)  # shared by every tenant
    tenants: list[Tenant] = Field(default_factory=list)


# --- Reading ------------------------------------------------------------------------


def _unique(config: Config) -> list[tuple[tuple, str]]:
    """Two entries that would be one object: (path, message) for the second of each pair."""
    found = []

    def check(items, loc, key, what):
        seen = set()
        for n, item in enumerate(items):
            name = key(item)
            if name in seen:
                found.append(((*loc, n), f"a second {what} {name!r}" if name else f"a second {what} for every model"))
            seen.add(name)

    check(config.tenants, ("tenants",), lambda t: t.slug, "tenant")
    for where, owner in [(("providers",), config), *[(("tenants", n, "providers"), t)
                                                      for n, t in enumerate(config.tenants)]]:
        check(owner.providers, where, lambda p: p.name, "provider")
        for n, provider in enumerate(owner.providers):
            check(provider.deployments, (*where, n, "deployments"),
                  lambda d: f"{d.public_model}={d.upstream_model or d.public_model}", "deployment")
        route_loc = (*where[:-1], "routes")
        check(owner.routes, route_loc, lambda r: r.name, "route")
    for n, tenant in enumerate(config.tenants):
        check(tenant.members, ("tenants", n, "members"), lambda m: (m.email or "").lower() or m.username, "member")
        check(tenant.cache, ("tenants", n, "cache"), lambda c: c.model, "cache policy")
        check(tenant.guardrails, ("tenants", n, "guardrails"), lambda g: g.name, "guardrail policy")
    return found


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}\n]*))?\}")


def expand(text: str, source: str, environ=os.environ) -> str:
    """`${NAME}` and `${NAME:-default}` replaced by the environment's values, as docker compose does,
    so that one file serves several places (the mock's address in the demo and in compose). A
    secret cannot come in this way: a provider's key must stay a reference, and is refused inline."""
    problems = []

    def value(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is None:
            problems.append(Problem("", text.count("\n", 0, match.start()) + 1,
                                    f"${{{name}}} is not set in the environment (write ${{{name}:-default}})"))
            return ""
        return default

    expanded = _VARIABLE.sub(value, text)
    if problems:
        raise ConfigError(source, problems)
    return expanded


def parse(text: str, source: str = "<config>") -> tuple[Config, Lines]:
    """The file's configuration, or ConfigError with every problem of its shape, by path and line."""
    text = expand(text, source)
    try:
        lines = Lines(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(source, [Problem("", mark.line + 1 if mark else None, f"not YAML: {exc}")]) from None
    if lines.duplicates:
        raise ConfigError(source, lines.duplicates)
    try:
        config = Config.model_validate(data if data is not None else {})
    except pydantic.ValidationError as exc:
        problems = [Problem(dotted(error["loc"]), lines.line(error["loc"]), error["msg"].removeprefix("Value error, "))
                    for error in exc.errors()]
        raise ConfigError(source, problems) from None
    if duplicates := _unique(config):
        raise ConfigError(source, [Problem(dotted(loc), lines.line(loc), message) for loc, message in duplicates])
    return config, lines


def read(path: str) -> tuple[Config, Lines]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(path, [Problem("", None, f"cannot read the file: {exc.strerror}")]) from None
    return parse(text, path)
