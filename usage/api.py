"""The usage API (Django REST framework), for tenant admins and staff.

GET /api/usage/records  usage records, newest first, filtered and paginated
GET /api/usage/summary  totals, optionally grouped by model, key, provider, day, tenant or batch
GET /api/usage/experiments/<id>  an experiment's figures per variant, with confidence intervals

`batch` filters batch lines (the Batches APIs): a batch id, `any` (every batch line) or
`none` (live calls only).

Signed in with the admin session (or HTTP basic auth with the same
credentials); scoped by tenants.scoping: staff see every tenant, owners and
admins their tenant, members their own keys' usage.
"""

from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDay
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, pagination, permissions, serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway_project.lib.rest import query_moment, query_text
from tenants.scoping import scope_for

from .experiments import experiment_figures
from .models import UsageRecord
from .rollups import NOT_ERRORS


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


def visible_records(request):
    scope = scope_for(request.user)
    records = UsageRecord.objects.select_related("tenant").filter(scope.key_filter())
    params = request.query_params
    if start := query_moment(params, "start", MOMENT, dates=True):
        records = records.filter(created_at__gte=start)
    if end := query_moment(params, "end", MOMENT, dates=True):
        records = records.filter(created_at__lt=end)
    for param, field in (("key", "key_prefix"), ("model", "public_model"), ("provider", "provider_name"),
                         ("tenant", "tenant__slug")):
        if value := query_text(params, param):
            records = records.filter(**{field: value})
    return by_batch(records, query_text(params, "batch"))


def by_batch(records, value: str | None):
    """Records narrowed to batch lines: of one batch (its id), of any batch (`any`), or none (`none`)."""
    if not value:
        return records
    if value == "any":
        return records.exclude(batch_id="")
    return records.filter(batch_id="" if value == "none" else value)


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


GROUPS = {"model": "public_model", "key": "key_prefix", "provider": "provider_name", "tenant": "tenant__slug",
          "day": "day", "batch": "batch_id"}


def _exact(sums: dict) -> dict:
    """Counts as numbers, money as a decimal string (JSON numbers would round it)."""
    result = {name: value or 0 for name, value in sums.items()}
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
    def get(self, request):
        """Totals of the usage you may see, and the same per group."""
        records = visible_records(request)
        sums = {"requests": Count("id"), "errors": Count("id", filter=~Q(status__in=NOT_ERRORS)),
                "prompt_tokens": Sum("prompt_tokens"), "completion_tokens": Sum("completion_tokens"),
                "cached_tokens": Sum("cached_tokens"), "cache_write_tokens": Sum("cache_write_tokens"),
                "reasoning_tokens": Sum("reasoning_tokens"), "cost_usd": Sum("cost_usd")}
        totals = _exact(records.aggregate(**sums))
        groups = []
        if group_by := request.query_params.get("group_by"):
            if group_by not in GROUPS:
                raise ValidationError({"group_by": f"Expected one of {', '.join(GROUPS)}."})
            field = GROUPS[group_by]
            if field == "day":
                records = records.annotate(day=TruncDay("created_at"))
            rows = records.order_by().values(field).annotate(**sums).order_by(field)
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
    def get(self, request, experiment_id: int):
        """Per-variant figures of an experiment, from the usage records you may see (docs/templates.md)."""
        return Response({"experiment": experiment_id,
                         "variants": experiment_figures(visible_records(request), experiment_id)})
