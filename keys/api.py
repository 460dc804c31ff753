"""Management API: gateway keys. A key's secret is in the response that creates it
(or rotates to it) and nowhere else, ever."""

from datetime import timedelta

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from tenants import audit
from tenants.manage_api import ModelNamesField, ScopedSerializer, ScopedViewSet, TenantField
from tenants.scoping import scope_of

from . import caps, services
from .models import ApiKey

# The answer that carries a secret must not be kept by a browser or a proxy.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class ApiKeySerializer(ScopedSerializer):
    tenant = TenantField(help_text="Fixed once the key exists.")
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True,
                                              help_text="The key's owner: members see and manage their own keys.")
    state = serializers.ChoiceField(choices=["active", "rotated", "expired", "revoked"], read_only=True)
    allowed_models = ModelNamesField(help_text="Public model names this key may call; empty means all its tenant's.")

    class Meta:
        model = ApiKey
        fields = ["id", "tenant", "name", "prefix", "allowed_models", "default_model", "expires_at", "state",
                  "revoked_at", "last_used_at", "replaced_by", "created_by", "created_at"]
        read_only_fields = ["prefix", "revoked_at", "last_used_at", "replaced_by", "created_at"]

    def get_fields(self):
        fields = super().get_fields()
        if self.instance is not None:
            fields["tenant"].read_only = True  # moving a live secret to another tenant: never
        return fields

    def validate(self, attrs):
        attrs = super().validate(attrs)
        scope = scope_of(self.context["request"])
        tenant = self.instance.tenant if self.instance is not None else attrs.get("tenant")
        if tenant is None or not caps.bound_by_caps(scope, tenant.pk):
            return attrs
        try:  # a plain member: only narrower (keys/caps.py)
            if self.instance is not None:
                caps.check_narrowing(self.instance, attrs)
                return attrs
            return caps.cap_new_key(tenant.pk, scope.user_id, attrs)
        except DjangoValidationError as error:
            raise serializers.ValidationError(serializers.as_serializer_error(error)) from None


class NewApiKeySerializer(ApiKeySerializer):
    secret = serializers.CharField(read_only=True, help_text="The key itself. Shown in this response only.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]


class RotateSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(
        min_value=0, max_value=90 * 86400, default=86400,
        help_text="How long the old key keeps working (0: refused at once).")


class KeyViewSet(ScopedViewSet):
    """Gateway API keys. Owners and admins manage their tenant's keys; members their own."""

    queryset = ApiKey.objects.select_related("created_by")
    serializer_class = ApiKeySerializer
    action_permissions = {"revoke": "change", "rotate": "change"}

    def _shown_once(self, key: ApiKey, secret: str, code: int) -> Response:
        audit.record("key.reveal", key)
        key.secret = secret
        return Response(NewApiKeySerializer(key, context=self.get_serializer_context()).data, status=code,
                        headers=NO_STORE)

    @extend_schema(responses={201: NewApiKeySerializer})
    def create(self, request, *args, **kwargs) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key = ApiKey(**serializer.validated_data, created_by=request.user)
        capped = caps.bound_by_caps(scope_of(request), key.tenant_id)

        def save() -> None:
            key.save()
            self.check_saved("add", key)

        secret = services.save_new(key, caps.capping_keys(key) if capped else (), save=save)
        return self._shown_once(key, secret, status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None) -> Response:
        """Refuse the key from now on, on every gateway process."""
        key = self.get_object()
        services.revoke(key)
        return Response(self.get_serializer(key).data)

    @extend_schema(request=RotateSerializer, responses={201: NewApiKeySerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request, pk=None) -> Response:
        """Issue a replacement (same settings, owner and limits); the old key works for the grace period."""
        key = self.get_object()
        body = RotateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if key.is_revoked or key.is_expired:
            raise serializers.ValidationError({"detail": "Only a key in use can be rotated."})
        if key.replaced_by_id:
            raise serializers.ValidationError({"detail": "This key was rotated already: rotate its replacement."})
        new, secret = services.rotate(key, timedelta(seconds=body.validated_data["grace_seconds"]))
        return self._shown_once(new, secret, status.HTTP_201_CREATED)
