from django.contrib import admin
from django.utils.html import format_html

from gateway_project.lib.readonly_admin import ReadOnlyAdmin
from tenants.scoped_admin import ScopedAdminMixin

from .models import Batch, File


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
    readonly_fields = ["progress", "errors"]

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
