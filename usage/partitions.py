"""The usage ledger's monthly partitions on PostgreSQL (embedded mode's SQLite keeps one table).

`usage_usagerecord` is partitioned by range of created_at, the call's own
start time, one partition per UTC calendar month, named
`usage_usagerecord_pYYYYMM`, and a default partition for any row no month
holds (an event older than a dropped month, a clock far ahead), so that no
event is ever refused for want of a partition. The periodic job
(`ensure_ahead`) creates the current month's and USAGE_PARTITIONS_AHEAD
months' more before any event needs them; a month created while the default
partition holds some of its rows takes them over. Retention drops a whole
month once every row in it is past every tenant's retention (`drop_before`):
one catalog change, however many rows it held; what the default partition
holds goes row by row with the rest (usage.retention).

Creating and dropping take an advisory lock of their own, so two workers never
race on the same month, and a short lock_timeout, so that a partition change
waiting behind a long report query gives up (and is retried by the next run)
instead of holding up every insert queued behind it.
"""

import logging
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime

from django.conf import settings
from django.db import connection, transaction

log = logging.getLogger(__name__)

PARENT = "usage_usagerecord"
DEFAULT = f"{PARENT}_default"
_NAME = re.compile(rf"^{PARENT}_p(\d{{4}})(\d{{2}})$")
_LOCK = 0x55534750  # pg_advisory_xact_lock key: "USGP"


def enabled() -> bool:
    return connection.vendor == "postgresql"


def month_of(moment: datetime) -> date:
    moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def name_of(month: date) -> str:
    return f"{PARENT}_p{month.year:04d}{month.month:02d}"


def existing() -> dict[date, str]:
    """The ledger's partitions: month -> table name."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                       "WHERE i.inhparent = %s::regclass", [PARENT])
        names = [row[0] for row in cursor.fetchall()]
    months = {}
    for name in names:
        if match := _NAME.match(name):
            months[date(int(match[1]), int(match[2]), 1)] = name
    return months


def _bounds(month: date) -> tuple[str, str]:
    # SQL literals built from a date's digits only (partition bounds take no parameters).
    after = next_month(month)
    return f"'{month.isoformat()} 00:00:00+00'", f"'{after.isoformat()} 00:00:00+00'"


def _create(months: Iterable[date]) -> list[str]:
    created = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '5s'")
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        have = existing()
        for month in sorted(set(months) - set(have)):
            name, (low, high) = name_of(month), _bounds(month)
            # Built apart and attached: the month's rows the default partition holds move in first.
            cursor.execute(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            moved = (f"WITH moved AS (DELETE FROM {DEFAULT} WHERE created_at >= {low} AND "  # noqa: S608  # nosec B608
                     f"created_at < {high} RETURNING *) INSERT INTO {name} SELECT * FROM moved")
            cursor.execute(moved)
            cursor.execute(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES FROM ({low}) TO ({high})")
            created.append(name)
    if created:
        log.info("usage ledger partitions created: %s", ", ".join(created))
    return created


def create_default() -> None:
    """The partition of rows no month holds (the migration's)."""
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {DEFAULT} PARTITION OF {PARENT} DEFAULT")


def ensure(first: datetime | None = None, last: datetime | None = None) -> list[str]:
    """Create the partitions of every month from `first` to `last` (default: now) that lacks one,
    and of USAGE_PARTITIONS_AHEAD months after `last`; return the names created."""
    if not enabled():
        return []
    month = month_of(first or datetime.now(UTC))
    until = month_of(max(last or datetime.now(UTC), datetime.now(UTC)))
    for _ in range(settings.USAGE_PARTITIONS_AHEAD):
        until = next_month(until)
    months = []
    while month <= until:
        months.append(month)
        month = next_month(month)
    return _create(months)


def ensure_ahead() -> list[str]:
    """The periodic job: this month's partition and the next USAGE_PARTITIONS_AHEAD months'."""
    return ensure()


def drop_before(cutoff: datetime) -> list[str]:
    """Drop every partition whose month ends at or before `cutoff`; return their names."""
    if not enabled():
        return []
    dropped = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '5s'")
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        for month, name in sorted(existing().items()):
            if datetime(*next_month(month).timetuple()[:3], tzinfo=UTC) <= cutoff:
                cursor.execute(f"DROP TABLE {name}")  # nosec B608: a name read from the catalog, matching _NAME
                dropped.append(name)
    if dropped:
        log.info("usage ledger partitions dropped (past retention): %s", ", ".join(dropped))
    return dropped
