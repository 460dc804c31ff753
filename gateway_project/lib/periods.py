"""Calendar periods in a time zone: where the day, week or month holding a moment starts and ends."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo


def calendar_bounds(period: str, tz: str, now: float) -> tuple[int, int]:
    """The start and end (epoch milliseconds) of the `period` ("day", "week", else a month) holding `now`
    in zone `tz`; weeks start on Monday."""
    local = datetime.fromtimestamp(now, ZoneInfo(tz))
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        end = start + timedelta(days=1)
    elif period == "week":
        start -= timedelta(days=start.weekday())
        end = start + timedelta(days=7)
    else:
        start = start.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    # Re-attach the zone after arithmetic so DST changes land on the right hour.
    start = start.replace(tzinfo=None).replace(tzinfo=ZoneInfo(tz))
    end = end.replace(tzinfo=None).replace(tzinfo=ZoneInfo(tz))
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
