"""Management API: routes, with their targets and rules written as part of the route."""

from django.db import transaction

from providers.models import Deployment
from tenants.manage_api import ScopedKey, ScopedSerializer, ScopedViewSet, TenantField

from .models import Route, RouteRule, RouteTarget


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
