"""Management API: limits on tenants and keys.

Tenant-wide limits bound what a tenant spends and are staff's; tenant owners
and admins see them and set limits on their keys (tenants/scoping.py).
"""

from rest_framework import serializers

from keys.models import ApiKey
from tenants.manage_api import ScopedKey, ScopedSerializer, ScopedViewSet, TenantField
from tenants.scoping import scope_of

from .models import Limit


class LimitSerializer(ScopedSerializer):
    tenant = TenantField(help_text="Defaults to the key's tenant.")
    api_key = ScopedKey(queryset=ApiKey.objects.all(), required=False, allow_null=True,
                        help_text="Empty: a tenant-wide limit (staff only).")

    class Meta:
        model = Limit
        fields = ["id", "tenant", "api_key", "model", "requests_per_minute", "tokens_per_minute", "max_concurrent",
                  "period", "token_quota", "budget_usd", "alert_thresholds", "offline_credit_usd", "created_at"]
        read_only_fields = ["created_at"]

    def validate(self, attrs):
        key = attrs.get("api_key", getattr(self.instance, "api_key", None))
        if key is not None and attrs.get("tenant", 0) is None:
            attrs["tenant"] = key.tenant
        if key is None and not scope_of(self.context["request"]).everything:
            raise serializers.ValidationError({"api_key": "Tenant-wide limits are set by staff; pick a key."})
        return super().validate(attrs)


class LimitViewSet(ScopedViewSet):
    """Limits: rate, concurrency, quota and budget, per tenant or key, optionally per model."""

    queryset = Limit.objects.select_related("api_key")
    serializer_class = LimitSerializer
