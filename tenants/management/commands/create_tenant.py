from django.core.management.base import BaseCommand

from tenants.models import Tenant


class Command(BaseCommand):
    help = "Create a tenant (idempotent: an existing slug is left as it is)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", help="Display name (default: the slug)")

    def handle(self, slug, name=None, **options):
        tenant, created = Tenant.objects.get_or_create(slug=slug, defaults={"name": name or slug})
        if not created and name and tenant.name != name:
            tenant.name = name
            tenant.save(update_fields=["name"])
        self.stdout.write(f"{'created' if created else 'exists'}: tenant {tenant.slug} (id {tenant.id})")
