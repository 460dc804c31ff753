"""Management API: tenants, their members, and the audit trail (read-only)."""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers

from gateway_project.lib.rest import query_moment, query_text
from tenants.manage_api import ModelNamesField, ScopedSerializer, ScopedViewSet, TenantField

from . import members
from .models import AuditLog, Membership, Tenant
from .scoping import TENANT_FIELDS_FOR_OWNERS, scope_of


class TenantSerializer(ScopedSerializer):
    allowed_models = ModelNamesField(help_text="Public model names this tenant may call; empty means every model "
                                               "it can see.")

    class Meta:
        model = Tenant
        fields = ["id", "name", "slug", "is_active", "allowed_models", "default_model", "time_zone", "created_at"]
        read_only_fields = ["created_at"]

    def get_fields(self):
        fields = super().get_fields()
        if not scope_of(self.context["request"]).everything:
            for name, field in fields.items():
                if name not in TENANT_FIELDS_FOR_OWNERS:
                    field.read_only = True
        return fields


@extend_schema_view(
    create=extend_schema(description="Staff only."),
    destroy=extend_schema(description="Staff only. Deletes the tenant's keys, members, routes and limits."),
    partial_update=extend_schema(description="Owners may change name, default_model and time_zone; staff all."),
)
class TenantViewSet(ScopedViewSet):
    """Tenants: staff see all; owners, admins and members see their own."""

    queryset = Tenant.objects.all()
    serializer_class = TenantSerializer


class MemberSerializer(ScopedSerializer):
    tenant = TenantField()
    user = serializers.CharField(source="user.username", read_only=True)
    username = serializers.CharField(write_only=True, max_length=150,
                                     help_text="A new user's name, or someone already in one of your tenants.")
    email = serializers.EmailField(write_only=True, required=False, allow_blank=True)
    password = serializers.CharField(write_only=True, required=False, allow_blank=True,
                                     style={"input_type": "password"},
                                     help_text="A new user's first password. Never returned.")

    class Meta:
        model = Membership
        fields = ["id", "tenant", "user", "username", "email", "password", "role", "created_at"]
        read_only_fields = ["created_at"]
        validators = []  # one membership per user and tenant: checked by members.check_new_member

    def get_fields(self):
        fields = super().get_fields()
        if self.instance is not None:  # an existing membership: only its role changes
            for name in ("tenant", "username", "email", "password"):
                fields[name].read_only = True
        return fields

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if self.instance is None:
            try:
                members.check_new_member(scope_of(self.context["request"]), attrs["tenant"], attrs["username"],
                                         attrs.get("password", ""))
            except DjangoValidationError as error:
                raise serializers.ValidationError(serializers.as_serializer_error(error)) from None
        return attrs

    def create(self, validated_data):
        membership = members.member_add(validated_data["tenant"], validated_data["username"],
                                        validated_data.get("role", Membership.Role.MEMBER),
                                        email=validated_data.get("email", ""),
                                        password=validated_data.get("password", ""))
        membership.save()
        return membership


class MemberViewSet(ScopedViewSet):
    """People in a tenant and their roles. Owners manage everyone; admins manage admins and members."""

    queryset = Membership.objects.select_related("user", "tenant").order_by("tenant__name", "user__username")
    serializer_class = MemberSerializer

    def perform_create(self, serializer) -> None:
        with transaction.atomic():  # the new user goes too if the membership is refused
            self.check_saved("add", serializer.save())


class AuditLogSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label")
    object = serializers.CharField(source="object_repr")

    class Meta:
        model = AuditLog
        fields = ["id", "created_at", "action", "actor", "tenant", "object_type", "object_id", "object",
                  "changes", "address", "request_id"]
        read_only_fields = fields


FILTERS = [
    OpenApiParameter("action", str, description="e.g. create, update, delete, key.rotate, login.failed"),
    OpenApiParameter("actor", str, description="Username"),
    OpenApiParameter("tenant", int, description="Tenant id"),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="From this time (ISO 8601)"),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="Before this time"),
]


@extend_schema_view(list=extend_schema(parameters=FILTERS))
class AuditLogViewSet(ScopedViewSet):
    """The audit trail, newest first: read-only for everyone."""

    queryset = AuditLog.objects.all()
    serializer_class = AuditLogSerializer
    http_method_names = ["get", "head", "options"]

    def get_queryset(self):
        rows = super().get_queryset()
        params = self.request.query_params
        if params.get("tenant") and not params["tenant"].isdigit():
            raise serializers.ValidationError({"tenant": "A tenant id."})
        for param, lookup in (("action", "action"), ("actor", "actor_label"), ("tenant", "tenant_id")):
            if value := query_text(params, param):
                rows = rows.filter(**{lookup: value})
        for param, lookup in (("since", "created_at__gte"), ("until", "created_at__lt")):
            if moment := query_moment(params, param, "An ISO 8601 date and time."):
                rows = rows.filter(**{lookup: moment})
        return rows
