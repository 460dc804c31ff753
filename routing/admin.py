from django.contrib import admin

from gateway_project.lib.readonly_admin import ReadOnlyAdmin
from tenants.scoped_admin import ScopedAdminMixin, ScopedInlineMixin

from . import breakers
from .cache.purge import cache_purge
from .models import CachePolicy, CircuitEvent, Route, RouteRule, RouteTarget


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


@admin.register(CachePolicy)
class CachePolicyAdmin(ScopedAdminMixin, admin.ModelAdmin):
    """Response cache policies (docs/cache.md); the action purges what the chosen policies cached."""

    list_display = ["tenant", "api_key", "model", "mode", "ttl_seconds", "expiry", "hits_count_against_limits"]
    list_filter = ["mode", "expiry", "tenant"]
    search_fields = ["model"]
    autocomplete_fields = ["api_key"]
    actions = ["purge_answers"]

    @admin.action(description="Purge the cached answers of the selected policies' tenants and models")
    def purge_answers(self, request, queryset) -> None:
        gone = sum(cache_purge(policy.tenant, policy.model) for policy in queryset.select_related("tenant"))
        self.message_user(request, f"{gone} cached answers purged.")


from .batches import admin as batches_admin  # noqa: E402, F401 (registers files and batches)
from .experiments import admin as experiments_admin  # noqa: E402, F401 (registers the experiments)
from .guardrails import admin as guardrails_admin  # noqa: E402, F401 (registers the guardrail policies)
from .prompts import admin as prompts_admin  # noqa: E402, F401 (registers the prompt templates)
