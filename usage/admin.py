from django.contrib import admin

from .models import UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """The billing ledger: read-only."""

    list_display = ["created_at", "request_id", "tenant", "key_prefix", "public_model", "provider_name",
                    "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "ttft_ms", "status",
                    "streamed"]
    list_filter = ["status", "streamed", "endpoint", "tokens_estimated", "tenant"]
    search_fields = ["request_id", "public_model", "upstream_model", "key_prefix"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
