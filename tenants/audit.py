"""The audit trail: who changed what, from where, in which request.

Every request to the admin and the management API runs inside an audit
context (`AuditMiddleware`; the API names its actor once DRF has
authenticated). While one is open, every save and delete of an audited model
writes an AuditLog row in the same transaction, with a field-by-field diff in
which secrets are redacted. Outside a context (the request path, jobs, test
fixtures) nothing is written, unless code opens one with `acting(...)`, as the
management commands do. Logins, failed logins and logouts are recorded always.

Models are audited by name (`AUDITED`), each with its own signal receivers:
a delete receiver on every model would stop Django from deleting ledger rows
(usage, health) in bulk.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from django.apps import apps
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save

from gateway_project.lib.request_ids import request_id_from

from .models import AuditLog, Membership
from .scoping import tenant_of

AUDITED = [
    "tenants.Tenant", "tenants.Membership", "keys.ApiKey", "providers.Provider", "providers.Deployment",
    "routing.Route", "routing.RouteTarget", "routing.RouteRule", "usage.Limit",
    "routing.PromptTemplate", "routing.PromptVersion", "routing.PromptLabel", "routing.Experiment",
    "routing.Variant",
    "auth.User", "auth.Group", "tenants.SsoIdentity",
    "django_celery_beat.PeriodicTask", "django_celery_beat.IntervalSchedule",
    "django_celery_beat.CrontabSchedule",
]
# Stored values that are secrets (or hashes of one): a diff says they changed, never what to.
SECRET_FIELDS = {"password", "key_hash", "api_key_encrypted"}
# JSON objects whose values may carry credentials (Authorization headers): names kept, values not.
SECRET_VALUES = {"extra_headers"}
# Bookkeeping that changes on its own and is no one's decision.
IGNORED_FIELDS = {"last_login", "last_used_at"}
REDACTED = "[redacted]"


@dataclass
class Context:
    request: object | None = None
    actor: object | None = None  # overrides the request's user (DRF authenticates later)
    address: str | None = None
    request_id: str = ""
    label: str = ""  # who acts when no user does ("sso: <issuer>" for roles a sign-in set)
    extra: dict = field(default_factory=dict)

    def user(self):
        if self.actor is not None:
            return self.actor
        user = getattr(self.request, "user", None)
        return user if user is not None and user.is_authenticated else None


_current: ContextVar[Context | None] = ContextVar("audit_context", default=None)


def current() -> Context | None:
    return _current.get()


@contextmanager
def acting(actor=None, *, request=None, address: str | None = None, request_id: str = "",
           label: str = "") -> Iterator[Context]:
    """Audit what happens inside, as done by `actor` (None: `label`, else the system)."""
    context = Context(request=request, actor=actor, address=address, request_id=request_id, label=label)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


class AuditMiddleware:
    """Opens an audit context for each admin and management API request, and
    gives the request an id (the client's x-request-id when sane), echoed back."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        request.request_id = request_id_from(request.headers)
        with acting(request=request, address=request.META.get("REMOTE_ADDR"), request_id=request.request_id):
            response = self.get_response(request)
        if not response.has_header("x-request-id"):
            response["x-request-id"] = request.request_id
        return response


# --- Diffs ----------------------------------------------------------------------


def _is_secret(name: str) -> bool:
    return name in SECRET_FIELDS or "secret" in name or "password" in name


def _plain(value):
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _shown(name: str, value):
    if value in (None, "", [], {}):
        return value
    if _is_secret(name):
        return REDACTED
    if name in SECRET_VALUES and isinstance(value, dict):
        return {key: REDACTED for key in value}
    return value


def _fields(model):
    return [f for f in model._meta.concrete_fields if f.name not in IGNORED_FIELDS]


def snapshot(obj) -> dict:
    return {f.name: _plain(getattr(obj, f.attname)) for f in _fields(type(obj))}


def diff(before: dict | None, after: dict | None, only=None) -> dict:
    """{field: [old, new]} for every field that differs, secrets redacted."""
    before, after = before or {}, after or {}
    changes = {}
    for name in after.keys() | before.keys():
        if only is not None and name not in only:
            continue
        old, new = before.get(name), after.get(name)
        if old != new and not (old in (None, "", [], {}) and new in (None, "", [], {})):
            changes[name] = [_shown(name, old), _shown(name, new)]
    return dict(sorted(changes.items()))


# --- Writing ----------------------------------------------------------------------


def record(action: str, obj=None, *, changes: dict | None = None, tenant_id: int | None = None,
           actor=None, actor_label: str = "", address: str | None = None):
    """Write one audit row; actor, address and request id default to the open context's."""
    context = current()
    if actor is None and context is not None:
        actor = context.user()
    if address is None and context is not None:
        address = context.address
    if not actor_label and context is not None:
        actor_label = context.label
    if tenant_id is None and obj is not None:
        tenant_id = tenant_of(obj)
    return AuditLog.objects.create(
        action=action,
        actor=actor,
        actor_label=(actor.get_username() if actor is not None else actor_label or "system")[:200],
        tenant_id=tenant_id,
        object_type=obj._meta.label if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "",
        changes=changes or {},
        address=address,
        request_id=context.request_id if context is not None else "",
    )


_named: ContextVar[tuple[int, str] | None] = ContextVar("audit_named", default=None)


@contextmanager
def named(action: str, obj) -> Iterator[None]:
    """Record the save of `obj` inside this block as `action` ("key.revoke"), named where it
    happens; the field diff is still computed by the save's receiver."""
    token = _named.set((id(obj), action))
    try:
        yield
    finally:
        _named.reset(token)


def _before_save(sender, instance, raw=False, **kwargs) -> None:
    instance._audit_before = None
    if raw or current() is None or instance._state.adding:
        return
    fields = _fields(sender)
    row = sender._base_manager.filter(pk=instance.pk).values(*[f.attname for f in fields]).first()
    if row is not None:
        instance._audit_before = {f.name: _plain(row[f.attname]) for f in fields}


def _after_save(sender, instance, created, raw=False, update_fields=None, **kwargs) -> None:
    if raw or current() is None:
        return
    name = _named.get()
    action = name[1] if name is not None and name[0] == id(instance) else ("create" if created else "update")
    before = None if created else instance.__dict__.pop("_audit_before", None)
    only = None
    if update_fields:
        names = {sender._meta.get_field(name).name for name in update_fields}
        only = names
    changes = diff(before, snapshot(instance), only)
    if changes or action != "update":
        record(action, instance, changes=changes)


def _after_delete(sender, instance, **kwargs) -> None:
    if current() is not None:
        record("delete", instance, changes=diff(snapshot(instance), None))


def _m2m_changed(sender, instance, action, reverse, pk_set, **kwargs) -> None:
    # A user's groups and permissions, a group's permissions: recorded on the row whose field it is.
    if current() is None or reverse or action not in ("post_add", "post_remove", "post_clear"):
        return
    name = next(f.name for f in instance._meta.many_to_many if f.remote_field.through is sender)
    change = {"post_add": "added", "post_remove": "removed", "post_clear": "cleared"}[action]
    if pk_set or action == "post_clear":
        record("update", instance, changes={name: {change: sorted(pk_set or [])}})


def _address(request) -> str | None:
    return request.META.get("REMOTE_ADDR") if request is not None else None


def _logged_in(sender, request, user, **kwargs) -> None:
    # A sign-in that is more than a password check names itself on the user (tenants/sso.py:
    # "login.sso", with the issuer and the roles the claim gave).
    action, changes = getattr(user, "audit_login", ("login", {}))
    tenants = list(Membership.objects.filter(user=user).values_list("tenant_id", flat=True)[:2])
    record(action, user, actor=user, changes=changes, tenant_id=tenants[0] if len(tenants) == 1 else None,
           address=_address(request))


def _login_failed(sender, credentials, request=None, **kwargs) -> None:
    if "nonce" in credentials:
        return  # a single sign-on callback: tenants/sso.py records its refusal, with the reason
    # Django has already masked the password in `credentials`.
    record("login.failed", actor_label=str(credentials.get("username", ""))[:150] or "unknown",
           address=_address(request))


def _logged_out(sender, request, user, **kwargs) -> None:
    if user is not None:
        record("logout", user, actor=user, address=_address(request))


def connect() -> None:
    for label in AUDITED:
        try:
            model = apps.get_model(label)
        except LookupError:  # an app not installed
            continue
        pre_save.connect(_before_save, sender=model, dispatch_uid=f"audit-pre-{label}")
        post_save.connect(_after_save, sender=model, dispatch_uid=f"audit-save-{label}")
        post_delete.connect(_after_delete, sender=model, dispatch_uid=f"audit-delete-{label}")
        for m2m in model._meta.many_to_many:
            m2m_changed.connect(_m2m_changed, sender=m2m.remote_field.through, dispatch_uid=f"audit-m2m-{m2m}")
    user_logged_in.connect(_logged_in, dispatch_uid="audit-login")
    user_login_failed.connect(_login_failed, dispatch_uid="audit-login-failed")
    user_logged_out.connect(_logged_out, dispatch_uid="audit-logout")
