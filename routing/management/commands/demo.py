import os
import secrets
import subprocess
import sys
import time
import urllib.request

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction

from keys import services as key_services
from keys.models import ApiKey
from providers.models import Deployment, Provider
from tenants.models import Membership, Tenant

from .serve import run_server

DEMO_MODELS = [
    # public name, upstream name, mode, input $/1M, output $/1M
    ("mock-gpt", "mock-gpt", "chat", "0.15", "0.60"),
    ("mock-gpt-large", "mock-gpt-large", "chat", "2.50", "10.00"),
    ("mock-embed", "mock-embed", "embedding", "0.02", "0"),
]


class Command(BaseCommand):
    help = "Set up a demo (admin user, tenant, key, mock provider) and serve the gateway with a mock upstream."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--mock-port", type=int, default=8001)
        parser.add_argument("--setup-only", action="store_true", help="Prepare the demo data, do not serve")

    def handle(self, host, port, mock_port, setup_only, **options):
        call_command("migrate", interactive=False, verbosity=0)
        password, key = self.setup(mock_port)
        url = f"http://{host}:{port}"
        self.stdout.write(self.style.SUCCESS("\nThe gateway demo is ready.\n"))
        self.stdout.write(f"  Admin:    {url}/admin/   login admin / {password}")
        self.stdout.write(f"  API:      {url}/v1   (models: {', '.join(m[0] for m in DEMO_MODELS)})")
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
    def setup(self, mock_port: int) -> tuple[str, str]:
        password = os.environ.get("DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User = get_user_model()
        admin, _ = User.objects.get_or_create(username="admin", defaults={"email": "admin@example.com"})
        admin.is_staff = admin.is_superuser = True
        admin.set_password(password)
        admin.save()
        tenant, _ = Tenant.objects.get_or_create(slug="demo", defaults={"name": "Demo"})
        Membership.objects.get_or_create(tenant=tenant, user=admin, defaults={"role": Membership.Role.OWNER})
        provider, _ = Provider.objects.get_or_create(name="mock", tenant=None, defaults={"kind": Provider.Kind.OPENAI_COMPATIBLE})
        provider.base_url = f"http://127.0.0.1:{mock_port}/v1"
        provider.allow_private_network = True  # the mock runs on loopback
        provider.set_api_key("mock-provider-secret")
        provider.save()
        for public, upstream, mode, price_in, price_out in DEMO_MODELS:
            Deployment.objects.update_or_create(
                provider=provider, public_model=public, upstream_model=upstream,
                defaults={"mode": mode, "input_price_per_mtok": price_in, "output_price_per_mtok": price_out},
            )
        # A fresh demo key each run: the old one cannot be shown again.
        for old in ApiKey.objects.filter(tenant=tenant, name="demo", revoked_at__isnull=True):
            old.revoke()
        _, key = key_services.issue(tenant, "demo", created_by=admin)
        return password, key

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
