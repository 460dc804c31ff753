"""Management API: experiments with their variants written as part of them, and their figures."""

from django.db import transaction
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from providers.models import Deployment
from tenants.manage_api import ScopedKey, ScopedSerializer, ScopedViewSet, TenantField
from usage.experiments import experiment_figures
from usage.models import UsageRecord

from ..prompts.models import PromptVersion
from .models import Experiment, Variant


class VariantSerializer(ScopedSerializer):
    deployment = ScopedKey(queryset=Deployment.objects.all(), required=False, allow_null=True)
    prompt_version = ScopedKey(queryset=PromptVersion.objects.all(), required=False, allow_null=True,
                               help_text="A template version's id (not its number).")

    class Meta:
        model = Variant
        fields = ["name", "weight", "model", "deployment", "prompt_version", "parameters"]

    def validate(self, attrs):
        return serializers.ModelSerializer.validate(self, attrs)  # checked with its experiment, below


class ExperimentSerializer(ScopedSerializer):
    tenant = TenantField(allow_null=False)
    variants = VariantSerializer(many=True, required=False, help_text="Replaces all variants when given.")

    class Meta:
        model = Experiment
        fields = ["id", "name", "tenant", "route", "sticky_by", "sticky_header", "starts_at", "ends_at", "is_active",
                  "variants", "created_at"]
        read_only_fields = ["created_at"]

    def validate(self, attrs):
        attrs = super().validate(attrs)
        tenant = attrs.get("tenant") or getattr(self.instance, "tenant", None)
        for i, given in enumerate(attrs.get("variants") or ()):
            try:
                Variant(experiment=Experiment(tenant=tenant), **given).clean()
            except Exception as error:  # a Django ValidationError, named by the variant's place
                raise serializers.ValidationError({"variants": {i: serializers.as_serializer_error(error)}}) from None
        return attrs

    def _save(self, experiment: Experiment, variants) -> Experiment:
        with transaction.atomic():
            experiment.save()
            if variants is not None:
                experiment.variants.all().delete()
                for given in variants:
                    Variant.objects.create(experiment=experiment, **given)
        return experiment

    def create(self, validated_data):
        variants = validated_data.pop("variants", [])
        return self._save(Experiment(**validated_data), variants)

    def update(self, instance, validated_data):
        variants = validated_data.pop("variants", None)
        for name, value in validated_data.items():
            setattr(instance, name, value)
        return self._save(instance, variants)


class ExperimentViewSet(ScopedViewSet):
    """Experiments of your tenant: a route's calls split between variants (docs/templates.md)."""

    queryset = Experiment.objects.prefetch_related("variants")
    serializer_class = ExperimentSerializer
    action_permissions = {"results": "view"}

    @extend_schema(responses={200: inline_serializer("ExperimentResults", {
        "experiment": serializers.IntegerField(), "variants": serializers.DictField(child=serializers.DictField())})})
    @action(detail=True, methods=["get"])
    def results(self, request, pk=None):
        """Per-variant figures with 95% confidence intervals (the same as /api/usage/experiments/<id>)."""
        experiment = self.get_object()
        records = UsageRecord.objects.filter(tenant_id=experiment.tenant_id)
        return Response({"experiment": experiment.id, "variants": experiment_figures(records, experiment.id)})
