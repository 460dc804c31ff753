"""Guardrail policies from a configuration file (JSON or YAML), as code.

    python manage.py load_guardrails guardrails.yaml

The file holds a list of policies: {tenant: <slug>, name, route?, key?: <key prefix>, restore?,
hold_back_chars?, is_active?, checks: [{kind, stage, action, failure_mode, ...,
webhook_secret_env?: <environment variable holding the HMAC key>}]}. A policy is found by
tenant and name and its checks replaced, so loading the same file twice changes nothing.
Each check is validated as in the admin; the whole file loads or none of it does.
"""

import os
from pathlib import Path

import yaml
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from keys.models import ApiKey
from routing.models import GuardrailCheck, GuardrailPolicy
from tenants.models import Tenant

POLICY_FIELDS = ("route", "restore", "hold_back_chars", "is_active")


class Command(BaseCommand):
    help = "Create or replace guardrail policies from a JSON or YAML file."

    def add_arguments(self, parser):
        parser.add_argument("path")

    def handle(self, path, **options):
        try:
            entries = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from None
        if not isinstance(entries, list):
            raise CommandError("The file must hold a list of policies.")
        try:
            with transaction.atomic():
                for n, entry in enumerate(entries, 1):
                    self.load(n, entry)
        except (ValidationError, KeyError, TypeError, Tenant.DoesNotExist, ApiKey.DoesNotExist) as exc:
            raise CommandError(f"Nothing loaded: {exc}") from None
        self.stdout.write(f"Loaded {len(entries)} guardrail policies.")

    def load(self, n: int, entry: dict) -> None:
        tenant = Tenant.objects.get(slug=entry["tenant"])
        key = ApiKey.objects.get(tenant=tenant, prefix=entry["key"]) if entry.get("key") else None
        policy, _ = GuardrailPolicy.objects.get_or_create(tenant=tenant, name=entry["name"])
        policy.api_key = key
        for name in POLICY_FIELDS:
            if name in entry:
                setattr(policy, name, entry[name])
        policy.full_clean()
        policy.save()
        policy.checks.all().delete()
        for order, spec in enumerate(entry.get("checks") or ()):
            spec = dict(spec)
            secret_env = spec.pop("webhook_secret_env", "")
            check = GuardrailCheck(policy=policy, order=order, **spec)
            check.set_secret(os.environ.get(secret_env, "") if secret_env else "")
            check.full_clean()
            check.save()
