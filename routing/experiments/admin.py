"""Experiments in the admin: the variants inline and, once it ran, each variant's figures with their
95% confidence intervals (usage/experiments.py)."""

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from tenants.scoped_admin import ScopedAdminMixin, ScopedInlineMixin
from usage.experiments import experiment_figures
from usage.models import UsageRecord

from .models import Experiment, Variant


class VariantInline(ScopedInlineMixin, admin.TabularInline):
    model = Variant
    extra = 2
    fields = ["name", "weight", "model", "deployment", "prompt_version", "parameters"]
    autocomplete_fields = ["deployment"]


def _shown(figure: dict, unit: str = "", digits: int = 0) -> str:
    value, interval = figure["value"], figure["ci95"]
    if value is None:
        return "—"

    def number(v) -> str:
        return f"{float(v):.{digits}f}{unit}"

    return number(value) + (f" ({number(interval[0])} – {number(interval[1])})" if interval else "")


ROWS = (
    ("requests", lambda f: str(f["requests"])),
    ("error rate", lambda f: _shown({k: (None if v is None else [x * 100 for x in v] if isinstance(v, list)
                                         else v * 100) for k, v in f["error_rate"].items()}, "%", 1)),
    ("latency p50", lambda f: _shown(f["latency_p50_ms"], " ms")),
    ("latency p95", lambda f: _shown(f["latency_p95_ms"], " ms")),
    ("time to first token p50", lambda f: _shown(f["ttft_p50_ms"], " ms")),
    ("prompt tokens (mean)", lambda f: _shown(f["prompt_tokens_mean"], "", 1)),
    ("completion tokens (mean)", lambda f: _shown(f["completion_tokens_mean"], "", 1)),
    ("cost per request", lambda f: _shown(f["cost_per_request_usd"], "", 6)),
    ("cost", lambda f: "$" + f["cost_usd"]),
    ("feedback", lambda f: f"{f['feedback']['count']} ({', '.join(f'{k}: {v}' for k, v in f['feedback']['labels'].items()) or 'no labels'})"),
    ("feedback score (mean)", lambda f: _shown(f["feedback"]["score"], "", 2)),
)


@admin.register(Experiment)
class ExperimentAdmin(ScopedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "tenant", "route", "sticky_by", "starts_at", "ends_at", "is_active"]
    list_filter = ["is_active", "tenant"]
    search_fields = ["name", "route"]
    inlines = [VariantInline]
    readonly_fields = ["results"]

    @admin.display(description="results (95% confidence intervals in brackets)")
    def results(self, obj: Experiment):
        if obj.pk is None:
            return "—"
        figures = experiment_figures(UsageRecord.objects.filter(tenant_id=obj.tenant_id), obj.pk)
        if not figures:
            return "No calls yet."
        names = list(figures)
        head = format_html_join("", "<th>{}</th>", ((name,) for name in names))
        rows = format_html_join("", "<tr><th>{}</th>{}</tr>", (
            (label, format_html_join("", "<td>{}</td>", ((shown(figures[name]),) for name in names)))
            for label, shown in ROWS))
        return format_html('<table id="experiment-results"><thead><tr><th></th>{}</tr></thead><tbody>{}</tbody>'
                           "</table>", head, rows)
