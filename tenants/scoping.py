"""Who sees and does what: the one place tenant scoping is decided, for the admin and the APIs.

Superusers are the platform's staff and see every tenant. Anyone else sees
the tenants where they are an owner or admin, whole; in tenants where they
are only a member, they see their own keys (the keys they created) and the
usage of those keys. Objects outside that are absent: lists leave them out and
ids give 404, never 403, so nobody learns what exists elsewhere.

What each role may do with each model is the table `RULES` below; the admin
(tenants/scoped_admin.py) and the management API
(gateway_project/lib/rest.py) both ask this module and nothing else. Django's own
model permissions and groups play no part for tenant users: their Membership
is their permission. (A non-superuser without a membership therefore sees no
tenant's data, whatever Django permissions they hold: removing someone's last
membership must not leave them with more than they had.)
"""

from dataclasses import dataclass

from django.db.models import Model, Q, QuerySet

from .models import Membership

OWNER, ADMIN, MEMBER = Membership.Role.OWNER, Membership.Role.ADMIN, Membership.Role.MEMBER
MANAGERS = (OWNER, ADMIN)
ALL = frozenset({"view", "add", "change", "delete"})
VIEW = frozenset({"view"})
NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AccessRule:
    """How one model is tied to a tenant, and what each role may do with its rows."""

    tenant: str  # lookup from a row to its tenant ("tenant", "provider__tenant"); "" for a Tenant itself
    managers: frozenset[str] = ALL  # owners and admins, on their tenant's rows
    owners: frozenset[str] | None = None  # owners, where they may do more than admins
    members: frozenset[str] = NOTHING  # plain members, on rows they own
    own: str = ""  # lookup from a row to the user who owns it
    shared: bool = False  # rows of no tenant (shared by all) are visible, read-only, to tenant users


RULES: dict[str, AccessRule] = {
    # A tenant's settings that bill or bound it (is_active, allowed_models) stay
    # with staff; owners may rename it and pick its default model and time zone.
    "tenants.tenant": AccessRule("", managers=VIEW, owners=frozenset({"view", "change"})),
    "tenants.membership": AccessRule("tenant"),
    "tenants.auditlog": AccessRule("tenant", managers=VIEW),
    "keys.apikey": AccessRule("tenant", members=frozenset({"view", "add", "change"}), own="created_by"),
    "providers.provider": AccessRule("tenant"),
    "providers.deployment": AccessRule("provider__tenant", shared=True),
    "routing.route": AccessRule("tenant", shared=True),
    "routing.routetarget": AccessRule("route__tenant", shared=True),
    "routing.routerule": AccessRule("route__tenant", shared=True),
    "routing.cachepolicy": AccessRule("tenant"),
    "routing.guardrailpolicy": AccessRule("tenant"),
    "routing.guardrailcheck": AccessRule("policy__tenant"),
    "routing.prompttemplate": AccessRule("tenant"),
    # Published versions are immutable: added (published) and viewed, never changed.
    "routing.promptversion": AccessRule("template__tenant", managers=frozenset({"view", "add"})),
    "routing.promptlabel": AccessRule("template__tenant"),
    "routing.experiment": AccessRule("tenant"),
    "routing.variant": AccessRule("experiment__tenant"),
    "usage.feedback": AccessRule("tenant", managers=VIEW),
    "routing.circuitevent": AccessRule("deployment__provider__tenant", managers=VIEW),
    "usage.limit": AccessRule("tenant", members=VIEW, own="api_key__created_by"),
    "usage.usagerecord": AccessRule("tenant", managers=VIEW, members=VIEW, own="api_key__created_by"),
    "usage.usagerollup": AccessRule("tenant", managers=VIEW, members=VIEW, own="api_key__created_by"),
    "usage.reportdelivery": AccessRule("tenant", managers=VIEW),
    "usage.promptlog": AccessRule("tenant", managers=VIEW),
    "usage.storedresponse": AccessRule("tenant", managers=VIEW),
    # Owners and admins acknowledge their tenant's anomalies and mute their keys.
    "usage.spendanomaly": AccessRule("tenant", managers=frozenset({"view", "change"})),
    "usage.anomalymute": AccessRule("tenant", managers=frozenset({"view", "delete"})),
    "routing.file": AccessRule("tenant", managers=VIEW),
    "routing.batch": AccessRule("tenant", managers=VIEW),
    "providers.healthcheck": AccessRule("provider__tenant", managers=VIEW, shared=True),
}

# Tenant fields an owner may change; every other field (including any added
# later) is staff's.
TENANT_FIELDS_FOR_OWNERS = ("name", "default_model", "time_zone")


def rule_for(model) -> AccessRule | None:
    return RULES.get(model._meta.label_lower)


def _follow(obj: Model, path: str):
    """The id at the end of `path` (a__b__c gives obj.a.b.c_id), or None."""
    parts = path.split("__")
    for part in parts[:-1]:
        try:
            obj = getattr(obj, part)
        except Model.DoesNotExist:  # a ledger row naming a deleted key
            return None
        if obj is None:
            return None
    return getattr(obj, parts[-1] + "_id")


def tenant_of(obj: Model) -> int | None:
    """The tenant a row belongs to; None for shared rows and for models with no tenant."""
    rule = rule_for(obj._meta.model)  # not type(obj): request.user is a lazy proxy
    if rule is None:
        return None
    return obj.pk if rule.tenant == "" else _follow(obj, rule.tenant)


def _tenant_lookup(rule: AccessRule) -> str:
    return "pk" if rule.tenant == "" else rule.tenant


