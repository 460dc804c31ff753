from django.core.management.base import BaseCommand

from providers import health


class Command(BaseCommand):
    help = "Probe every active provider and deployment now, record the results and feed them to routing."

    def handle(self, **options):
        for check in health.check_all():
            what = f"{check.provider.name}" + (f" / {check.deployment.public_model}" if check.deployment else "")
            self.stdout.write(f"{what}: {'ok' if check.ok else 'FAILED ' + check.error} ({check.latency_ms} ms)")
