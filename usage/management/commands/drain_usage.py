import logging
import time

import redis
from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections

from usage import recorder

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Write buffered usage events to the database (once, or in a loop with --loop)."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="Keep draining until stopped")
        parser.add_argument("--interval", type=float, default=1.0, help="Seconds between drains with --loop")

    def handle(self, loop, interval, **options):
        if not loop:
            self.stdout.write(f"wrote {recorder.drain_all()} usage event(s)")
            return
        while True:
            try:
                recorder.drain_all()
            except (redis.RedisError, OSError, DatabaseError) as exc:
                # Redis restarting or the database away: the events stay
                # buffered (unacknowledged) and the next round writes them.
                log.warning("usage drain failed, retrying: %s", exc)
                close_old_connections()
            time.sleep(interval)
