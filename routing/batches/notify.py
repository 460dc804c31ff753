"""The email a batch sends when it ends, if its creator asked for one.

Asked with the batch's metadata: `"notify": "owners"` mails the tenant's owners and admins,
`"notify": "a@example.com,b@example.com"` those addresses, each of which must be a member's of
the batch's tenant (a gateway key must not be a way to mail strangers). The mail says how the
batch ended, its line counts and its cost from the usage ledger, exact. It goes out once
(`Batch.notified_at`, claimed before sending), and only once the ledger holds every line the
batch billed, so that the cost it states is the whole of it.
"""

from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Sum
from django.utils import timezone

from gateway_project.lib import errors
from tenants.models import Membership
from usage import recorder
from usage.alerts import tenant_admin_emails
from usage.models import UsageRecord

from .models import Batch, BatchLine

KEY = "notify"
ENDED = ("completed", "failed", "expired", "cancelled")


def _addresses(value: str) -> list[str]:
    return sorted({part.strip().lower() for part in value.split(",") if part.strip()})


def check_request(tenant_id: int, metadata: dict | None) -> None:
    """Refuse (400) a `notify` that is neither `owners` nor addresses of the tenant's members."""
    value = (metadata or {}).get(KEY)
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise errors.bad_request("metadata.notify: 'owners' or comma-separated email addresses.",
                                 param="metadata", code="invalid_value")
    if value.strip() == "owners":
        return
    members = _member_emails(tenant_id)
    if strangers := [a for a in _addresses(value) if a not in members]:
        raise errors.bad_request(f"metadata.notify: {', '.join(strangers)} is not the address of a member of "
                                 "your tenant.", param="metadata", code="invalid_value")


def _member_emails(tenant_id: int) -> set[str]:
    return {e.lower() for e in Membership.objects.filter(tenant_id=tenant_id, user__is_active=True)
            .exclude(user__email="").values_list("user__email", flat=True)}


def recipients(batch: Batch) -> list[str]:
    value = (batch.metadata or {}).get(KEY)
    if not isinstance(value, str):
        return []
    if value.strip() == "owners":
        return tenant_admin_emails(batch.tenant_id)
    members = _member_emails(batch.tenant_id)  # a member who left since is not mailed
    return [a for a in _addresses(value) if a in members]


def cost(batch: Batch) -> tuple[int, Decimal]:
    """The batch's usage records and their cost, as the ledger holds them now."""
    rows = UsageRecord.objects.filter(batch_id=batch.id)
    return rows.count(), rows.aggregate(cost=Sum("cost_usd"))["cost"] or Decimal(0)


def ledger_has_all(batch: Batch) -> bool:
    billed = BatchLine.objects.filter(batch=batch, billed=True).count()
    if cost(batch)[0] >= billed:
        return True
    recorder.drain_all()  # the events are buffered: write them now rather than wait for the drainer
    return cost(batch)[0] >= billed


def batch_ended(batch_id: str) -> str:
    """Send the batch's email if it asked for one and it has ended: 'sent', 'not asked', 'sent before',
    'not ended' or 'waiting' (the ledger lacks some of its lines yet: try again shortly)."""
    batch = Batch.objects.select_related("tenant").get(pk=batch_id)
    if batch.status not in ENDED:
        return "not ended"
    to = recipients(batch)
    if not to:
        return "not asked"
    if batch.notified_at:
        return "sent before"
    if not ledger_has_all(batch):
        return "waiting"
    if not Batch.objects.filter(pk=batch.pk, notified_at=None).update(notified_at=timezone.now()):
        return "sent before"  # another worker claimed it
    try:
        subject, body = message(batch)
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, to)
    except Exception:
        Batch.objects.filter(pk=batch.pk).update(notified_at=None)  # not sent: the retry sends it
        raise
    return "sent"


def message(batch: Batch) -> tuple[str, str]:
    records, spent = cost(batch)
    done = batch.completed + batch.failed
    subject = f"[LLM gateway] Batch {batch.id} {batch.status}: {batch.completed} of {batch.total} lines succeeded"
    lines = [
        f"The batch {batch.id} of tenant {batch.tenant.name} has ended: {batch.status}.",
        "",
        f"Endpoint:        {batch.endpoint}",
        f"Lines:           {batch.total}",
        f"Succeeded:       {batch.completed}",
        f"Failed:          {batch.failed}",
        f"Not run:         {batch.total - done}",
        f"Cost:            {format(spent, 'f')} USD ({records} calls billed)",
        f"Created:         {batch.created_at.isoformat()}",
        f"Ended:           {batch.ended_at.isoformat() if batch.ended_at else ''}",
    ]
    if batch.output_file_id:
        lines.append(f"Output file:     {batch.output_file_id}")
    if batch.error_file_id:
        lines.append(f"Error file:      {batch.error_file_id}")
    if batch.errors:
        lines += ["", "Why it failed:"] + [f"  {e.get('message')}" for e in batch.errors.get("data", [])[:10]]
    return subject, "\n".join(lines) + "\n"
