from django.core.management.base import BaseCommand

from usage import retention


class Command(BaseCommand):
    help = "Delete usage records, audit entries, health checks and rollups past their retention."

    def handle(self, **options):
        for what, count in retention.cleanup().items():
            self.stdout.write(f"{count} {what} deleted")
