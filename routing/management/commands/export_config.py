"""Write the gateway's configuration as a file apply_config reads (docs/config.md).

    python manage.py export_config [--output FILE]
"""

from pathlib import Path

from django.core.management.base import BaseCommand

from routing.config.export import export


class Command(BaseCommand):
    help = "Write tenants, providers, routes, limits and policies as a configuration file (secrets as references)."

    def add_arguments(self, parser):
        parser.add_argument("--output", "-o", default="", help="File to write (default: standard output)")

    def handle(self, output, **options):
        text = export()
        if output:
            Path(output).write_text(text)
        else:
            self.stdout.write(text, ending="")