@dataclass(frozen=True)
class Scope:
    everything: bool
    managed: frozenset[int]  # tenants the user administers (owner or admin)
    member_of: frozenset[int]  # tenants where the user is a plain member
    user_id: int | None
    owned: frozenset[int] = frozenset()  # tenants the user owns (a subset of managed)

    @property
    def tenants(self) -> frozenset[int]:
        return self.managed | self.member_of

    def tenant_filter(self, field: str = "tenant") -> Q:
        """Rows of a tenant the user administers (or all, for staff)."""
        if self.everything:
            return Q()
        return Q(**{f"{field}_id__in": self.managed})

    def key_filter(self, tenant_field: str = "tenant", key_field: str = "api_key") -> Q:
        """Rows tied to a key: whole tenants the user administers, own keys elsewhere."""
        if self.everything:
            return Q()
        if not self.member_of:  # no join to the keys when the user only administers (usage at scale)
            return Q(**{f"{tenant_field}_id__in": self.managed})
        return Q(**{f"{tenant_field}_id__in": self.managed}) | Q(
            **{f"{tenant_field}_id__in": self.member_of, f"{key_field}__created_by_id": self.user_id})

    # --- What a role may do ---------------------------------------------------

    def role(self, tenant_id: int | None) -> str | None:
        if tenant_id in self.owned:
            return OWNER
        if tenant_id in self.managed:
            return ADMIN
        return MEMBER if tenant_id in self.member_of else None

    def actions(self, rule: AccessRule, tenant_id: int | None) -> frozenset[str]:
        """What the user's role in `tenant_id` allows on rows of `rule`'s model there."""
        role = self.role(tenant_id)
        if role == OWNER and rule.owners is not None:
            return rule.owners
        if role in MANAGERS:
            return rule.managers
        return rule.members if role == MEMBER else NOTHING

    def tenants_for(self, action: str, model) -> frozenset[int]:
        """Tenants where the user may `action` some rows of `model` (own rows, for members)."""
        rule = rule_for(model)
        if rule is None:
            return frozenset()
        return frozenset(t for t in self.tenants if action in self.actions(rule, t))

    def may(self, action: str, model) -> bool:
        """Whether the user may `action` any row of `model` at all."""
        return self.everything or bool(self.tenants_for(action, model))

    def visible(self, queryset: QuerySet) -> QuerySet:
        """The rows of `queryset` the user may see (shared rows too, where the model has them)."""
        return self._permitted(queryset, "view", with_shared=True)

    def manageable(self, queryset: QuerySet, action: str = "change") -> QuerySet:
        """The rows of `queryset` the user may `action` (never shared rows, for tenant users)."""
        return self._permitted(queryset, action, with_shared=False)

    def _permitted(self, queryset: QuerySet, action: str, with_shared: bool) -> QuerySet:
        if self.everything:
            return queryset
        rule = rule_for(queryset.model)
        if rule is None:
            return queryset.none()
        lookup = _tenant_lookup(rule)
        whole = [t for t in self.managed if action in self.actions(rule, t)]
        own = [t for t in self.member_of if action in self.actions(rule, t)]
        condition = Q(**{f"{lookup}__in": whole})
        if own and rule.own:
            condition |= Q(**{f"{lookup}__in": own, f"{rule.own}_id": self.user_id})
        if with_shared and rule.shared and (whole or own):
            condition |= Q(**{f"{lookup}__isnull": True})
        return queryset.filter(condition)

    def allows(self, action: str, obj: Model) -> bool:
        """Whether the user may `action` this row, in the state it is in now."""
        if self.everything:
            return True
        model = obj._meta.model
        rule = rule_for(model)
        if rule is None:
            return False
        tenant_id = tenant_of(obj)
        if tenant_id is None:
            return action == "view" and rule.shared and self.may("view", model)
        if action not in self.actions(rule, tenant_id):
            return False
        if self.role(tenant_id) == MEMBER and _follow(obj, rule.own) != self.user_id:
            return False
        check = _OBJECT_CHECKS.get(obj._meta.label_lower)
        return check is None or check(self, action, obj)


def _membership_check(scope: Scope, action: str, membership: Membership) -> bool:
    # Admins manage admins and members; only owners make or touch owners.
    return action == "view" or membership.role != OWNER or scope.role(membership.tenant_id) == OWNER


def _limit_check(scope: Scope, action: str, limit) -> bool:
    # A tenant-wide limit is the platform's bound on what the tenant spends;
    # tenant admins see it and set limits on their keys within it.
    return action == "view" or limit.api_key_id is not None


_OBJECT_CHECKS = {
    "tenants.membership": _membership_check,
    "usage.limit": _limit_check,
}


NO_SCOPE = Scope(False, frozenset(), frozenset(), None)


def scope_for(user) -> Scope:
    if not user.is_authenticated or not user.is_active:
        return NO_SCOPE
    if user.is_superuser:
        return Scope(True, frozenset(), frozenset(), user.id)
    managed, member_of, owned = set(), set(), set()
    for tenant_id, role in Membership.objects.filter(user=user, tenant__is_active=True).values_list(
            "tenant_id", "role"):
        (managed if role in MANAGERS else member_of).add(tenant_id)
        if role == OWNER:
            owned.add(tenant_id)
    return Scope(False, frozenset(managed), frozenset(member_of), user.id, frozenset(owned))


def scope_of(request) -> Scope:
    """The scope of the request's user, worked out once per request."""
    scope = getattr(request, "_tenant_scope", None)
    if scope is None or scope.user_id != request.user.pk:
        scope = scope_for(request.user)
        request._tenant_scope = scope
    return scope
