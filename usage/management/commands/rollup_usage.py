from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError

from usage import rollups


class Command(BaseCommand):
    help = ("Recompute usage rollups: what the periodic job does (every bucket of the last "
            "ROLLUP_LOOKBACK_HOURS that gained records), or every hour and day bucket since a moment.")

    def add_arguments(self, parser):
        parser.add_argument("--since", help="YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC): backfill every bucket from then")

    def handle(self, since, **options):
        if not since:
            self.stdout.write(f"{rollups.rollup_recent()} rollup row(s) written")
            return
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            raise CommandError("--since takes YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)") from None
        start = start.replace(tzinfo=start.tzinfo or UTC)
        written = sum(rollups.rollup_since(start, granularity) for granularity in rollups.STEP)
        self.stdout.write(f"{written} rollup row(s) written")
