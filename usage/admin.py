from decimal import Decimal

from django.contrib import admin

from gateway_project.lib import db_replica
from gateway_project.lib.readonly_admin import ReadOnlyAdmin
from keys.admin import ApiKeyAdmin
from tenants.admin import TenantAdmin
from tenants.scoped_admin import ScopedAdminMixin, ScopedInlineMixin
from tenants.scoping import scope_of

from . import anomalies, limits
from .models import (
    AnomalyMute,
    Feedback,
    Limit,
    PromptLog,
    ReportDelivery,
    SpendAnomaly,
    StoredResponse,
    UsageDeadLetter,
    UsageRecord,
    UsageRollup,
)


@admin.register(UsageRecord)
class UsageRecordAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    """The billing ledger: read-only."""

    list_display = ["created_at", "request_id", "tenant", "key_prefix", "public_model", "provider_name",
                    "prompt_tokens", "cached_tokens", "cache_write_tokens", "completion_tokens", "reasoning_tokens",
                    "cost_usd", "latency_ms", "ttft_ms", "status", "streamed"]
    list_filter = ["status", "streamed", "endpoint", "tokens_estimated", "tenant"]
    search_fields = ["request_id", "public_model", "upstream_model", "key_prefix", "prompt_template", "variant"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]

    def changelist_view(self, request, extra_context=None):
        """The ledger's list, its counts and its date drill-down, read from the database replica if there
        is one (gateway_project.lib.db_replica). The user's scope and permissions come from the primary,
        worked out first; the page is rendered inside, where its rows are read."""
        if request.method != "GET":
            return super().changelist_view(request, extra_context)
        scope_of(request)
        request.user.get_all_permissions()  # cached on the user for the checks inside
        return db_replica.read(_rendered, super().changelist_view, request, extra_context)


def _rendered(view, *args):
    response = view(*args)
    return response.render() if hasattr(response, "render") else response


@admin.register(Feedback)
class FeedbackAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    """What clients said of their calls (POST /v1/feedback): read-only."""

    list_display = ["created_at", "request_id", "tenant", "score", "label"]
    list_filter = ["label", "tenant"]
    search_fields = ["request_id", "label"]


@admin.register(PromptLog)
class PromptLogAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    """Redacted prompts of tenants that log them, until the prompt purge deletes them."""

    list_display = ["created_at", "request_id", "tenant", "public_model", "expires_at"]
    list_filter = ["tenant"]
    search_fields = ["request_id"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]


@admin.register(StoredResponse)
class StoredResponseAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    """Responses API answers kept for previous_response_id, until their retention ends."""

    list_display = ["created_at", "response_id", "tenant", "model", "status", "previous_response_id", "expires_at"]
    list_filter = ["status", "tenant"]
    search_fields = ["response_id", "previous_response_id", "model"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]


def _use_summary(limit: Limit) -> str:
    use = limits.current_use(limit)
    if not use:
        return "—"
    parts = []
    if limit.requests_per_minute:
        parts.append(f"{use['requests_last_minute']}/{limit.requests_per_minute} req/min")
    if limit.tokens_per_minute:
        parts.append(f"{use['tokens_last_minute']}/{limit.tokens_per_minute} tok/min")
    if limit.max_concurrent:
        parts.append(f"{use['in_flight']}/{limit.max_concurrent} in flight")
    if limit.token_quota:
        parts.append(f"{use['period_tokens']}/{limit.token_quota} tokens this {limit.period}")
    if limit.budget_usd:
        parts.append(f"${Decimal(use['period_micros']) / 1_000_000:.6f}/${limit.budget_usd} this {limit.period}")
    return "; ".join(parts) or "—"


@admin.register(Limit)
class LimitAdmin(ScopedAdminMixin, admin.ModelAdmin):
    """Limits with their current use, read live from the counters that enforce them."""

    list_display = ["__str__", "tenant", "api_key", "model", "requests_per_minute", "tokens_per_minute",
                    "max_concurrent", "period", "token_quota", "budget_usd", "current_use"]
    list_filter = ["tenant", "period"]
    search_fields = ["tenant__name", "model", "api_key__prefix"]
    autocomplete_fields = ["tenant", "api_key"]
    readonly_fields = ["current_use"]

    @admin.display(description="current use")
    def current_use(self, obj: Limit) -> str:
        return _use_summary(obj) if obj.pk else "—"

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "api_key" and not scope_of(request).everything:
            kwargs["required"] = True  # tenant-wide limits are staff's (tenants/scoping.py)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class LimitInline(ScopedInlineMixin, admin.TabularInline):
    model = Limit
    extra = 0
    fields = ["api_key", "model", "requests_per_minute", "tokens_per_minute", "max_concurrent", "period",
              "token_quota", "budget_usd", "alert_thresholds", "offline_credit_usd", "current_use"]
    readonly_fields = ["current_use"]

    @admin.display(description="current use")
    def current_use(self, obj: Limit) -> str:
        return _use_summary(obj) if obj.pk else "—"


