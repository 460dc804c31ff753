"""Apply a configuration file (docs/config.md): print the changes, make them in one transaction.

    python manage.py apply_config deploy/gateway.yaml [--dry-run] [--prune] [--actor USERNAME]
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from routing.config.apply import apply
from routing.config.schema import ConfigError


class Command(BaseCommand):
    help = "Make the gateway's tenants, providers, routes, limits and policies what a YAML file says."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--dry-run", action="store_true", help="Show the changes, make none")
        parser.add_argument("--prune", action="store_true", help="Also delete what the file does not name")
        parser.add_argument("--actor", default="", help="Username the audit log names (default: apply_config)")

    def handle(self, path, dry_run, prune, actor, **options):
        user = None
        if actor:
            user = get_user_model()._default_manager.filter(username=actor).first()
            if user is None:
                raise CommandError(f"No user {actor!r}.")
        try:
            changes, kept = apply(path, prune=prune, dry_run=dry_run, actor=user)
        except ConfigError as error:
            raise CommandError(f"Nothing applied; {len(error.problems)} problem(s):\n{error}") from None
        for change in changes:
            self.stdout.write(str(change))
        if kept:
            self.stdout.write(f"{len(kept)} object(s) the file does not name are kept (--prune deletes them):")
            for what in kept:
                self.stdout.write(f"  {what}")
        verb = "would be made (dry run)" if dry_run else "applied"
        self.stdout.write(f"{len(changes)} change(s) {verb}." if changes else "No changes.")
