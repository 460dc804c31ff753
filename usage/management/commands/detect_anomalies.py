from django.core.management.base import BaseCommand

from usage import anomalies


class Command(BaseCommand):
    help = ("Judge the last ANOMALY_LOOKBACK_HOURS closed hours of spend per tenant, key and model, and email new "
            "anomalies (what the periodic job does; safe to run again).")

    def handle(self, **options):
        found = anomalies.detect()
        for anomaly in found:
            self.stdout.write(anomalies.describe(anomaly))
        self.stdout.write(f"{len(found)} new anomalies")
