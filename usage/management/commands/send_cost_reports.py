from datetime import datetime

from django.core.management.base import BaseCommand, CommandError

from usage import reports


class Command(BaseCommand):
    help = "Email the cost reports of the last closed period (each report is sent once, however often this runs)."

    def add_arguments(self, parser):
        parser.add_argument("--period", choices=reports.PERIODS, required=True)
        parser.add_argument("--date", help="YYYY-MM-DD: report as if today were this date")

    def handle(self, period, date, **options):
        try:
            today = datetime.strptime(date, "%Y-%m-%d").date() if date else None
        except ValueError:
            raise CommandError("--date takes YYYY-MM-DD") from None
        self.stdout.write(f"{reports.send_reports(period, today)} report(s) sent")
