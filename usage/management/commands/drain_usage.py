import time

from django.core.management.base import BaseCommand

from usage import recorder


class Command(BaseCommand):
    help = "Write buffered usage events to the database (once, or in a loop with --loop)."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="Keep draining until stopped")
        parser.add_argument("--interval", type=float, default=1.0, help="Seconds between drains with --loop")

    def handle(self, loop, interval, **options):
        while True:
            written = recorder.drain_all()
            if not loop:
                self.stdout.write(f"wrote {written} usage event(s)")
                return
            time.sleep(interval)
