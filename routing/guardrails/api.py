"""Management API: guardrail policies, with their checks written as part of the policy."""

from django.db import transaction
from rest_framework import serializers

from keys.models import ApiKey
from tenants.manage_api import ScopedKey, ScopedSerializer, ScopedViewSet, TenantField

from .models import GuardrailCheck, GuardrailPolicy


class GuardrailCheckSerializer(ScopedSerializer):
    webhook_secret = serializers.CharField(write_only=True, required=False, allow_blank=True,
                                           help_text="Webhook: the HMAC key (stored encrypted, never shown).")

    class Meta:
        model = GuardrailCheck
        fields = ["order", "kind", "stage", "action", "failure_mode", "pii_types", "phone_region", "terms",
                  "patterns", "model", "categories", "url", "allow_private_network", "timeout_ms", "webhook_secret"]

    def validate_allow_private_network(self, value: bool) -> bool:
        if value and not self.context["request"].user.is_superuser:
            raise serializers.ValidationError("Only staff can let a webhook call private networks.")
        return value

    def validate(self, attrs):
        secret = attrs.pop("webhook_secret", None)
        attrs = super().validate(attrs)
        if secret is not None:
            attrs["webhook_secret"] = secret
        return attrs


class GuardrailPolicySerializer(ScopedSerializer):
    tenant = TenantField(allow_null=False)
    api_key = ScopedKey(queryset=ApiKey.objects.all(), required=False, allow_null=True)
    checks = GuardrailCheckSerializer(many=True, required=False, help_text="Replaces all checks when given.")

    class Meta:
        model = GuardrailPolicy
        fields = ["id", "name", "tenant", "api_key", "route", "is_active", "restore", "hold_back_chars", "checks",
                  "created_at"]
        read_only_fields = ["created_at"]

    def _save(self, policy: GuardrailPolicy, checks) -> GuardrailPolicy:
        with transaction.atomic():
            policy.save()
            if checks is not None:
                policy.checks.all().delete()
                for n, attrs in enumerate(checks):
                    secret = attrs.pop("webhook_secret", "")
                    check = GuardrailCheck(policy=policy, **{"order": n, **attrs})
                    check.set_secret(secret)
                    check.save()
        return policy

    def create(self, validated_data):
        checks = validated_data.pop("checks", [])
        return self._save(GuardrailPolicy(**validated_data), checks)

    def update(self, instance, validated_data):
        checks = validated_data.pop("checks", None)
        for name, value in validated_data.items():
            setattr(instance, name, value)
        return self._save(instance, checks)


class GuardrailPolicyViewSet(ScopedViewSet):
    """Guardrail policies of your tenant: checks on prompts and answers (docs/guardrails.md)."""

    queryset = GuardrailPolicy.objects.prefetch_related("checks")
    serializer_class = GuardrailPolicySerializer
