from django.contrib import admin
from django.utils.html import format_html, format_html_join

from gateway_project.lib.readonly_admin import ReadOnlyAdmin
from tenants.scoped_admin import ScopedAdminMixin

from . import notify
from .models import Batch, File


def _message(body) -> str:
    """An error body's message, in OpenAI's shape or Anthropic's."""
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("message", "")) if isinstance(error, dict) else ""


@admin.register(Batch)
class BatchAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    """Batches with their counts, a progress bar and the errors that failed them: read-only."""

    list_display = ["id", "tenant", "endpoint", "status", "paused_reason", "total", "completed", "failed",
                    "progress", "created_at", "completed_at"]
    list_filter = ["status", "endpoint", "tenant"]
    search_fields = ["id", "input_file__id"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]
    exclude = ["metadata"]
    readonly_fields = ["progress", "errors", "failed_lines", "cost"]

    @admin.display(description="cost (USD, from the usage ledger)")
    def cost(self, batch: Batch) -> str:
        return format(notify.cost(batch)[1], "f")

    @admin.display(description="failed lines (the first 50)")
    def failed_lines(self, batch: Batch) -> str:
        rows = [(line.number, line.custom_id, (line.result or {}).get("response") or {})
                for line in batch.lines.filter(done=True, ok=False).order_by("number")[:50]]
        if not rows:
            return "none"
        return format_html("<table><tr><th>line</th><th>custom_id</th><th>status</th><th>error</th></tr>{}</table>",
                           format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
                               (n, custom_id, response.get("status_code"), _message(response.get("body")))
                               for n, custom_id, response in rows)))

    @admin.display(description="progress")
    def progress(self, batch: Batch) -> str:
        share = int(100 * (batch.completed + batch.failed) / batch.total) if batch.total else 0
        return format_html('<progress max="100" value="{}" title="{}%"></progress> {}%', share, share, share)


@admin.register(File)
class FileAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    list_display = ["id", "tenant", "filename", "purpose", "bytes", "created_at"]
    list_filter = ["purpose", "tenant"]
    search_fields = ["id", "filename"]
    list_select_related = ["tenant"]
