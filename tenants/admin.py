from django.contrib import admin

from gateway_project.readonly_admin import ReadOnlyAdmin
from usage.admin import LimitInline

from .models import AuditLog, Membership, Tenant


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "is_active", "time_zone", "log_prompts", "created_at"]
    list_filter = ["is_active", "log_prompts"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline, LimitInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__username", "tenant__name"]
    autocomplete_fields = ["user", "tenant"]


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    """Read-only: an audit trail nobody can edit."""

    list_display = ["created_at", "actor_label", "action", "object_type", "object_repr", "tenant", "address"]
    list_filter = ["action", "object_type", "tenant"]
    search_fields = ["object_repr", "actor_label"]
