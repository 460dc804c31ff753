"""Prompt logging, for tenants that opt in: redacted, and kept only for the tenant's retention.

Off by default (Tenant.log_prompts). When on, each call's prompt is redacted
(e-mail addresses, key-like strings, runs of digits), cut to
PROMPT_LOG_MAX_CHARS, and travels with the usage event: it appears in the
request log line and is stored as a PromptLog row that `purge_expired` (a
periodic job) deletes after the tenant's prompt_retention_days.
"""

import re
from datetime import UTC, datetime, timedelta

from django.conf import settings

from gateway_project.lib.messages import prompt_text

from .events import safe_text

_REDACTIONS = [
    (re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"), "[email]"),
    # Secrets with a known shape: sk-/pk-/rk- keys (OpenAI, Stripe, this gateway's sk-gw-),
    # AWS access key ids, GitHub and Slack tokens, JWTs, bearer tokens.
    (re.compile(r"\b(?:sk|pk|rk)[-_][A-Za-z0-9_\-]{8,}"), "[key]"),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), "[key]"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}\b"), "[key]"),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"), "[key]"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+"), "[key]"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{8,}=*"), "Bearer [key]"),
    # Long runs of letters and digits mixed (hex and base64 secrets).
    (re.compile(r"\b(?=[A-Za-z0-9+/_\-]*\d)(?=[A-Za-z0-9+/_\-]*[A-Za-z])[A-Za-z0-9+/_\-]{32,}={0,2}"), "[key]"),
    # Runs of 4+ digits, possibly split by spaces, dashes or dots: card, phone, account numbers.
    (re.compile(r"\d(?:[ \-.]?\d){3,}"), "[number]"),
]


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def attach(event: dict, body: dict | None, retention_days: int) -> None:
    """Add the redacted prompt and its expiry to a usage event."""
    limit = settings.PROMPT_LOG_MAX_CHARS
    # Cut before redacting (bounded work), and after (a redaction may not shorten).
    event["prompt"] = safe_text(redact(prompt_text(body)[: limit * 2]), limit)
    event["prompt_expires_at"] = event["ts"] + retention_days * 86_400


def purge_expired() -> int:
    """Delete stored prompts past their retention (as set when stored, or the tenant's current one if
    shorter, or at once when the tenant no longer logs prompts)."""
    from tenants.models import Tenant

    from .models import PromptLog

    now = datetime.now(UTC)
    deleted, _ = PromptLog.objects.filter(expires_at__lte=now).delete()
    for tenant in Tenant.objects.filter(prompt_logs__isnull=False).distinct():
        keep = timedelta(days=tenant.prompt_retention_days) if tenant.log_prompts else timedelta(0)
        n, _ = PromptLog.objects.filter(tenant=tenant, created_at__lte=now - keep).delete()
        deleted += n
    return deleted
