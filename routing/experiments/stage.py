"""Experiments as a stage of the request path (INPUT, order 1: first, so that the variant's template
version is what the template stage expands and the guardrails check).

A call to a name with a running experiment of its tenant is given a variant: by a hash of the
experiment and the caller's sticky value (the request's `user`, or a header), so a caller keeps its
variant; with no such value, at random. The variant's model, deployment, template version and
parameters are applied to the call, the usage record names the experiment and the variant, and the
answer says them in `x-gateway-experiment` and `x-gateway-variant`. On /v1/messages and /v1/responses the
variant's parameters go into the client's own request (routing/prompts/native.py), so that a call to an
Anthropic or a native Responses deployment keeps its native path.
"""

import bisect
import hashlib
import secrets
from dataclasses import dataclass

from django.utils import timezone

from gateway_project.lib import config_cache
from routing.front import stages
from routing.prompts import native

from .models import Experiment

EXPERIMENT_HEADER, VARIANT_HEADER = "x-gateway-experiment", "x-gateway-variant"


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    weight: int
    model: str
    deployment_id: int | None
    prompt: tuple[str, int] | None  # (template, version)
    parameters: dict


@dataclass(frozen=True, slots=True)
class Running:
    id: int
    name: str
    sticky_header: str  # "" : by the request's user
    starts_at: float | None
    ends_at: float | None
    arms: tuple[Arm, ...]
    bounds: tuple[int, ...]  # cumulative weights

    def live(self, now: float) -> bool:
        return (self.starts_at is None or self.starts_at <= now) and (self.ends_at is None or now < self.ends_at)

    def assign(self, sticky: str | None) -> Arm:
        """The caller's arm: the same for the same sticky value, in proportion to the weights over many."""
        total = self.bounds[-1]
        if sticky:
            digest = hashlib.blake2b(f"{self.id}:{sticky}".encode(), digest_size=8).digest()
            point = int.from_bytes(digest) * total >> 64
        else:
            point = secrets.randbelow(total)
        return self.arms[bisect.bisect_right(self.bounds, point)]


def load() -> dict[tuple[int, str], tuple[Running, ...]]:
    """Active experiments with weight to split, by (tenant, name); ended ones are left out."""
    now = timezone.now()
    found: dict[tuple[int, str], list[Running]] = {}
    rows = Experiment.objects.filter(is_active=True).prefetch_related("variants__prompt_version__template")
    for e in rows:
        arms = tuple(Arm(v.name, v.weight, v.model, v.deployment_id,
                         (v.prompt_version.template.name, v.prompt_version.number) if v.prompt_version_id else None,
                         dict(v.parameters or {})) for v in e.variants.all() if v.weight > 0)
        if not arms or (e.ends_at is not None and e.ends_at <= now):
            continue
        bounds, total = [], 0
        for arm in arms:
            total += arm.weight
            bounds.append(total)
        header = e.sticky_header.lower() if e.sticky_by == Experiment.Sticky.HEADER else ""
        found.setdefault((e.tenant_id, e.route), []).append(Running(
            e.id, e.name, header, e.starts_at.timestamp() if e.starts_at else None,
            e.ends_at.timestamp() if e.ends_at else None, arms, tuple(bounds)))
    return {at: tuple(runs) for at, runs in found.items()}


_table = config_cache.Reloaded("experiments", load, "experiments")


def may_apply(call) -> bool:
    """Without waiting: False only when the table is loaded, current and has nothing for this call's name."""
    value = _table.value
    if value is None or _table.generation != config_cache.generation("experiments"):
        return True
    return (call.key.tenant_id, call.model) in value


def _sticky(call, running: Running) -> str | None:
    if running.sticky_header:
        return (call.request_headers or {}).get(running.sticky_header) or None
    user = call.body.get("user")
    return user if isinstance(user, str) and user else None


def apply(call, running: Running, arm: Arm, front=None) -> None:
    call.experiment_id, call.variant = running.id, arm.name
    headers = call.response_headers = call.response_headers or {}
    headers[EXPERIMENT_HEADER], headers[VARIANT_HEADER] = running.name, arm.name
    form = native.form_of(call, front)
    if arm.model:
        call.model = call.body["model"] = arm.model
        if form:
            call.front_state.body["model"] = arm.model
    if arm.deployment_id is not None:
        call.pinned_deployment = arm.deployment_id
    if arm.prompt is not None:
        asked = call.prompt or {}
        call.prompt = {"id": arm.prompt[0], "version": str(arm.prompt[1]), "variables": asked.get("variables", {}),
                       "param": asked.get("param", "gateway_prompt")}
    if not form:
        call.body.update(arm.parameters)
    elif arm.parameters:
        native.parameters(call, form, arm.parameters, override=True)
        if call.prompt is None:  # else the template stage makes the chat form once it expanded
            front.rebuild(call)


class Assign(stages.Stage):
    name = "experiments"
    order = 1
    native = True  # the variant is applied to the client's own request on /v1/messages and /v1/responses

    def applies(self, call) -> bool:
        return may_apply(call)

    async def on_request(self, call, front):
        runs = (await _table.get()).get((call.key.tenant_id, call.model), ())
        now = call.ts
        running = next((r for r in runs if r.live(now)), None)
        if running is not None:
            apply(call, running, running.assign(_sticky(call, running)), front)
        return None


def register() -> None:
    stages.register(stages.INPUT, Assign())
