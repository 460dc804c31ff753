from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from tenants import audit
from tenants.scoped_admin import ScopedAdminMixin, check
from tenants.scoping import scope_of

from . import caps, services
from .models import ApiKey

GRACE_CHOICES = [
    (0, "None: refuse the old key at once"),
    (600, "10 minutes"),
    (3600, "1 hour"),
    (86400, "24 hours"),
    (7 * 86400, "7 days"),
    (30 * 86400, "30 days"),
]


class RotateForm(forms.Form):
    grace = forms.TypedChoiceField(
        choices=GRACE_CHOICES, coerce=int, initial=86400, label="Old key keeps working for",
        help_text="Time to deploy the new key everywhere the old one is used.",
    )


class CappedKeyForm(forms.ModelForm):
    """The key form for tenant users: a plain member's caps only narrower (keys/caps.py).
    `scope` is set per request, in ApiKeyAdmin.get_form."""

    scope = None

    def clean(self):
        data = super().clean()
        adding = self.instance.pk is None
        tenant = data.get("tenant") if adding else self.instance.tenant
        if tenant is None or not caps.bound_by_caps(self.scope, tenant.pk):
            return data
        try:
            if adding:
                data.update(caps.cap_new_key(tenant.pk, self.scope.user_id,
                                             {name: data.get(name) for name in ("allowed_models", "expires_at")}))
            else:  # the instance holds the saved caps until the form is applied to it, after clean()
                caps.check_narrowing(self.instance, {name: data[name] for name in self.changed_data
                                                     if name in ("allowed_models", "expires_at") and name in data})
        except ValidationError as error:
            self.add_error(None, error)
        return data


def secret_page(request, key: ApiKey, secret: str, replaced: ApiKey | None = None) -> TemplateResponse:
    """The one page that ever shows a key's secret; recorded as a reveal."""
    audit.record("key.reveal", key)
    response = TemplateResponse(request, "admin/keys/apikey/secret.html", {
        **admin.site.each_context(request),
        "title": "Copy your new API key",
        "opts": ApiKey._meta,
        "key": key,
        "secret": secret,
        "replaced": replaced,
    })
    add_never_cache_headers(response)  # the back button must not bring it back from a cache
    response["Pragma"] = "no-cache"  # and neither may an HTTP/1.0 cache
    return response


@admin.register(ApiKey)
class ApiKeyAdmin(ScopedAdminMixin, admin.ModelAdmin):
    """Keys are created here and shown once; the admin never sees a stored secret."""

    list_display = ["name", "prefix", "tenant", "created_by", "state", "expires_at", "last_used_at", "created_at"]
    list_filter = ["tenant", ("revoked_at", admin.EmptyFieldListFilter), ("expires_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "tenant__name"]
    list_select_related = ["tenant", "created_by"]
    readonly_fields = ["prefix", "state", "last_used_at", "revoked_at", "replaced_by", "created_by", "created_at"]
    fields = ["tenant", "name", "allowed_models", "default_model", "expires_at", *readonly_fields]
    actions = ["revoke_keys", "rotate_key"]
    inlines: list = []  # usage/admin.py adds the key's limits

    @admin.display(description="state")
    def state(self, obj: ApiKey) -> str:
        if obj.state == "rotated":
            return f"rotated: valid until {timezone.localtime(obj.expires_at):%Y-%m-%d %H:%M}"
        return obj.state

    def get_readonly_fields(self, request, obj=None):
        # The tenant of an existing key is fixed: moving it would hand a live
        # secret to another tenant.
        return self.readonly_fields + (["tenant"] if obj else [])

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        scope = scope_of(request)
        if scope.everything:
            return form
        return type(form.__name__, (CappedKeyForm, form), {"scope": scope})

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/rotate/", view(self.rotate_view), name="keys_apikey_rotate"),
            path("<path:object_id>/revoke/", view(self.revoke_view), name="keys_apikey_revoke"),
            *super().get_urls(),
        ]

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        capped = not change and caps.bound_by_caps(scope_of(request), obj.tenant_id)
        if capped:  # as CappedKeyForm checked; again here, for a field the post left out
            for name, value in caps.cap_new_key(obj.tenant_id, request.user.pk, {
                    "allowed_models": obj.allowed_models, "expires_at": obj.expires_at}).items():
                setattr(obj, name, value)
        if change:
            super().save_model(request, obj, form, change)
            return
        obj.created_by = request.user
        request._new_key_secret = services.save_new(
            obj, caps.capping_keys(obj) if capped else (), save=lambda: super(ApiKeyAdmin, self).save_model(
                request, obj, form, change))

    def response_add(self, request, obj, post_url_continue=None):
        return secret_page(request, obj, request._new_key_secret)

    def prepare_inline(self, request, parent, obj) -> None:
        obj.tenant_id = parent.tenant_id  # a key's limits belong to the key's tenant

    def _key_in_use(self, request, object_id: str) -> ApiKey:
        key = self.get_object(request, object_id)  # 404 outside the user's tenants
        check(request, "change", key)
        return key

    def rotate_view(self, request, object_id: str):
        key = self._key_in_use(request, object_id)
        form = RotateForm(request.POST or None)
        if key.is_revoked or key.is_expired or key.replaced_by_id:
            messages.error(request, "Only a key in use, not rotated already, can be rotated.")
            return redirect(reverse("admin:keys_apikey_change", args=[key.pk]))
        if request.method == "POST" and form.is_valid():
            new, secret = services.rotate(key, timedelta(seconds=form.cleaned_data["grace"]))
            key.refresh_from_db()
            return secret_page(request, new, secret, replaced=key)
        return self._confirm_page(request, key, "rotate", form)

    def revoke_view(self, request, object_id: str):
        key = self._key_in_use(request, object_id)
        if request.method == "POST":
            if services.revoke(key):
                self.message_user(request, f"Revoked {key}. The gateway refuses it from now on.")
            else:
                self.message_user(request, f"{key} was revoked already.", messages.WARNING)
            return redirect(reverse("admin:keys_apikey_change", args=[key.pk]))
        return self._confirm_page(request, key, "revoke", None)

    def _confirm_page(self, request, key: ApiKey, what: str, form) -> TemplateResponse:
        return TemplateResponse(request, "admin/keys/apikey/confirm.html", {
            **self.admin_site.each_context(request),
            "title": f"{what.capitalize()} {key}",
            "opts": self.model._meta,
            "original": key,
            "key": key,
            "what": what,
            "form": form,
        })

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request, queryset) -> None:
        count = 0
        for key in queryset.filter(revoked_at__isnull=True):
            check(request, "change", key)
            count += services.revoke(key)
        self.message_user(request, f"Revoked {count} key(s) at {timezone.now():%Y-%m-%d %H:%M:%S} UTC.")

    @admin.action(description="Rotate selected key (choose a grace period next)", permissions=["change"])
    def rotate_key(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Rotate one key at a time: each new key is shown once.", messages.ERROR)
            return None
        return redirect(reverse("admin:keys_apikey_rotate", args=[queryset.get().pk]))
