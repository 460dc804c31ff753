from django.contrib import admin, messages
from django.utils import timezone

from tenants.models import AuditLog
from usage.admin import LimitInline

from . import hashing
from .models import ApiKey


class KeyLimitInline(LimitInline):
    fk_name = "api_key"
    fields = [f for f in LimitInline.fields if f != "api_key"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created here and shown once; the admin never sees a stored secret."""

    list_display = ["name", "prefix", "tenant", "state", "expires_at", "last_used_at", "created_at"]
    list_filter = ["tenant", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "tenant__name"]
    readonly_fields = ["prefix", "last_used_at", "revoked_at", "created_by", "created_at"]
    fields = ["tenant", "name", "allowed_models", "default_model", "expires_at", *readonly_fields]
    actions = ["revoke_keys"]
    inlines = [KeyLimitInline]

    @admin.display(description="state")
    def state(self, obj: ApiKey) -> str:
        if obj.is_revoked:
            return "revoked"
        return "expired" if obj.is_expired else "active"

    def get_readonly_fields(self, request, obj=None):
        # The tenant of an existing key is fixed: moving it would hand a live
        # secret to another tenant.
        return self.readonly_fields + (["tenant"] if obj else [])

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        secret = hashing.generate_key()
        obj.prefix = hashing.display_prefix(secret)
        obj.key_hash = hashing.hash_key(secret)
        obj.created_by = request.user
        super().save_model(request, obj, form, change)
        AuditLog.record("key.create", obj, actor=request.user, tenant=obj.tenant,
                        address=request.META.get("REMOTE_ADDR"))
        messages.warning(
            request,
            f"New API key for {obj.tenant}: {secret} — copy it now, it will not be shown again.",
        )

    def save_formset(self, request, form, formset, change):
        # A key's limits belong to the key's tenant.
        for limit in formset.save(commit=False):
            limit.tenant_id = form.instance.tenant_id
            limit.save()
        for gone in formset.deleted_objects:
            gone.delete()

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request, queryset) -> None:
        count = 0
        for key in queryset.filter(revoked_at__isnull=True):
            key.revoke()
            AuditLog.record("key.revoke", key, actor=request.user, tenant=key.tenant,
                            address=request.META.get("REMOTE_ADDR"))
            count += 1
        self.message_user(request, f"Revoked {count} key(s) at {timezone.now():%Y-%m-%d %H:%M:%S} UTC.")