class KeyLimitInline(LimitInline):
    fk_name = "api_key"
    fields = [f for f in LimitInline.fields if f != "api_key"]


# Limits belong on the pages of what they bound: the usage app, which depends on keys and
# tenants, adds them to those apps' admins (registered before this module runs).
TenantAdmin.inlines = [*TenantAdmin.inlines, LimitInline]
ApiKeyAdmin.inlines = [*ApiKeyAdmin.inlines, KeyLimitInline]


@admin.register(UsageRollup)
class UsageRollupAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    list_display = ["bucket", "granularity", "tenant", "key_prefix", "public_model", "provider_name", "requests",
                    "errors", "prompt_tokens", "cached_tokens", "cache_write_tokens", "completion_tokens",
                    "reasoning_tokens", "cost_usd", "latency_p50_ms", "latency_p95_ms"]
    list_filter = ["granularity", "tenant", "provider_name"]
    date_hierarchy = "bucket"
    list_select_related = ["tenant"]


@admin.register(ReportDelivery)
class ReportDeliveryAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    list_display = ["created_at", "period", "period_start", "tenant", "recipients", "sent_at"]
    list_filter = ["period", "tenant"]


@admin.register(UsageDeadLetter)
class UsageDeadLetterAdmin(ReadOnlyAdmin):
    """Usage events the database refused: staff only (a raw event may name any tenant), read-only.

    Not scoped: tenant users hold no Django permissions, so only superusers open it.
    """

    list_display = ["created_at", "request_id", "tenant_id", "short_reason"]
    search_fields = ["request_id", "reason"]
    date_hierarchy = "created_at"

    @admin.display(description="reason")
    def short_reason(self, obj: UsageDeadLetter) -> str:
        return obj.reason[:120]


@admin.register(SpendAnomaly)
class SpendAnomalyAdmin(ScopedAdminMixin, admin.ModelAdmin):
    """Hours of unusual spend (usage.anomalies): read, acknowledge, or mute the key."""

    list_display = ["last_hour", "tenant", "key_prefix", "public_model", "hours", "metrics", "spend_usd",
                    "baseline_spend_usd", "requests", "baseline_requests", "score", "status", "notified_at"]
    list_filter = ["status", "tenant", "public_model"]
    search_fields = ["key_prefix", "public_model"]
    date_hierarchy = "last_hour"
    list_select_related = ["tenant"]
    actions = ["acknowledge", "mute_keys"]
    readonly_fields = ["summary", "tenant", "api_key", "key_prefix", "public_model", "started_at", "last_hour",
                       "hours", "metrics", "spend_usd", "baseline_spend_usd", "requests", "baseline_requests", "score",
                       "status", "acknowledged_by", "acknowledged_at", "notified_at", "created_at"]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False

    @admin.display(description="what happened")
    def summary(self, obj: SpendAnomaly) -> str:
        return anomalies.describe(obj)

    @admin.action(description="Acknowledge the selected anomalies", permissions=["change"])
    def acknowledge(self, request, queryset):
        done = anomalies.acknowledge(self.get_queryset(request).filter(pk__in=queryset), request.user)
        self.message_user(request, f"{done} anomalies acknowledged.")

    @admin.action(description="Mute anomalies for the keys of the selected ones", permissions=["change"])
    def mute_keys(self, request, queryset):
        muted = anomalies.mute_keys(self.get_queryset(request).filter(pk__in=queryset), request.user)
        self.message_user(request, f"{muted} keys muted; their anomalies acknowledged.")


@admin.register(AnomalyMute)
class AnomalyMuteAdmin(ScopedAdminMixin, admin.ModelAdmin):
    """Keys whose anomalies are not looked for; delete a mute to watch the key again."""

    list_display = ["api_key", "tenant", "until", "created_by", "created_at"]
    list_filter = ["tenant"]
    readonly_fields = ["tenant", "api_key", "created_by", "created_at"]
    fields = ["tenant", "api_key", "until", "created_by", "created_at"]

    def has_add_permission(self, request):
        return False  # muted from an anomaly (its "Mute" action)
