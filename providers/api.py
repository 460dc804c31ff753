"""Management API: providers (upstream accounts) and their deployments.

A provider's API key is write-only: accepted on create and update, stored
encrypted, never returned (`api_key_set` says whether one is stored). What only
staff may grant (`allow_private_network`, `api_key_env`) is dropped when anyone
else moves the provider to another scheme, host or port (docs/security.md).
"""

from rest_framework import serializers

from tenants.manage_api import ScopedKey, ScopedSerializer, ScopedViewSet, TenantField
from tenants.scoping import scope_of

from . import http_headers
from .models import Deployment, Provider
from .targets import PRICE_FIELDS


class ProviderSerializer(ScopedSerializer):
    tenant = TenantField(help_text="Empty: shared by every tenant (staff only).")
    api_key = serializers.CharField(write_only=True, required=False, allow_blank=True, trim_whitespace=True,
                                    style={"input_type": "password"},
                                    help_text="Write-only. Empty string removes the stored key; omit to keep it.")
    api_key_set = serializers.BooleanField(source="has_api_key", read_only=True)

    class Meta:
        model = Provider
        fields = ["id", "name", "kind", "base_url", "api_key", "api_key_set", "api_key_env", "extra_headers",
                  "settings", "tenant", "is_active", "allow_private_network", "created_at"]
        read_only_fields = ["created_at"]
        # Names are unique per tenant: checked in validate(), once the tenant is one of
        # the caller's. DRF's own validator ran first and, given no tenant, answered
        # whether a shared provider of that name exists.
        validators = []

    def validate(self, attrs):
        if self.instance is not None and "base_url" in attrs and not self._staff():
            # A grant holds for the host staff gave it for (providers/models.py, moved_grants).
            attrs.update(self.instance.moved_grants(attrs["base_url"]))
        attrs = super().validate(attrs)
        name = attrs.get("name", getattr(self.instance, "name", None))
        tenant = attrs["tenant"] if "tenant" in attrs else getattr(self.instance, "tenant", None)
        same = Provider.objects.filter(name=name, tenant=tenant).exclude(pk=getattr(self.instance, "pk", None))
        if same.exists():
            raise serializers.ValidationError({"name": "This tenant has a provider of that name already."})
        return attrs

    def get_fields(self):
        fields = super().get_fields()
        if not self._staff():
            # Calling private networks is staff's decision alone (docs/security.md).
            fields["allow_private_network"].read_only = True
        return fields

    def _staff(self) -> bool:
        return scope_of(self.context["request"]).everything

    def validate_api_key(self, value: str) -> str:
        if reason := http_headers.value_problem("The API key", value):
            raise serializers.ValidationError(reason)
        return value

    def validate_api_key_env(self, value: str) -> str:
        # The gateway's environment is staff's: a tenant's own key is sent as api_key.
        if value and not self._staff() and value != getattr(self.instance, "api_key_env", ""):
            raise serializers.ValidationError(
                "Only staff can have a provider read its key from the gateway's environment; send api_key.")
        return value

    def _save(self, provider: Provider, secret: str | None) -> Provider:
        if secret is not None:
            provider.set_api_key(secret)
        provider.save()
        return provider

    def create(self, validated_data):
        secret = validated_data.pop("api_key", None)
        return self._save(Provider(**validated_data), secret)

    def update(self, instance, validated_data):
        secret = validated_data.pop("api_key", None)
        for name, value in validated_data.items():
            setattr(instance, name, value)
        return self._save(instance, secret)


class ProviderViewSet(ScopedViewSet):
    """Providers. Tenant owners and admins manage their tenant's own; shared ones are staff's and not listed."""

    queryset = Provider.objects.all()
    serializer_class = ProviderSerializer


class DeploymentSerializer(ScopedSerializer):
    provider = ScopedKey(manage=True, queryset=Provider.objects.all(),
                         help_text="One of your tenant's providers.")

    class Meta:
        model = Deployment
        fields = ["id", "provider", "public_model", "upstream_model", "mode", "context_window",
                  "max_output_tokens", *PRICE_FIELDS, "long_context_threshold", "priority",
                  "supports_vision", "supports_tools", "native_responses", "connect_timeout", "first_byte_timeout", "total_timeout",
                  "is_active", "created_at"]
        read_only_fields = ["created_at"]


class DeploymentViewSet(ScopedViewSet):
    """Deployments: your providers' (editable) and the shared ones your keys can call (read-only)."""

    queryset = Deployment.objects.select_related("provider")
    serializer_class = DeploymentSerializer
