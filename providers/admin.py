from django import forms
from django.contrib import admin, messages

from gateway_project.lib.readonly_admin import ReadOnlyAdmin
from tenants.scoped_admin import ScopedAdminMixin, ScopedInlineMixin
from tenants.scoping import scope_of

from . import health, http_headers, key_env
from .connection import check_connection
from .models import Deployment, HealthCheck, Provider


class ProviderForm(forms.ModelForm):
    """The provider secret is write-only: typed in, stored encrypted, never shown.

    `staff` is set by the admin for the signed-in user: only staff grant a provider
    private networks or a key from the environment, and for its current host alone.
    """

    staff = False

    base_url = forms.URLField(max_length=500, assume_scheme="https", help_text="For example https://api.openai.com/v1")
    api_key = forms.CharField(
        label="API key",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Leave empty to keep the current key. Stored encrypted; never displayed.",
    )
    clear_api_key = forms.BooleanField(label="Remove the stored API key", required=False)

    class Meta:
        model = Provider
        fields = ["name", "kind", "base_url", "api_key", "clear_api_key", "api_key_env", "extra_headers",
                  "settings", "tenant", "is_active", "allow_private_network"]

    def clean_api_key(self) -> str:
        secret = self.cleaned_data.get("api_key", "")
        if secret and (reason := http_headers.value_problem("The API key", secret)):
            raise forms.ValidationError(reason)
        return secret

    def clean(self):
        cleaned = super().clean()
        if not self.staff and self.instance.pk:
            # Before the model's clean() checks the new URL against these grants.
            if cleaned.get("base_url"):
                for name, off in self.instance.moved_grants(cleaned["base_url"]).items():
                    setattr(self.instance, name, off)
            if self.instance.api_key_env and key_env.refusal(self.instance.api_key_env):
                # It sends nothing already, and this user cannot edit it: drop it rather than refuse the save.
                self.instance.api_key_env = ""
        return cleaned

    def save(self, commit=True):
        provider = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            provider.set_api_key("")
        elif self.cleaned_data.get("api_key"):
            provider.set_api_key(self.cleaned_data["api_key"])
        if commit:
            provider.save()
        return provider


def other_prices(deployment: Deployment) -> str:
    """The prices besides input and output that a deployment sets, in one line (empty ones fall back)."""
    if deployment is None or deployment.pk is None:
        return "-"
    parts = [f"{label} {getattr(deployment, field).normalize():f}" for field, label in OTHER_PRICES
             if getattr(deployment, field) is not None]
    if deployment.long_context_threshold:
        parts.append(f"long context above {deployment.long_context_threshold:,} tokens")
    return ", ".join(parts) or "input and output only"


OTHER_PRICES = [("cached_input_price_per_mtok", "cache read"), ("cache_write_price_per_mtok", "cache write 5m"),
                ("cache_write_1h_price_per_mtok", "cache write 1h"), ("long_input_price_per_mtok", "long input"),
                ("long_output_price_per_mtok", "long output")]


class DeploymentInline(ScopedInlineMixin, admin.TabularInline):
    model = Deployment
    extra = 0
    # Every price is on the deployment's own page (the change link); the row says which are set.
    show_change_link = True
    fields = ["public_model", "upstream_model", "mode", "context_window", "max_output_tokens",
              "input_price_per_mtok", "output_price_per_mtok", "more_prices", "priority", "native_responses",
              "is_active"]
    readonly_fields = ["more_prices"]

    @admin.display(description="other prices (USD per 1M tokens)")
    def more_prices(self, obj: Deployment) -> str:
        return other_prices(obj)


@admin.register(Provider)
class ProviderAdmin(ScopedAdminMixin, admin.ModelAdmin):
    form = ProviderForm
    list_display = ["name", "kind", "base_url", "tenant", "key_stored", "is_active", "health"]
    list_filter = ["kind", "is_active", "tenant"]
    search_fields = ["name", "base_url"]
    inlines = [DeploymentInline]
    actions = ["test_connection"]

    def get_readonly_fields(self, request, obj=None):
        # Calling private networks and reading the gateway's environment are staff's decisions alone
        # (docs/security.md).
        fields = list(super().get_readonly_fields(request, obj))
        return fields if request.user.is_superuser else [*fields, "allow_private_network", "api_key_env"]

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        form.staff = scope_of(request).everything
        return form

    @admin.action(description="Test connection (list the provider's models)")
    def test_connection(self, request, queryset) -> None:
        for provider in queryset:
            result = check_connection(provider)
            level = messages.SUCCESS if result.ok else messages.ERROR
            self.message_user(request, f"{provider.name}: {result.summary()}", level=level)

    @admin.display(boolean=True, description="key set")
    def key_stored(self, obj: Provider) -> bool:
        return obj.has_api_key

    def changelist_view(self, request, extra_context=None):
        self._latest = health.latest()
        return super().changelist_view(request, extra_context)

    @admin.display(description="last health check")
    def health(self, obj: Provider) -> str:
        return describe_check(getattr(self, "_latest", {}).get((obj.id, None)))


def describe_check(check: HealthCheck | None) -> str:
    if check is None:
        return "not checked yet"
    state = "ok" if check.ok else f"FAILED: {check.error[:80]}"
    return f"{state} ({check.latency_ms} ms, {check.checked_at:%H:%M:%S})"


@admin.register(HealthCheck)
class HealthCheckAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    list_display = ["checked_at", "provider", "deployment", "ok", "status", "latency_ms", "models_found", "error"]
    list_filter = ["ok", "provider"]
    date_hierarchy = "checked_at"
    list_select_related = ["provider", "deployment__provider"]


@admin.register(Deployment)
class DeploymentAdmin(ScopedAdminMixin, admin.ModelAdmin):
    list_display = ["public_model", "provider", "upstream_model", "mode", "context_window",
                    "input_price_per_mtok", "output_price_per_mtok", "priority", "is_active", "health"]
    list_filter = ["mode", "is_active", "provider"]
    search_fields = ["public_model", "upstream_model"]
    fieldsets = [
        (None, {"fields": ["provider", "public_model", "upstream_model", "mode", "is_active"]}),
        ("Limits", {"fields": ["context_window", "max_output_tokens", "supports_vision", "supports_tools"]}),
        ("Prices (USD per 1M tokens; an empty one falls back as its help says)", {"fields": [
            "input_price_per_mtok", "output_price_per_mtok", "cached_input_price_per_mtok",
            "cache_write_price_per_mtok", "cache_write_1h_price_per_mtok"]}),
        ("Long-context prices (Anthropic's and Gemini's higher tier above a prompt size)", {"fields": [
            "long_context_threshold", "long_input_price_per_mtok", "long_output_price_per_mtok",
            "long_cached_input_price_per_mtok", "long_cache_write_price_per_mtok",
            "long_cache_write_1h_price_per_mtok"]}),
        ("Routing", {"fields": ["priority", "native_responses", "connect_timeout", "first_byte_timeout",
                                "total_timeout"]}),
    ]

    def changelist_view(self, request, extra_context=None):
        self._latest = health.latest()
        return super().changelist_view(request, extra_context)

    @admin.display(description="last health check")
    def health(self, obj: Deployment) -> str:
        return describe_check(getattr(self, "_latest", {}).get((obj.provider_id, obj.id)))
