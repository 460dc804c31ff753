"""Management API: routes, with their targets and rules written as part of the route."""

from django.db import transaction
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from keys.models import ApiKey
from providers.models import Deployment
from tenants.manage_api import ScopedKey, ScopedSerializer, ScopedViewSet, TenantField
from tenants.models import Tenant
from tenants.scoping import scope_of

from .cache.purge import cache_purge
from .models import CACHE_ENDPOINTS, CachePolicy, Route, RouteRule, RouteTarget


class RouteTargetSerializer(ScopedSerializer):
    deployment = ScopedKey(queryset=Deployment.objects.all(),
                           help_text="One of your providers' deployments, or a shared one.")

    class Meta:
        model = RouteTarget
        fields = ["deployment", "weight", "priority", "is_active"]


class RouteRuleSerializer(ScopedSerializer):
    deployment = ScopedKey(queryset=Deployment.objects.all(), required=False, allow_null=True)
    sub_route = ScopedKey(queryset=Route.objects.all(), required=False, allow_null=True)

    class Meta:
        model = RouteRule
        fields = ["order", "kind", "value", "header", "deployment", "sub_route"]


class RouteSerializer(ScopedSerializer):
    tenant = TenantField(help_text="Empty: a shared route (staff only).")
    context_fallback = ScopedKey(queryset=Route.objects.all(), required=False, allow_null=True)
    targets = RouteTargetSerializer(many=True, required=False, help_text="Replaces all targets when given.")
    rules = RouteRuleSerializer(many=True, required=False, help_text="Replaces all rules when given.")

    class Meta:
        model = Route
        fields = ["id", "name", "tenant", "strategy", "hedge_after_ms", "max_attempts", "deadline_seconds",
                  "context_fallback", "is_active", "targets", "rules", "created_at"]
        read_only_fields = ["created_at"]

    def _save(self, route: Route, targets, rules) -> Route:
        with transaction.atomic():
            route.save()
            # Row by row, not in bulk: each change is audited and reaches the routing tables.
            if targets is not None:
                route.targets.all().delete()
                for target in targets:
                    RouteTarget.objects.create(route=route, **target)
            if rules is not None:
                route.rules.all().delete()
                for rule in rules:
                    RouteRule.objects.create(route=route, **rule)
        return route

    def create(self, validated_data):
        targets, rules = validated_data.pop("targets", []), validated_data.pop("rules", [])
        return self._save(Route(**validated_data), targets, rules)

    def update(self, instance, validated_data):
        targets, rules = validated_data.pop("targets", None), validated_data.pop("rules", None)
        for name, value in validated_data.items():
            setattr(instance, name, value)
        return self._save(instance, targets, rules)


class RouteViewSet(ScopedViewSet):
    """Routes: your tenant's (editable) and the shared ones your keys can call (read-only)."""

    queryset = Route.objects.prefetch_related("targets", "rules")
    serializer_class = RouteSerializer


class CachePolicySerializer(ScopedSerializer):
    tenant = TenantField()
    api_key = ScopedKey(queryset=ApiKey.objects.all(), required=False, allow_null=True,
                        help_text="Empty: every key of the tenant.")
    endpoints = serializers.ListField(child=serializers.ChoiceField(choices=CACHE_ENDPOINTS), required=False)

    class Meta:
        model = CachePolicy
        fields = ["id", "tenant", "api_key", "model", "mode", "ttl_seconds", "expiry", "endpoints",
                  "cache_tool_calls", "max_answer_bytes", "hits_count_against_limits", "semantic_threshold",
                  "semantic_embedding_model", "created_at"]
        read_only_fields = ["created_at"]

    def validate(self, attrs):
        key = attrs.get("api_key", getattr(self.instance, "api_key", None))
        if key is not None and attrs.get("tenant", 0) is None:
            attrs["tenant"] = key.tenant
        return super().validate(attrs)


class CachePurgeSerializer(serializers.Serializer):
    tenant = serializers.PrimaryKeyRelatedField(queryset=Tenant.objects.all())
    model = serializers.CharField(max_length=200, required=False, allow_blank=True, default="",
                                  help_text="Only this public model's or route's answers.")
    entry = serializers.RegexField(r"^[0-9a-f]{32}$", required=False, allow_blank=True, default="",
                                   help_text="Only this entry (the x-gateway-cache-key of an answer).")


class CachePolicyViewSet(ScopedViewSet):
    """Response cache policies per tenant, key or model, and purging cached answers (docs/cache.md)."""

    queryset = CachePolicy.objects.select_related("api_key")
    serializer_class = CachePolicySerializer
    action_permissions = {"purge": "delete"}

    @extend_schema(request=CachePurgeSerializer, responses={200: inline_serializer(
        "CachePurged", {"purged": serializers.IntegerField()})})
    @action(detail=False, methods=["post"])
    def purge(self, request):
        """Delete a tenant's cached answers: all, one model's or route's, or one entry."""
        given = CachePurgeSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        tenant = given.validated_data["tenant"]
        if tenant.id not in scope_of(request).tenants_for("delete", CachePolicy) and not scope_of(request).everything:
            raise NotFound("No such tenant.")
        gone = cache_purge(tenant, given.validated_data["model"], given.validated_data["entry"])
        return Response({"purged": gone})
