from django import forms
from django.contrib import admin

from gateway_project.lib.readonly_admin import ReadOnlyAdmin
from tenants.scoped_admin import ScopedAdminMixin, ScopedInlineMixin

from . import members
from .models import AuditLog, Membership, SsoIdentity, Tenant
from .scoping import TENANT_FIELDS_FOR_OWNERS, scope_of


class MembershipInline(ScopedInlineMixin, admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(ScopedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "slug", "is_active", "time_zone", "log_prompts", "created_at"]
    list_filter = ["is_active", "log_prompts"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]  # usage/admin.py adds the tenant's limits

    def get_inlines(self, request, obj):
        # Tenant users manage members and key limits on their own pages.
        return self.inlines if scope_of(request).everything else []

    def get_readonly_fields(self, request, obj=None):
        if scope_of(request).everything:
            return super().get_readonly_fields(request, obj)
        return [f.name for f in Tenant._meta.fields if f.name not in TENANT_FIELDS_FOR_OWNERS and f.name != "id"]

    def get_prepopulated_fields(self, request, obj=None):
        return super().get_prepopulated_fields(request, obj) if scope_of(request).everything else {}


class MemberAddForm(forms.ModelForm):
    """How tenant admins add people: a new user by name and first password, or
    someone already in one of their tenants."""

    username = forms.CharField(max_length=150)
    email = forms.EmailField(required=False)
    password = forms.CharField(
        required=False, strip=False, widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="For a new user: their first password. Leave empty to add an existing user.",
    )

    class Meta:
        model = Membership
        fields = ["tenant", "username", "email", "password", "role"]

    def clean(self):
        data = super().clean()
        if data.get("tenant") and data.get("username"):
            members.check_new_member(scope_of(self.request), data["tenant"], data["username"],
                                     data.get("password", ""))
        return data

    def save(self, commit=True):
        membership = members.member_add(self.cleaned_data["tenant"], self.cleaned_data["username"],
                                        self.cleaned_data["role"], email=self.cleaned_data.get("email", ""),
                                        password=self.cleaned_data.get("password", ""))
        self.save_m2m = lambda: None
        if commit:
            membership.save()
        return membership

    def _post_clean(self):
        pass  # the user is made on save; the model's own checks follow in save_model


@admin.register(Membership)
class MembershipAdmin(ScopedAdminMixin, admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__username", "tenant__name"]
    autocomplete_fields = ["user", "tenant"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None and not scope_of(request).everything:
            kwargs["form"] = MemberAddForm
            kwargs["fields"] = MemberAddForm.Meta.fields
            form = super().get_form(request, obj, change, **kwargs)
            form.request = request
            return form
        return super().get_form(request, obj, change, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return ["user", "tenant"] if obj is not None else []

    def formfield_for_choice_field(self, db_field, request, **kwargs):
        scope = scope_of(request)
        if db_field.name == "role" and not scope.everything and not scope.owned:
            kwargs["choices"] = [c for c in Membership.Role.choices if c[0] != Membership.Role.OWNER]
        return super().formfield_for_choice_field(db_field, request, **kwargs)


@admin.register(AuditLog)
class AuditLogAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    """Read-only: an audit trail nobody can edit."""

    list_display = ["created_at", "actor_label", "action", "object_type", "object_repr", "tenant", "address",
                    "request_id"]
    list_filter = ["action", "actor_label", "tenant", "object_type", "created_at"]
    search_fields = ["object_repr", "actor_label", "request_id", "object_id"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]
    fields = ["created_at", "action", "actor_label", "tenant", "object_type", "object_id", "object_repr",
              "changes", "address", "request_id"]

    def get_queryset(self, request):
        # Joined so that rows naming a deleted tenant show it as empty, not fail.
        return super().get_queryset(request).select_related("tenant")


@admin.register(SsoIdentity)
class SsoIdentityAdmin(ReadOnlyAdmin):
    """Who signed in through the identity provider (tenants/sso.py): platform staff's alone, as
    users are (no line in scoping.RULES, so tenant users never see it)."""

    list_display = ["user", "issuer", "subject", "created_at", "last_login_at"]
    search_fields = ["user__username", "user__email", "subject"]
    list_select_related = ["user"]
