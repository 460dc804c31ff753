"""What the management API's views share: tenant scoping, permissions, audit, validation.

Each resource (tenants, members, keys, providers, deployments, routes, limits,
audit) is a viewset in the app that owns the model, on this base. Rows come
from tenants.scoping, so another tenant's id is a 404 and lists leave its rows
out; what a role may do to a row it can see is also decided there (403 when
not). Writes run in a transaction that is rolled back if the row, as saved,
is not one the user may have; the audit trail (tenants/audit.py) records each
write with the API user as its actor.
"""

import copy

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from rest_framework import pagination, permissions, serializers, viewsets
from rest_framework.exceptions import PermissionDenied, ValidationError

from tenants import audit
from tenants.models import Tenant
from tenants.scoping import scope_of

METHOD_ACTIONS = {"GET": "view", "HEAD": "view", "OPTIONS": "view", "POST": "add", "PUT": "change",
                  "PATCH": "change", "DELETE": "delete"}


class ScopedPermission(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active):
            return False
        if view.detail:
            return True  # decided on the row, once out-of-scope rows have given 404
        return scope_of(request).may(view.required_action(request), view.queryset.model)

    def has_object_permission(self, request, view, obj) -> bool:
        return scope_of(request).allows(view.required_action(request), obj)


class ModelNamesField(serializers.ListField):
    """`allowed_models`: a list of model names. The column is JSON, and a form's "null"
    or a JSON object stored there broke the tenant's keys (and its create was a 500)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(child=serializers.CharField(max_length=200), required=False, **kwargs)


class Pages(pagination.PageNumberPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class ScopedViewSet(viewsets.ModelViewSet):
    permission_classes = [ScopedPermission]
    pagination_class = Pages
    # Custom actions and the model action they need, e.g. {"revoke": "change"}.
    action_permissions: dict[str, str] = {}

    def required_action(self, request) -> str:
        return self.action_permissions.get(self.action) or METHOD_ACTIONS.get(request.method, "change")

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        context = audit.current()
        if context is not None and request.user.is_authenticated:
            context.actor = request.user  # DRF may have authenticated someone the session does not know

    def get_queryset(self):
        return scope_of(self.request).visible(super().get_queryset())

    def check_saved(self, action: str, obj) -> None:
        """Refuse (and roll back) a write that leaves a row the user may not have."""
        if not scope_of(self.request).allows(action, obj):
            raise PermissionDenied("Your role does not allow this.")

    def perform_create(self, serializer) -> None:
        with transaction.atomic():
            self.check_saved("add", serializer.save())

    def perform_update(self, serializer) -> None:
        with transaction.atomic():
            self.check_saved("change", serializer.save())

    def perform_destroy(self, instance) -> None:
        with transaction.atomic():
            instance.delete()


# --- Fields and serializers ---------------------------------------------------------


class OnlyTenant:
    """The default tenant: the only one the user may put rows of this model in (else none)."""

    requires_context = True

    def __call__(self, field):
        scope = scope_of(field.context["request"])
        if scope.everything:
            return None
        model = field.parent.Meta.model
        choices = scope.tenants_for("add", model)
        return Tenant.objects.get(pk=next(iter(choices))) if len(choices) == 1 else None

    def __repr__(self) -> str:
        return "OnlyTenant()"


class TenantField(serializers.PrimaryKeyRelatedField):
    """A tenant the user may put rows of the serializer's model in; defaults to their only one."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("queryset", Tenant.objects.all())
        kwargs.setdefault("default", OnlyTenant())
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def get_queryset(self):
        scope = scope_of(self.context["request"])
        if scope.everything:
            return super().get_queryset()
        model = self.parent.Meta.model
        return super().get_queryset().filter(
            pk__in=scope.tenants_for("add", model) | scope.tenants_for("change", model))


class ScopedKey(serializers.PrimaryKeyRelatedField):
    """The id of a row the user may see (`manage`: may change); any other id "does not exist"."""

    def __init__(self, manage: bool = False, **kwargs) -> None:
        self.manage = manage
        super().__init__(**kwargs)

    def get_queryset(self):
        scope = scope_of(self.context["request"])
        rows = super().get_queryset()
        return scope.manageable(rows) if self.manage else scope.visible(rows)


class ScopedSerializer(serializers.ModelSerializer):
    """Runs the model's own clean() (the admin's checks) and wants a tenant where the row needs one."""

    def validate(self, attrs):
        attrs = super().validate(attrs)
        model = self.Meta.model
        if "tenant" in self.fields and not self.fields["tenant"].read_only and attrs.get("tenant", 0) is None:
            if not model._meta.get_field("tenant").null:
                raise ValidationError({"tenant": "Pick a tenant."})
            if not scope_of(self.context["request"]).everything:
                raise ValidationError({"tenant": "Pick one of your tenants; shared rows are for staff."})
        row = copy.copy(self.instance) if self.instance is not None else model()
        concrete = {f.name for f in model._meta.concrete_fields}
        for name, value in attrs.items():
            if name in concrete:
                setattr(row, name, value)
        try:
            row.clean()
        except DjangoValidationError as error:
            raise ValidationError(serializers.as_serializer_error(error)) from None
        return attrs
