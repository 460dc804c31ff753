from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError

from usage import rollups


class Command(BaseCommand):
    help = "Recompute usage rollups: the current and previous hour and day, or every bucket since a date."

    def add_arguments(self, parser):
        parser.add_argument("--since", help="YYYY-MM-DD (UTC): backfill every hour and day bucket from then")

    def handle(self, since, **options):
        if not since:
            self.stdout.write(f"{rollups.rollup_recent()} rollup row(s) written")
            return
        try:
            start = datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise CommandError("--since takes a date: YYYY-MM-DD") from None
        written = sum(rollups.rollup_since(start, granularity) for granularity in rollups.STEP)
        self.stdout.write(f"{written} rollup row(s) written")
