"""Who sees what: the one place tenant scoping is decided, for the admin and the APIs.

Superusers are the platform's staff and see every tenant. Anyone else sees
the tenants where they are an owner or admin, whole; in tenants where they
are only a member, they see their own keys (the keys they created) and the
usage of those keys. Objects outside that are absent: lists leave them out and
ids give 404, never 403, so nobody learns what exists elsewhere.
"""

from dataclasses import dataclass

from django.db.models import Q

from .models import Membership

MANAGERS = (Membership.Role.OWNER, Membership.Role.ADMIN)


@dataclass(frozen=True)
class Scope:
    everything: bool
    managed: frozenset[int]  # tenants the user administers
    member_of: frozenset[int]  # tenants where the user is a plain member
    user_id: int | None

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
        return Q(**{f"{tenant_field}_id__in": self.managed}) | Q(
            **{f"{tenant_field}_id__in": self.member_of, f"{key_field}__created_by_id": self.user_id})


def scope_for(user) -> Scope:
    if not user.is_authenticated or not user.is_active:
        return Scope(False, frozenset(), frozenset(), None)
    if user.is_superuser:
        return Scope(True, frozenset(), frozenset(), user.id)
    managed, member_of = set(), set()
    for tenant_id, role in Membership.objects.filter(user=user, tenant__is_active=True).values_list(
            "tenant_id", "role"):
        (managed if role in MANAGERS else member_of).add(tenant_id)
    return Scope(False, frozenset(managed), frozenset(member_of), user.id)
