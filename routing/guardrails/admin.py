"""Guardrail policies in the admin: a policy with its checks inline, in their order."""

from django import forms
from django.contrib import admin

from tenants.scoped_admin import ScopedAdminMixin, ScopedInlineMixin

from .models import GuardrailCheck, GuardrailPolicy


class GuardrailCheckForm(forms.ModelForm):
    url = forms.URLField(required=False, max_length=500, assume_scheme="https",
                         help_text="Webhook: where the text is posted.")
    webhook_secret = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False),
                                     help_text="Webhook: the HMAC key (stored encrypted; empty keeps the current one).")

    class Meta:
        model = GuardrailCheck
        fields = "__all__"

    def save(self, commit=True):
        check = super().save(commit=False)
        if self.cleaned_data.get("webhook_secret"):
            check.set_secret(self.cleaned_data["webhook_secret"])
        if commit:
            check.save()
        return check


class GuardrailCheckInline(ScopedInlineMixin, admin.StackedInline):
    model = GuardrailCheck
    form = GuardrailCheckForm
    extra = 0

    def get_readonly_fields(self, request, obj=None):
        # Reaching private networks is a staff grant, as for providers.
        return () if request.user.is_superuser else ("allow_private_network",)


@admin.register(GuardrailPolicy)
class GuardrailPolicyAdmin(ScopedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "tenant", "api_key", "route", "is_active", "restore"]
    list_filter = ["is_active", "tenant"]
    search_fields = ["name", "route"]
    autocomplete_fields = ["api_key"]
    inlines = [GuardrailCheckInline]
