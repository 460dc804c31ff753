from django.core.management.base import BaseCommand, CommandError

from keys import services as key_services
from tenants import audit
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Create an API key and print it, alone, on the last line. It is not shown again."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--models", default="", help="Comma-separated public model names (default: all)")
        parser.add_argument("--expires-in", type=int, metavar="DAYS", help="Expire after this many days")

    def handle(self, tenant, name, models, expires_in=None, **options):
        try:
            tenant_obj = Tenant.objects.get(slug=tenant)
        except Tenant.DoesNotExist:
            raise CommandError(f"no tenant with slug {tenant!r}; create it with create_tenant") from None
        if expires_in is not None and expires_in <= 0:
            raise CommandError("--expires-in must be a positive number of days")
        allowed = [m.strip() for m in models.split(",") if m.strip()]
        # Audited as done by the system, from the command line.
        with audit.acting():
            key, secret = key_services.issue(tenant_obj, name, models_allowed=allowed, expires_in_days=expires_in)
        self.stdout.write(f"created key {key.prefix}… for tenant {tenant_obj.slug}; store it now:")
        self.stdout.write(secret)
