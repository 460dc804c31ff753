"""Reads that may go to a PostgreSQL streaming replica (DATABASE_REPLICA_URL), and nothing else.

A read goes to the replica only when its call site asks: `read(fn, *args)` runs `fn` with the
ORM's reads routed to the `replica` alias (ReplicaRouter below); everything else, everywhere,
reads and writes the primary. The call sites are the heavy reporting reads whose answer may be a
few seconds old: the admin dashboard's data (gateway_project.dashboard), the usage API's
records, summaries and experiment figures (usage.api) and the emailed cost reports
(usage.reports). A router that sent every read to the replica was the alternative; it was not
taken because a replica lags the primary, and much of the gateway reads what it has just
written: a key issued and used at once, a tenant created and then listed by the management API,
the rollup job reading the records it sums (a rollup made from a lagging copy would be marked
complete while missing records), the report job's delivery claim. Those stay on the primary by
default, and so do migrations (allow_migrate), sign-in, sessions and the user's tenant scope: a
call site works out who the user is and what they may see before it calls `read`, so a
membership revoked a moment ago counts at once.

What it keeps: no read fails because of the replica. A read that meets a replica error
(refused, timed out, closed, a query cancelled by a recovery conflict) runs again on the
primary, so the caller gets the primary's answer instead of a 500; each read served so is
counted in `gateway_db_replica_fallbacks_total`. When the replica itself does not answer, the
process logs it once and reads from the primary for DATABASE_REPLICA_RETRY_SECONDS before trying
the replica again; the first read that the replica serves again logs that it is back. An error
that the primary gives too is the caller's, as it would be without a replica.

What it bounds: how far behind the replica a read may be. A replica that has fallen more than
DATABASE_REPLICA_MAX_LAG_SECONDS behind (a long query holding replay back, replay paused, its
stream from the primary cut) leaves the reads to the primary until it is back under the bound,
logged once each way and counted as reason "lag". The lag is measured by one read at a time, at
most every min(5 s, a quarter of the bound) per process, so a read is at most 1.25 bounds behind.
Its measure is how long ago the primary was last seen in a state the replica has replayed
(LagGuard). Not the age of the replica's last replayed transaction alone: a replica of a quiet
primary has replayed everything, however old its last transaction is, and is not behind at all.

Without DATABASE_REPLICA_URL there is no `replica` alias and `read(fn)` is `fn()`.
"""

import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, InterfaceError, OperationalError, connections

from gateway_project.lib import metrics

log = logging.getLogger(__name__)

REPLICA = "replica"
T = TypeVar("T")

_on_replica: ContextVar[bool] = ContextVar("reads_on_replica", default=False)
_lock = threading.Lock()
_down = False  # the replica did not answer, and has not served a read since
_retry_at = 0.0  # time.monotonic() before which reads skip the replica


def configured() -> bool:
    return REPLICA in settings.DATABASES


def read(fn: Callable[..., T], *args, **kwargs) -> T:
    """fn(*args, **kwargs) with its reads on the replica, or on the primary if the replica fails them."""
    if not configured() or _on_replica.get():
        return fn(*args, **kwargs)
    if time.monotonic() < _retry_at:
        metrics.shared_inc("gateway_db_replica_fallbacks_total", "unreachable")
        return fn(*args, **kwargs)
    token = _on_replica.set(True)
    try:
        if lag_guard.behind():
            reason = "lag"
        else:
            result = fn(*args, **kwargs)
            if _down:
                _came_back()
            return result
    except (OperationalError, InterfaceError) as exc:
        reason = _why_failed()
        if reason == "unreachable":
            _went_down(exc)
    finally:
        _on_replica.reset(token)
    metrics.shared_inc("gateway_db_replica_fallbacks_total", reason)
    return fn(*args, **kwargs)


def _why_failed() -> str:
    """Why the replica failed a read: "unreachable" if it does not answer a connection now, else "failed"."""
    connection = connections[REPLICA]
    if connection.connection is None:
        return "unreachable"  # it could not connect at all: no second wait of the connect timeout
    return "failed" if _answers(connection) else "unreachable"


def _answers(connection) -> bool:
    """Whether the replica answers a new connection (the old one may be what broke)."""
    try:
        connection.close()
    except DatabaseError:
        pass
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        return False


def _went_down(exc: Exception) -> None:
    global _down, _retry_at
    with _lock:
        _retry_at = time.monotonic() + settings.DATABASE_REPLICA_RETRY_SECONDS
        first = not _down
        _down = True
    if first:
        log.warning("database replica unreachable, reading from the primary (trying again every %ss): %s",
                    settings.DATABASE_REPLICA_RETRY_SECONDS, str(exc).strip().splitlines()[0] if str(exc) else exc)


def _came_back() -> None:
    global _down
    with _lock:
        first, _down = _down, False
    if first:
        log.warning("database replica reachable again: reports read from it")


