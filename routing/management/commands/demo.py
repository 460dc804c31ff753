import os
import secrets
import subprocess
import sys
import time
import urllib.request

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Q

from keys import services as key_services
from keys.models import ApiKey
from providers.models import Deployment
from routing.config.apply import apply
from routing.config.schema import ConfigError
from routing.models import Route
from tenants.models import Tenant

from .serve import run_server

DEMO_CONFIG = settings.BASE_DIR / "deploy" / "gateway.yaml"


class Command(BaseCommand):
    help = "Set up a demo (admin user, tenant, key, mock provider) and serve the gateway with a mock upstream."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--mock-port", type=int, default=8001)
        parser.add_argument("--setup-only", action="store_true", help="Prepare the demo data, do not serve")
        parser.add_argument("--config", default=str(DEMO_CONFIG),
                            help="Configuration file applied before serving (docs/config.md)")

    def handle(self, host, port, mock_port, setup_only, config, **options):
        call_command("migrate", interactive=False, verbosity=0)
        # The file points its mock provider here; a variable, so that one file serves the demo and compose.
        os.environ["MOCK_UPSTREAM_URL"] = f"http://127.0.0.1:{mock_port}/v1"
        os.environ.setdefault("GATEWAY_PROVIDER_KEY_MOCK", "mock-provider-secret")
        password, key, tenant = self.setup(config)
        url = f"http://{host}:{port}"
        self.stdout.write(self.style.SUCCESS("\nThe gateway demo is ready.\n"))
        self.stdout.write(f"  Admin:    {url}/admin/   login admin / {password}")
        self.stdout.write(f"  API:      {url}/v1   (models: {', '.join(self.models(tenant))})")
        shown = os.path.relpath(config) if not os.path.relpath(config).startswith("..") else config
        self.stdout.write(f"  Config:   {shown}   (edit it, then: python3 manage.py apply_config {shown})")
        self.stdout.write(f"  Try:      curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
                          "-H 'content-type: application/json' "
                          "-d '{\"model\": \"mock-gpt\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'")
        self.stdout.write(f"  Mode:     {'production (PostgreSQL/Redis)' if settings.REDIS_URL else 'embedded'}")
        self.stdout.write(f"  API key:\n{key}")
        if setup_only:
            return
        mock = self.start_mock(mock_port)
        try:
            run_server(host, port)
        finally:
            mock.terminate()
            mock.wait(timeout=10)

    @transaction.atomic
    def setup(self, config: str) -> tuple[str, str, Tenant]:
        password = os.environ.get("DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User = get_user_model()
        admin, _ = User.objects.get_or_create(username="admin", defaults={"email": "admin@example.com"})
        admin.is_staff = admin.is_superuser = True
        admin.set_password(password)
        admin.save()
        try:
            changes, _ = apply(config)
        except ConfigError as error:
            raise CommandError(f"{config} was not applied:\n{error}") from None
        self.stdout.write(f"Applied {config}: {len(changes)} change(s).")
        tenant = Tenant.objects.filter(slug="demo").first() or Tenant.objects.order_by("id").first()
        if tenant is None:
            raise CommandError(f"{config} declares no tenant for the demo key.")
        # A fresh demo key each run: the old one cannot be shown again.
        for old in ApiKey.objects.filter(tenant=tenant, name="demo", revoked_at__isnull=True):
            old.revoke()
        _, key = key_services.issue(tenant, "demo", created_by=admin)
        return password, key, tenant

    def models(self, tenant: Tenant) -> list[str]:
        """The names the demo key may call: deployments and routes, the tenant's and the shared ones."""
        deployments = Deployment.objects.filter(is_active=True, provider__is_active=True).filter(
            Q(provider__tenant=tenant) | Q(provider__tenant=None)).values_list("public_model", flat=True)
        routes = Route.objects.filter(is_active=True).filter(Q(tenant=tenant) | Q(tenant=None)).values_list(
            "name", flat=True)
        return sorted({*deployments, *routes})

    def start_mock(self, port: int) -> subprocess.Popen:
        mock = subprocess.Popen([sys.executable, "-m", "providers.mock_upstream", "--port", str(port)],
                                cwd=settings.BASE_DIR)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)  # nosec B310: the local mock
                return mock
            except OSError:
                time.sleep(0.1)
        mock.terminate()
        raise SystemExit(f"the mock upstream did not start on port {port}")
