"""Management API: prompt templates, publishing their versions, moving their labels, diffs between versions."""

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from tenants.manage_api import ScopedSerializer, ScopedViewSet, TenantField

from . import services
from .models import PromptTemplate, PromptVersion


class PromptVersionSerializer(serializers.ModelSerializer):
    author = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = PromptVersion
        fields = ["number", "messages", "variables", "model", "parameters", "note", "author", "created_at"]
        read_only_fields = fields


class PromptTemplateSerializer(ScopedSerializer):
    tenant = TenantField(allow_null=False)
    versions = PromptVersionSerializer(many=True, read_only=True)
    labels = serializers.SerializerMethodField()

    class Meta:
        model = PromptTemplate
        fields = ["id", "name", "tenant", "description", "versions", "labels", "created_at"]
        read_only_fields = ["created_at"]

    def get_labels(self, template) -> dict[str, int]:
        return {label.name: label.version.number for label in template.labels.all()}


class PublishSerializer(serializers.Serializer):
    messages = serializers.JSONField(help_text='[{"role", "content"}], the content may use {{ name }}.')
    model = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    parameters = serializers.JSONField(required=False, default=dict)
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    label = serializers.SlugField(max_length=50, required=False, allow_blank=True, default="",
                                  help_text="Move this label (production, ...) onto the new version.")


class LabelSerializer(serializers.Serializer):
    label = serializers.SlugField(max_length=50)
    version = serializers.IntegerField(min_value=1)


class PromptTemplateViewSet(ScopedViewSet):
    """Your tenant's prompt templates; versions are published (never edited) and labels moved (docs/templates.md)."""

    queryset = PromptTemplate.objects.prefetch_related("versions__author", "labels__version")
    serializer_class = PromptTemplateSerializer
    action_permissions = {"publish": "change", "label": "change", "diff": "view"}

    def _version(self, template: PromptTemplate, number) -> PromptVersion:
        found = template.versions.filter(number=number).first() if str(number).isdigit() else None
        if found is None:
            raise NotFound(f"No version {number} of this template.")
        return found

    @extend_schema(request=PublishSerializer, responses={201: PromptVersionSerializer})
    @action(detail=True, methods=["post"])
    def publish(self, request, pk=None):
        """Publish a new version (the next number): immutable from then on."""
        template = self.get_object()
        given = PublishSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        try:
            version = services.prompt_publish(template, data["messages"], model=data["model"],
                                              parameters=data["parameters"], note=data["note"], author=request.user,
                                              label=data["label"] or None)
        except DjangoValidationError as error:
            raise ValidationError(serializers.as_serializer_error(error)) from None
        return Response(PromptVersionSerializer(version).data, status=201)

    @extend_schema(request=LabelSerializer, responses={200: PromptTemplateSerializer})
    @action(detail=True, methods=["post"])
    def label(self, request, pk=None):
        """Point a label at one of the template's versions."""
        template = self.get_object()
        given = LabelSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        services.label_move(template, given.validated_data["label"],
                            self._version(template, given.validated_data["version"]))
        return Response(self.get_serializer(self.get_queryset().get(pk=template.pk)).data)

    @extend_schema(parameters=[OpenApiParameter("from", int), OpenApiParameter("to", int)],
                   responses={200: inline_serializer("PromptDiff", {"from": serializers.IntegerField(),
                                                                    "to": serializers.IntegerField(),
                                                                    "diff": serializers.CharField()})})
    @action(detail=True, methods=["get"])
    def diff(self, request, pk=None):
        """The unified diff between two versions (default: the latest against the one before)."""
        template = self.get_object()
        latest = template.versions.order_by("-number").first()
        if latest is None:
            raise NotFound("This template has no version yet.")
        new = self._version(template, request.query_params.get("to", latest.number))
        wanted = request.query_params.get("from", new.number - 1)
        old = self._version(template, wanted) if str(wanted) != "0" else None
        return Response({"from": old.number if old else 0, "to": new.number,
                         "diff": "\n".join(services.version_diff(old, new))})
