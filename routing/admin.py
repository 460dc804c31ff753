from django.contrib import admin

from gateway_project.lib.readonly_admin import ReadOnlyAdmin
from tenants.scoped_admin import ScopedAdminMixin, ScopedInlineMixin

from . import breakers
from .models import CircuitEvent, Route, RouteRule, RouteTarget


class RouteTargetInline(ScopedInlineMixin, admin.TabularInline):
    model = RouteTarget
    extra = 1
    autocomplete_fields = ["deployment"]
    fields = ["deployment", "priority", "weight", "is_active", "breaker"]
    readonly_fields = ["breaker"]

    @admin.display(description="circuit breaker")
    def breaker(self, obj: RouteTarget) -> str:
        return breakers.shared_state(obj.deployment_id) if obj.pk else "—"


class RouteRuleInline(ScopedInlineMixin, admin.TabularInline):
    model = RouteRule
    fk_name = "route"
    extra = 0
    autocomplete_fields = ["deployment", "sub_route"]


@admin.register(Route)
class RouteAdmin(ScopedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "tenant", "strategy", "hedge_after_ms", "max_attempts", "is_active"]
    list_filter = ["strategy", "is_active", "tenant"]
    search_fields = ["name"]
    autocomplete_fields = ["context_fallback"]
    inlines = [RouteTargetInline, RouteRuleInline]


@admin.register(CircuitEvent)
class CircuitEventAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    """Breaker history: when traffic left a deployment, and why. Read-only."""

    list_display = ["created_at", "deployment", "state", "reason"]
    list_filter = ["state", "deployment__provider"]
    date_hierarchy = "created_at"


from .guardrails import admin as guardrails_admin  # noqa: E402, F401 (registers the guardrail policies)
