"""Prompt templates in the admin: a template with its labels (moved here) and versions (read-only); a
version is published from its own add form and shows its diff against the one before, or any other."""

import difflib
from contextvars import ContextVar

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from tenants.scoped_admin import ScopedAdminMixin, ScopedInlineMixin

from . import services
from .models import PromptLabel, PromptTemplate, PromptVersion

_against: ContextVar[str | None] = ContextVar("prompt_diff_against", default=None)  # ?against=N of this request


class PromptLabelInline(ScopedInlineMixin, admin.TabularInline):
    model = PromptLabel
    extra = 0
    fields = ["name", "version", "updated_at"]
    readonly_fields = ["updated_at"]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        template_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
        if db_field.name == "version" and field is not None:
            field.queryset = field.queryset.filter(template_id=template_id) if template_id else field.queryset.none()
        return field


class PromptVersionInline(ScopedInlineMixin, admin.TabularInline):
    model = PromptVersion
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["number", "note", "model", "variables", "author", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False  # published from the version's own form ("Publish a version")


@admin.register(PromptTemplate)
class PromptTemplateAdmin(ScopedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "tenant", "labels_shown", "latest", "created_at"]
    list_filter = ["tenant"]
    search_fields = ["name", "description"]
    inlines = [PromptLabelInline, PromptVersionInline]

    @admin.display(description="labels")
    def labels_shown(self, obj: PromptTemplate) -> str:
        return ", ".join(f"{label.name} → v{label.version.number}" for label in obj.labels.select_related("version"))

    @admin.display(description="latest version")
    def latest(self, obj: PromptTemplate):
        version = obj.versions.order_by("-number").first()
        return f"v{version.number}" if version else "—"

    def save_formset(self, request, form, formset, change):
        if formset.model is not PromptLabel:
            return super().save_formset(request, form, formset, change)
        moved = formset.save(commit=False)
        for gone in formset.deleted_objects:
            gone.delete()
        for label in moved:
            services.label_move(form.instance, label.name, label.version)  # audited as prompt.label
        return None


class PublishForm(forms.ModelForm):
    label = forms.SlugField(required=False, max_length=50, help_text="Move this label (production, ...) onto it.")

    class Meta:
        model = PromptVersion
        fields = ["template", "messages", "model", "parameters", "note"]


@admin.register(PromptVersion)
class PromptVersionAdmin(ScopedAdminMixin, admin.ModelAdmin):
    """Published versions: added (published), viewed with their diff, never changed."""

    form = PublishForm
    list_display = ["__str__", "template", "note", "author", "created_at"]
    list_filter = ["template__tenant", "template"]
    search_fields = ["template__name", "note"]
    readonly_fields = ["number", "variables", "author", "created_at", "diff"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["template", "messages", "model", "parameters", "note", "label"]
        return ["template", "number", "note", "author", "created_at", "model", "parameters", "variables", "messages",
                "diff"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.get_fields(request, obj)

    def has_change_permission(self, request, obj=None):
        return False if obj is not None else super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        try:
            version = services.prompt_publish(data["template"], data["messages"], model=data["model"],
                                              parameters=data["parameters"], note=data["note"], author=request.user,
                                              label=data.get("label") or None)
        except ValidationError as error:
            raise ValidationError(error) from None
        obj.pk, obj.number = version.pk, version.number  # for the redirect and the message

    @admin.display(description="changes")
    def diff(self, obj: PromptVersion):
        """Against the version before, or against ?against=N."""
        wanted = _against.get()
        others = obj.template.versions.exclude(pk=obj.pk)
        old = (others.filter(number=wanted).first() if wanted and wanted.isdigit()
               else others.filter(number__lt=obj.number).order_by("-number").first())
        before = services.as_text(old) if old else []
        table = difflib.HtmlDiff(wrapcolumn=80).make_table(
            before, services.as_text(obj), f"v{old.number}" if old else "(none)", f"v{obj.number}")
        links = format_html_join(" ", '<a href="?against={0}">v{0}</a>', ((v.number,) for v in others))
        shown = mark_safe(table)  # noqa: S308  # nosec B308 B703: HtmlDiff escapes both texts (&, <, >) itself
        return format_html('<div class="gw-diff" id="prompt-diff">{}</div><p>Compare with: {}</p>', shown, links)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        token = _against.set(request.GET.get("against"))
        try:
            response = super().change_view(request, object_id, form_url, extra_context)
            if hasattr(response, "render"):
                response.render()  # the diff is drawn while the page renders, under this request's ?against
            return response
        finally:
            _against.reset(token)
