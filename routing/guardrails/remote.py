"""Checks that call out: moderation through a tenant's moderation deployment, and webhooks.

Moderation goes through the gateway's own routing (the check names a model, served by
deployments of mode "moderation" the tenant may use) and is billed: each moderation call
is a usage record of its own (endpoint "moderations") under the caller's key. A webhook
gets the text as JSON with an HMAC-SHA256 signature over the timestamp and body
(`x-gateway-signature: t=<unix>,v1=<hex>`), through the providers' SSRF guard
(providers/netguard.py: public addresses only unless staff allow private ones, no
redirects), and answers `{"allow": bool, "reasons": [...]}`.
"""

import asyncio
import hashlib
import hmac
import time
import urllib.parse

import aiohttp
import orjson

from gateway_project.lib import errors, tokens
from providers import netguard
from providers.adapters.base import Usage
from routing import table, upstream
from routing.front.call import Call

from .policies import Check, CheckFailed


async def flagged(check: Check, text: str, stage: str, call) -> list[str]:
    """What the check flags in `text` (category names; empty: it passes); CheckFailed when it cannot say."""
    if not text:
        return []
    work = _moderation(check, text, call) if check.kind == "moderation" else _webhook(check, text, stage, call)
    try:
        return await asyncio.wait_for(work, check.timeout_ms / 1000)
    except TimeoutError:
        raise CheckFailed("time limit") from None
    except errors.GatewayError as exc:
        raise CheckFailed(exc.code or "error") from None


async def _moderation(check: Check, text: str, call) -> list[str]:
    spec = await table.route_for_key(call.key, check.model, "moderation")
    body = {"model": check.model, "input": text}
    attempt = await upstream.open_call(
        list(spec.targets), lambda adapter, target: adapter.moderations_request(target, body, call.request_id),
        max_attempts=spec.max_attempts, deadline_seconds=check.timeout_ms / 1000)
    _, data = await upstream.read_json(attempt)
    await _bill(call, check, spec.name, attempt.target, body, text)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or not results:
        raise CheckFailed("malformed moderation answer")
    hits = sorted({name for result in results for name, hit in (result.get("categories") or {}).items() if hit})
    if not any(result.get("flagged") for result in results):
        return []
    if check.categories:
        return [name for name in hits if name in check.categories]
    return hits or ["flagged"]


async def _bill(call, check: Check, route: str, target, body: dict, text: str) -> None:
    """The moderation call as its own usage record, under the caller's key (its prompt at the
    deployment's input price)."""
    billed = Call(endpoint="moderations", key=call.key, model=check.model, body=body, target=target, route=route,
                  client_request_id=f"{call.request_id}-mod")
    billed.usage = Usage(prompt_tokens=tokens.count_text(text, check.model))
    await billed.settle_and_record()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


async def _webhook(check: Check, text: str, stage: str, call) -> list[str]:
    host = urllib.parse.urlsplit(check.url).hostname or ""
    if not check.allow_private_network and not netguard.literal_allowed(host):
        raise CheckFailed("private address")
    body = orjson.dumps({"text": text, "stage": stage, "request_id": call.request_id, "model": call.model})
    headers = {"content-type": "application/json"}
    if check.secret:
        headers["x-gateway-signature"] = signature(check.secret, str(int(time.time())), body)
    try:
        async with upstream.session(check.allow_private_network).post(
                check.url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=check.timeout_ms / 1000)) as response:
            if response.status != 200:
                raise CheckFailed(f"status {response.status}")
            answer = orjson.loads(await response.read())
    except (aiohttp.ClientError, orjson.JSONDecodeError, netguard.UnsafeAddress) as exc:
        raise CheckFailed("unreachable" if isinstance(exc, aiohttp.ClientError) else "malformed answer") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
        raise CheckFailed("malformed answer")
    if answer["allow"]:
        return []
    reasons = answer.get("reasons")
    if not isinstance(reasons, list) or not reasons:
        return ["webhook"]
    # The webhook's own words, kept short and printable: they are recorded as a finding's type.
    return ["".join(c for c in str(r)[:40] if c.isprintable()) or "webhook" for r in reasons[:5]]