# The primary's WAL position now: its own, or, on a primary that is itself a standby (a cascade), what it replayed.
_PRIMARY_POSITION = ("SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() "
                     "END::text")
# Whether the replica is a standby, whether it has replayed each of two primary positions, and the
# age of the last transaction it replayed (seconds, by its clock against the primary's commit time).
_REPLICA_POSITION = ("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= %s::pg_lsn, "
                     "pg_last_wal_replay_lsn() >= %s::pg_lsn, "
                     "extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8")


class LagGuard:
    """Whether the replica is more than DATABASE_REPLICA_MAX_LAG_SECONDS behind the primary, measured
    at most every `every` seconds by one thread of the process while the others keep the last verdict.

    The lag is an upper bound on how old the replica's state is, the least of:
    - 0, if the replica has replayed the primary's position of this measure (taken just before): a
      replica of a quiet primary, whatever the age of its last transaction;
    - the time since the previous measure, if the replica has replayed the primary's position of
      then: what keeps a replica that replays a moment behind, while the primary writes WAL but
      commits nothing (a long bulk load), or after a first write in hours, from looking hours behind;
    - the age of the last transaction the replica replayed: under steady commits, the lag itself.
    A replica behind with none of these (no transaction replayed since it started) counts as over.
    Over the bound with no position of a recent measure to compare with (the process's first read,
    or the first after a quiet spell), the primary takes that read and the next read measures
    again, against this one's position, and is believed however long after it comes: a replica a
    moment behind a primary that commits seldom would otherwise look as far behind as its last
    transaction is old.
    A standby that is not in recovery (a copy that replays nothing, or the primary itself) is not
    measured: its lag is 0."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._due = 0.0  # clock() of the next measure
        self._previous: tuple[float, str] | None = None  # (clock(), the primary's position) measured then
        self._behind = False
        self._recheck = False  # the last measure was not sure: the next one is, however long after

    def behind(self) -> bool:
        """Whether this read should leave the replica for the primary."""
        bound = settings.DATABASE_REPLICA_MAX_LAG_SECONDS
        if bound <= 0 or self._clock() < self._due or not self._lock.acquire(blocking=False):
            return self._behind
        try:
            every = min(5.0, bound / 4)
            self._due = self._clock() + every
            measured = self._measure(every)
            if measured is None:
                return self._behind
            lag, sure = measured
            if lag > bound and not sure and not self._recheck:
                # No recent position to compare with: a replica a moment behind will have replayed this
                # one by the next read, which measures again. This read alone goes to the primary.
                self._due, self._recheck = 0.0, True
                return True
            self._recheck = False
            self._judge(lag, bound)
        finally:
            self._lock.release()
        return self._behind

    def _measure(self, every: float) -> tuple[float, bool] | None:
        """The replica's lag in seconds and whether it is sure (measured against a position of at most
        two intervals ago, or not resting on one), or None if the primary's position could not be
        read. A replica error is the caller's: read() counts it as the read's."""
        taken = self._clock()
        try:
            with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
                cursor.execute(_PRIMARY_POSITION)
                (position,) = cursor.fetchone()
        except DatabaseError:
            return None  # the primary's own reads will say more; keep the verdict
        previous, self._previous = self._previous, (taken, position)
        with connections[REPLICA].cursor() as cursor:
            cursor.execute(_REPLICA_POSITION, [position, previous[1] if previous else None])
            standby, has_now, has_previous, since_commit = cursor.fetchone()
        if not standby or has_now:
            return 0.0, True
        bounds = [max(0.0, since_commit)] if since_commit is not None else []
        if has_previous:
            bounds.append(self._clock() - previous[0])
        return min(bounds, default=float("inf")), previous is not None and taken - previous[0] <= 2 * every

    def _judge(self, lag: float, bound: float) -> None:
        if lag > bound and not self._behind:
            log.warning("database replica %s behind the primary, over DATABASE_REPLICA_MAX_LAG_SECONDS=%g: reports "
                        "read from the primary until it catches up", "too far" if lag == float("inf") else
                        f"{lag:.1f}s", bound)
        elif lag <= bound and self._behind:
            log.warning("database replica caught up (%.1fs behind): reports read from it again", lag)
        self._behind = lag > bound


lag_guard = LagGuard()


class ReplicaRouter:
    """Reads inside `read()` go to the replica; every other read, every write and every migration
    to the primary. Rows read from either may be related: they are the same database."""

    def db_for_read(self, model, **hints) -> str | None:
        return REPLICA if _on_replica.get() else DEFAULT_DB_ALIAS

    def db_for_write(self, model, **hints) -> str:
        # Explicit: Django would otherwise save a row where it was read from, the read-only replica.
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1, obj2, **hints) -> bool | None:
        return True if {obj1._state.db, obj2._state.db} <= {DEFAULT_DB_ALIAS, REPLICA} else None

    def allow_migrate(self, db, app_label, model_name=None, **hints) -> bool | None:
        return False if db == REPLICA else None
