"""The admin as each tenant's users may see it: one base for every model a tenant owns.

Superusers get the admin as Django ships it. Anyone else gets, through every
ModelAdmin and inline built on these mixins, exactly what tenants.scoping
allows their roles: the rows they may see (another tenant's id is a 404),
foreign-key choices and list filters drawn from those rows only, the
permissions their roles grant (Django's own permissions play no part), and
saves that land in one of their tenants or are refused.
"""

from django.contrib import admin
from django.contrib.admin.utils import get_fields_from_path
from django.core.exceptions import PermissionDenied
from django.http import Http404

from tenants.models import Tenant
from tenants.scoping import Scope, rule_for, scope_of, tenant_of


def _tenant_choices(scope: Scope, model):
    return Tenant.objects.filter(pk__in=scope.tenants_for("add", model) | scope.tenants_for("change", model))


class _ScopedFields:
    """Foreign-key choices from the user's own tenants, and the permissions both admins and inlines
    answer from the scope (each subclass says how in `_allowed`)."""

    def _allowed(self, request, action: str, obj=None) -> bool:
        raise NotImplementedError

    def has_view_permission(self, request, obj=None):
        if scope_of(request).everything:
            return super().has_view_permission(request, obj)
        return self._allowed(request, "view", obj) or self._allowed(request, "change", obj)

    def has_change_permission(self, request, obj=None):
        if scope_of(request).everything:
            return super().has_change_permission(request, obj)
        return self._allowed(request, "change", obj)

    def has_delete_permission(self, request, obj=None):
        if scope_of(request).everything:
            return super().has_delete_permission(request, obj)
        return self._allowed(request, "delete", obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        scope = scope_of(request)
        if not scope.everything and "queryset" not in kwargs:
            related = db_field.related_model
            rule = rule_for(self.model)
            if related is Tenant:
                kwargs["queryset"] = _tenant_choices(scope, self.model)
                kwargs["required"] = True  # tenant users cannot make shared rows
            elif rule_for(related) is None:
                kwargs["queryset"] = related._default_manager.none()  # users, say: none of theirs to pick
            elif rule is not None and db_field.name == rule.tenant.split("__")[0]:
                # The link that decides the row's tenant: one the user may change.
                kwargs["queryset"] = scope.manageable(related._default_manager.all())
            else:
                kwargs["queryset"] = scope.visible(related._default_manager.all())
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_autocomplete_fields(self, request):
        # Autocomplete asks the related model's admin, whose rules differ
        # (shared deployments are choices, not rows to browse): plain selects.
        return super().get_autocomplete_fields(request) if scope_of(request).everything else []


def check(request, action: str, obj) -> None:
    """Refuse (403) a save or delete the user's roles do not allow on `obj` as it now is."""
    if not scope_of(request).allows(action, obj):
        raise PermissionDenied


class ScopedAdminMixin(_ScopedFields):
    """For a ModelAdmin of a model listed in tenants.scoping.RULES."""

    def get_queryset(self, request):
        return scope_of(request).visible(super().get_queryset(request))

    def get_object(self, request, object_id, from_field=None):
        # Django redirects to the index for a missing id; a 404 tells nothing
        # about whether the id exists in another tenant.
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404("No such object.")
        return obj

    def _allowed(self, request, action: str, obj=None) -> bool:
        scope = scope_of(request)
        return scope.may(action, self.model) if obj is None else scope.allows(action, obj)

    def has_module_permission(self, request):
        if scope_of(request).everything:
            return super().has_module_permission(request)
        return self._allowed(request, "view") or self._allowed(request, "change")

    def has_add_permission(self, request):
        if scope_of(request).everything:
            return super().has_add_permission(request)
        return self._allowed(request, "add")

    def get_list_filter(self, request):
        filters = super().get_list_filter(request)
        if scope_of(request).everything:
            return filters
        # A related filter lists every tenant (or key, or provider) there is;
        # this one only those in rows the user can see.
        return [(f, admin.RelatedOnlyFieldListFilter) if isinstance(f, str) and self._is_relation(f) else f
                for f in filters]

    def _is_relation(self, path: str) -> bool:
        return get_fields_from_path(self.model, path)[-1].is_relation

    def save_model(self, request, obj, form, change):
        scope = scope_of(request)
        if not scope.everything:
            self._force_tenant(scope, obj)
            check(request, "change" if change else "add", obj)
        super().save_model(request, obj, form, change)

    def _force_tenant(self, scope: Scope, obj) -> None:
        rule = rule_for(type(obj))
        if rule is not None and rule.tenant == "tenant" and obj.tenant_id is None:
            choices = scope.tenants_for("add", type(obj))
            if len(choices) == 1:
                obj.tenant_id = next(iter(choices))

    def delete_model(self, request, obj):
        check(request, "delete", obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            check(request, "delete", obj)
        super().delete_queryset(request, queryset)

    def prepare_inline(self, request, parent, obj) -> None:
        """Called for each inline row before it is checked and saved."""

    def save_formset(self, request, form, formset, change):
        for obj in formset.save(commit=False):
            self.prepare_inline(request, form.instance, obj)
            check(request, "add" if obj._state.adding else "change", obj)
            obj.save()
        for obj in formset.deleted_objects:
            check(request, "delete", obj)
            obj.delete()
        formset.save_m2m()


class ScopedInlineMixin(_ScopedFields):
    """For an inline of a model listed in tenants.scoping.RULES; `obj` is the parent row."""

    def get_queryset(self, request):
        return scope_of(request).visible(super().get_queryset(request))

    def _allowed(self, request, action: str, parent=None) -> bool:
        scope = scope_of(request)
        if parent is None or parent.pk is None:
            return scope.may(action, self.model)
        tenant_id = tenant_of(parent)
        if tenant_id is None:  # a shared parent: tenant users only look
            return action == "view" and scope.may("view", self.model)
        return action in scope.actions(rule_for(self.model), tenant_id)

    def has_add_permission(self, request, obj):
        if scope_of(request).everything:
            return super().has_add_permission(request, obj)
        return self._allowed(request, "add", obj)
