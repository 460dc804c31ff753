"""Adding people to a tenant, from the admin and the management API alike."""

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError

from .models import Membership, Tenant
from .scoping import Scope


def users_visible_to(scope: Scope):
    """Users a tenant admin may add by name: those already in a tenant they manage."""
    users = get_user_model()._default_manager.all()
    return users if scope.everything else users.filter(memberships__tenant_id__in=scope.managed).distinct()


def check_new_member(scope: Scope, tenant: Tenant, username: str, password: str) -> None:
    """Raise ValidationError (by field) if `username` cannot join `tenant` this way.

    A name the caller cannot see (free, or a user of other tenants only) is a new
    user as far as they may know: it gets the same checks, in the same order, and
    the same answers, whether the name is free or taken; only a create that would
    otherwise succeed learns that the name is not available (usernames are global:
    people sign in with them)."""
    user = get_user_model()._default_manager.filter(username=username).first()
    if user is None or not users_visible_to(scope).filter(pk=user.pk).exists():
        if not password:
            raise ValidationError({"password": "A new user needs a first password."})  # nosec B105: a message
        validate_password(password)
        if user is not None:
            # Joining someone from elsewhere is for staff.
            raise ValidationError({"username": "That username is not available; pick another."})
        return
    if Membership.objects.filter(tenant=tenant, user=user).exists():
        raise ValidationError({"username": "Already a member of this tenant."})


def member_add(tenant: Tenant, username: str, role: str, *, email: str = "", password: str = "") -> Membership:
    """An unsaved membership of `username` in `tenant`, creating the user (with the
    first password) if the name is new. Members sign in to the admin, so they are staff."""
    users = get_user_model()._default_manager
    user = users.filter(username=username).first()
    if user is None:
        user = users.create_user(username, email, password, is_staff=True)
    elif not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    return Membership(tenant=tenant, user=user, role=role)
