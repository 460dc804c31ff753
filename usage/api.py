"""The usage API (Django REST framework), for tenant admins and staff.

GET /api/usage/records  usage records, newest first, filtered and paginated
GET /api/usage/summary  totals, optionally grouped by model, key, provider, day, tenant or batch
GET /api/usage/experiments/<id>  an experiment's figures per variant, with confidence intervals

`batch` filters batch lines (the Batches APIs): a batch id, `any` (every batch line) or
`none` (live calls only).

Signed in with the admin session (or HTTP basic auth with the same
credentials); scoped by tenants.scoping: staff see every tenant, owners and
admins their tenant, members their own keys' usage. Each view reads from the
database replica when there is one (`on_replica`), after working out the user
and their scope on the primary.
"""

import functools
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.db.models.functions import TruncDay
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, pagination, permissions, serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway_project.lib import db_replica
from gateway_project.lib.rest import query_moment, query_text
from tenants.scoping import scope_of

from . import summaries
from .experiments import experiment_figures
from .models import UsageRecord, UsageRollup


class UsageRecordSerializer(serializers.ModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = UsageRecord
        fields = ["request_id", "client_request_id", "created_at", "tenant", "key_prefix", "endpoint",
                  "public_model", "upstream_model", "provider_name", "route", "strategy", "attempts",
                  "prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens",
                  "cache_write_1h_tokens", "reasoning_tokens", "total_tokens", "tokens_estimated",
                  "cost_usd", "latency_ms", "ttft_ms", "status", "http_status", "error_type", "streamed",
                  "cache_hit", "cost_saved_usd", "batch_id"]


class NewestFirst(pagination.CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


FILTERS = [
    OpenApiParameter("start", OpenApiTypes.DATETIME, description="From this time (ISO 8601; a date means its start)"),
    OpenApiParameter("end", OpenApiTypes.DATETIME, description="Before this time"),
    OpenApiParameter("key", str, description="Key prefix, as shown in the admin"),
    OpenApiParameter("model", str, description="Public model name"),
    OpenApiParameter("provider", str, description="Provider name"),
    OpenApiParameter("tenant", str, description="Tenant slug (staff only; others see their own tenants)"),
    OpenApiParameter("batch", str, description="Batch lines: a batch id, `any` (every batch's lines) or `none` "
                                               "(live calls only)"),
]


MOMENT = "Expected an ISO 8601 date or time, such as 2026-11-01 or 2026-11-01T12:00Z."


def _filtered(rows, request):
    """Usage records or rollups (the same fields) the user may see, filtered as asked."""
    rows = rows.filter(scope_of(request).key_filter())
    for param, field in (("key", "key_prefix"), ("model", "public_model"), ("provider", "provider_name"),
                         ("tenant", "tenant__slug")):
        if value := query_text(request.query_params, param):
            rows = rows.filter(**{field: value})
    return rows


def visible_records(request):
    records = _filtered(UsageRecord.objects.select_related("tenant"), request)
    params = request.query_params
    if start := query_moment(params, "start", MOMENT, dates=True):
        records = records.filter(created_at__gte=start)
    if end := query_moment(params, "end", MOMENT, dates=True):
        records = records.filter(created_at__lt=end)
    return by_batch(records, query_text(params, "batch"))


def by_batch(records, value: str | None):
    """Records narrowed to batch lines: of one batch (its id), of any batch (`any`), or none (`none`)."""
    if not value:
        return records
    if value == "any":
        return records.exclude(batch_id="")
    return records.filter(batch_id="" if value == "none" else value)


def visible_usage(request) -> tuple:
    """(records, rollups) that together hold the usage asked for (usage.summaries): rollups where
    they cover the range, records for the rest."""
    params = request.query_params
    end = query_moment(params, "end", MOMENT, dates=True) or datetime.now(UTC)
    start = query_moment(params, "start", MOMENT, dates=True) or summaries.first_use(
        _filtered(UsageRecord.objects.all(), request), _filtered(UsageRollup.objects.all(), request))
    if start is None or end <= start:
        return UsageRecord.objects.none(), UsageRollup.objects.none()
    if (batch := query_text(params, "batch")) or params.get("group_by") == "batch":
        # Rollups do not keep the batch: batch lines are few enough to be read from the records.
        records = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
        return by_batch(_filtered(records, request), batch).order_by(), None
    # Daily rollups are UTC days: with another zone, days are summed from hours.
    split = summaries.split(start, end, "day" if settings.TIME_ZONE == "UTC" else "hour")
    return (_filtered(UsageRecord.objects.filter(split.records), request).order_by(),
            _filtered(UsageRollup.objects.filter(split.rollups), request).order_by())


def on_replica(method):
    """A view's handler whose reads go to the replica (gateway_project.lib.db_replica): the usage it
    reports may be a moment old. The user (DRF authenticated them already) and their scope come
    from the primary, so a membership revoked a moment ago narrows the answer at once."""

    @functools.wraps(method)
    def handler(view, request, *args, **kwargs):
        scope_of(request)
        return db_replica.read(method, view, request, *args, **kwargs)

    return handler


class SignedIn(permissions.BasePermission):
    """Any active user: what they see is narrowed by their scope, down to nothing."""

    def has_permission(self, request, view):
        return bool(request.user and request.user.is_authenticated and request.user.is_active)


@extend_schema(parameters=FILTERS, tags=["usage"])
class RecordList(generics.ListAPIView):
    """Usage records you may see, newest first (cursor pagination: follow `next`)."""

    serializer_class = UsageRecordSerializer
    pagination_class = NewestFirst
    permission_classes = [SignedIn]

    def get_queryset(self):
        return visible_records(self.request)

    @on_replica
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


GROUPS = {"model": "public_model", "key": "key_prefix", "provider": "provider_name", "tenant": "tenant__slug",
          "day": "day", "batch": "batch_id"}


SUMMED = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens",
          "reasoning_tokens", "cost_usd")


def _exact(sums: dict) -> dict:
    """Counts as numbers, money as a decimal string (JSON numbers would round it)."""
    result = {name: sums.get(name) or 0 for name in SUMMED}
    result["cost_usd"] = str(sums.get("cost_usd") or Decimal(0))
    return result


class Summary(APIView):
    permission_classes = [SignedIn]

    @extend_schema(
        tags=["usage"],
        parameters=[*FILTERS, OpenApiParameter("group_by", str, enum=list(GROUPS))],
        responses=inline_serializer("UsageSummary", {
            "totals": inline_serializer("UsageTotals", {
                "requests": serializers.IntegerField(), "errors": serializers.IntegerField(),
                "prompt_tokens": serializers.IntegerField(), "completion_tokens": serializers.IntegerField(),
                "cached_tokens": serializers.IntegerField(), "cache_write_tokens": serializers.IntegerField(),
                "reasoning_tokens": serializers.IntegerField(),
                "cost_usd": serializers.CharField(help_text="USD, exact, as a decimal string")}),
            "groups": serializers.ListField(child=serializers.DictField()),
        }),
    )
    @on_replica
    def get(self, request):
        """Totals of the usage you may see, and the same per group."""
        group_by = request.query_params.get("group_by")
        if group_by and group_by not in GROUPS:
            raise ValidationError({"group_by": f"Expected one of {', '.join(GROUPS)}."})
        records, rollups = visible_usage(request)
        totals = _exact(summaries.grouped(records, rollups, percentiles=False)[0])
        groups = []
        if group_by:
            field = GROUPS[group_by]
            if field == "day":
                records = records.annotate(day=TruncDay("created_at"))
                rollups = rollups.annotate(day=TruncDay("bucket")) if rollups is not None else None
            rows = sorted(summaries.grouped(records, rollups, field, percentiles=False),
                          key=lambda row: (row[field] is None, row[field]))
            groups = [{group_by: row.pop(field), **_exact(row)} for row in rows]
        return Response({"totals": totals, "groups": groups})


class ExperimentFigures(APIView):
    permission_classes = [SignedIn]

    @extend_schema(tags=["usage"], parameters=FILTERS, responses=inline_serializer("ExperimentFigures", {
        "experiment": serializers.IntegerField(),
        "variants": serializers.DictField(child=serializers.DictField(), help_text=(
            "By variant: requests, errors, error_rate, latency_p50_ms, latency_p95_ms, ttft_p50_ms, "
            "prompt/completion tokens (total, mean), cost_usd, cost_per_request_usd, feedback; each "
            "rate, mean and percentile as {value, ci95: [low, high]}"))}))
    @on_replica
    def get(self, request, experiment_id: int):
        """Per-variant figures of an experiment, from the usage records you may see (docs/templates.md)."""
        return Response({"experiment": experiment_id,
                         "variants": experiment_figures(visible_records(request), experiment_id)})
