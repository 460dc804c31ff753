"""Checking that a provider answers: the admin's "test connection" action.

The minimal call is the provider's model list: it proves the base URL, the
key and the API version, and spends no tokens.
"""

import time
from dataclasses import dataclass, field

import httpx

from providers.adapters import for_kind, redact
from providers.crypto import SecretUnreadable

from . import netguard
from .models import Provider
from .targets import target_for

TIMEOUT_SECONDS = 10


@dataclass
class ConnectionCheck:
    ok: bool
    status: int | None
    latency_ms: int
    models: list[str] = field(default_factory=list)
    error: str = ""

    def summary(self) -> str:
        if not self.ok:
            status = f"HTTP {self.status}" if self.status else "no answer"
            return f"failed ({status}, {self.latency_ms} ms): {self.error}"
        shown = ", ".join(self.models[:10]) + (" …" if len(self.models) > 10 else "")
        return f"OK (HTTP {self.status}, {self.latency_ms} ms); {len(self.models)} model(s) found: {shown or 'none'}"


def check_connection(provider: Provider, timeout: float = TIMEOUT_SECONDS) -> ConnectionCheck:
    try:
        target = target_for(provider, provider.deployments.first())
    except SecretUnreadable:
        return ConnectionCheck(False, None, 0, error="the stored key cannot be decrypted with the configured keys")
    if target.misconfigured:
        return ConnectionCheck(False, None, 0, error=target.misconfigured)
    check = _call(provider, target, timeout)
    if check.error and redact.holds(check.error, redact.secrets_of(target)):
        # The adapters clean upstream messages already; this gate covers every text the admin
        # and the health checks show, whoever wrote it.
        check.error = redact.withheld(check.status or "no answer")
    return check


def _call(provider: Provider, target, timeout: float) -> ConnectionCheck:
    adapter = for_kind(provider.kind)
    request = adapter.models_request(target)
    try:
        netguard.check_url(request.url, provider.allow_private_network)
    except netguard.UnsafeAddress as exc:
        return ConnectionCheck(False, None, 0, error=str(exc))
    started = time.perf_counter()
    try:
        response = httpx.request(request.method, request.url, headers=request.headers, content=request.body,
                                 timeout=timeout)
    except httpx.TimeoutException:
        return ConnectionCheck(False, None, _since(started), error=f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return ConnectionCheck(False, None, _since(started), error=f"could not connect ({type(exc).__name__})")
    latency = _since(started)
    if response.status_code >= 400:
        error = adapter.map_error(target, response.status_code, response.content, response.headers)
        return ConnectionCheck(False, response.status_code, latency, error=error.message)
    try:
        models = adapter.parse_models(response.json())
    except (ValueError, AttributeError, KeyError, TypeError):
        return ConnectionCheck(False, response.status_code, latency, error="the answer was not the expected JSON")
    return ConnectionCheck(True, response.status_code, latency, models=models)


def _since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
