"""Choosing and ordering a route's targets for one request.

`plan` applies, in order: content rules (which may pick a target or a
sub-route), the context window and capabilities (images, tools) the request
needs, the route's strategy, and the circuit breakers. The first target of the
plan is called first; the rest are fallbacks.
"""

import random
from dataclasses import dataclass

from gateway_project.lib import errors
from gateway_project.lib.messages import content_text
from providers.targets import Target

from . import breakers, patterns, stats, table
from .table import ContentRule, RouteSpec


@dataclass(slots=True)
class Facts:
    """What the routing decision looks at, read once from the request."""

    prompt_tokens: int  # an upper bound unless counted
    max_output: int
    has_images: bool
    has_tools: bool
    last_user_text: str
    headers: dict


def facts_for_chat(body: dict, raw_size: int, headers) -> Facts:
    messages = body.get("messages") or []
    has_images, last_user = False, ""
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image_url", "input_image", "image"):
                    has_images = True
        if message.get("role") == "user":
            last_user = content_text(content)
    asked = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    # A token is at least one byte of the request: the body size bounds the prompt.
    return Facts(raw_size, asked if isinstance(asked, int) else 0, has_images, bool(body.get("tools")),
                 last_user, headers)


def _rule_matches(rule: ContentRule, facts: Facts, count_prompt) -> bool:
    if rule.kind == "has_images":
        return facts.has_images
    if rule.kind == "has_tools":
        return facts.has_tools
    if rule.kind == "keyword":
        return rule.value.lower() in facts.last_user_text.lower()
    if rule.kind == "regex":
        # RE2, compiled once: linear in the prompt whatever a tenant admin wrote (routing/patterns.py).
        pattern = patterns.compiled(rule.value)
        return pattern is not None and pattern.search(facts.last_user_text) is not None
    if rule.kind == "header":
        return facts.headers.get(rule.header) == rule.value
    if rule.kind == "prompt_over":
        return facts.prompt_tokens > int(rule.value) and count_prompt() > int(rule.value)
    return False


def matching_rule(spec: RouteSpec, facts: Facts, count_prompt) -> ContentRule | None:
    return next((r for r in spec.rules if _rule_matches(r, facts, count_prompt)), None)


def fits(target: Target, facts: Facts, count_prompt) -> bool:
    if facts.has_images and not target.supports_vision:
        return False
    if facts.has_tools and not target.supports_tools:
        return False
    needed = facts.max_output or 0
    if facts.prompt_tokens + needed <= target.context_window:
        return True  # the cheap upper bound already fits: no counting needed
    return count_prompt() + needed <= target.context_window


def order(spec: RouteSpec, targets: list[Target], facts: Facts) -> list[Target]:
    strategy = spec.strategy
    if strategy == "weighted":
        return _weighted(targets)
    if strategy == "latency":
        # Mostly the fastest; now and then another, so every latency stays measured.
        if len(targets) > 1 and random.random() < 0.05:  # noqa: S311  # nosec B311: shuffling targets, not security
            return random.sample(targets, len(targets))  # noqa: S311  # nosec B311: not security
        return sorted(targets, key=lambda t: stats.latency_ms(t.deployment_id))
    if strategy == "least_busy":
        return sorted(targets, key=lambda t: (stats.in_flight(t.deployment_id), t.priority))
    if strategy == "cost":
        out = facts.max_output or 256
        return sorted(targets, key=lambda t: t.cost(facts.prompt_tokens, out))
    return sorted(targets, key=lambda t: t.priority)


def _weighted(targets: list[Target]) -> list[Target]:
    pool, ordered = list(targets), []
    while pool:
        total = sum(max(t.weight, 0) for t in pool)
        if total <= 0:
            ordered.extend(pool)
            break
        pick = random.uniform(0, total)  # noqa: S311  # nosec B311: load spreading, not security
        for i, t in enumerate(pool):
            pick -= max(t.weight, 0)
            if pick <= 0:
                ordered.append(pool.pop(i))
                break
        else:
            ordered.append(pool.pop())
    return ordered


def healthy_first(targets: list[Target]) -> list[Target]:
    """Targets whose breaker lets a call through, in order; the others dropped."""
    return [t for t in targets if breakers.allows(t.deployment_id)]


async def plan(spec: RouteSpec, facts: Facts, tenant_id: int, count_prompt) -> tuple[RouteSpec, list[Target]]:
    """The route that serves this request and its targets in the order to try them."""
    preferred: list[Target] = []
    rule = matching_rule(spec, facts, count_prompt)
    if rule is not None and rule.sub_route:
        spec = await table.route_named(tenant_id, rule.sub_route) or spec
    elif rule is not None:
        preferred = [t for t in spec.targets if t.deployment_id == rule.deployment_id]
    fitting = [t for t in spec.targets if fits(t, facts, count_prompt)]
    if not fitting and spec.context_fallback:
        fallback = await table.route_named(tenant_id, spec.context_fallback)
        if fallback is not None:
            spec = fallback
            fitting = [t for t in spec.targets if fits(t, facts, count_prompt)]
    if not fitting:
        raise errors.GatewayError(
            400, f"This request needs about {count_prompt() + facts.max_output} tokens, more than any "
            f"deployment of '{spec.name}' accepts (or it needs images or tools they lack).",
            param="messages", code="context_length_exceeded")
    ordered = order(spec, fitting, facts)
    if preferred:
        ordered = [t for t in preferred if t in fitting] + [t for t in ordered if t not in preferred]
    return spec, healthy_first(ordered)
