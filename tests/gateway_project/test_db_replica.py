"""The database replica (DATABASE_REPLICA_URL, gateway_project/lib/db_replica.py), on a real
PostgreSQL primary and streaming replica of the tests' own (tests/pg_servers.py), behind a
gateway process with a Redis of its own.

The replica's replay is paused to make it lag on purpose: what the dashboard, the usage API and
the cost report then show is the replica's, while keys, writes and the management API's
read-after-write stay on the primary. A stopped replica leaves those reads to the primary, and so
does one further behind than DATABASE_REPLICA_MAX_LAG_SECONDS.
"""

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import ROOT, OwnRedis, database_url, start_gateway, wait_until
from tests.pg_servers import OwnPostgres

# The schema loaded into the primary is the suite's test database's: it exists for tests that ask for one.
pytestmark = pytest.mark.django_db

PASSWORD = "replica-boss-pass-1"
RECORDS = "SELECT count(*) FROM usage_usagerecord"
BOUND = 2  # DATABASE_REPLICA_MAX_LAG_SECONDS of the guarded gateway (measured every half second)
# How old the last transaction the replica replayed is, in seconds.
SINCE_COMMIT = "SELECT extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8"


class Site:
    """A gateway on a primary and its replica, signed in as a superuser (the API with basic auth,
    the admin with a session)."""

    def __init__(self, primary: OwnPostgres, replica: OwnPostgres, env: dict, gateway) -> None:
        self.primary, self.replica, self.env, self.gateway = primary, replica, env, gateway
        self.api = httpx.Client(base_url=gateway.url, auth=("boss", PASSWORD), timeout=30)
        self.admin = httpx.Client(base_url=gateway.url, timeout=30)
        self.admin.get("/admin/login/")
        signed_in = self.admin.post("/admin/login/?next=/admin/", data={
            "username": "boss", "password": PASSWORD, "next": "/admin/",
            "csrfmiddlewaretoken": self.admin.cookies["csrftoken"]})
        assert signed_in.status_code == 302, signed_in.text

    def made(self, path: str, body: dict) -> dict:
        created = self.api.post(f"/api/manage/{path}/", json=body)
        assert created.status_code == 201, created.text
        return created.json()

    def call(self, key: str) -> int:
        return httpx.post(self.gateway.url + "/v1/chat/completions", timeout=30, headers={
            "Authorization": f"Bearer {key}"}, json={"model": "gpt-test", "messages": [
                {"role": "user", "content": "Hi"}]}).status_code

    def summary(self) -> int:
        response = self.api.get("/api/usage/summary")
        assert response.status_code == 200, response.text
        return response.json()["totals"]["requests"]

    def dashboard(self) -> int:
        response = self.admin.get("/admin/dashboard/data")
        assert response.status_code == 200, response.text
        return response.json()["totals"]["requests"]

    def fallbacks(self, reason: str) -> float:
        metrics = httpx.get(self.gateway.url + "/metrics", timeout=10).text
        prefix = f'gateway_db_replica_fallbacks_total{{reason="{reason}"}}'
        return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix))

    def reported(self) -> str:
        """The staff's daily cost report of today, as `manage.py send_cost_reports` emails it."""
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
        self.primary.query("DELETE FROM usage_reportdelivery RETURNING 1")
        sent = subprocess.run([sys.executable, "manage.py", "send_cost_reports", "--period", "day", "--date",
                               tomorrow], cwd=ROOT, env={**self.env, "EMAIL_URL": "consolemail://"},
                              capture_output=True, text=True, timeout=120, check=True)
        return next(line for line in sent.stdout.splitlines() if line.startswith("Requests: "))


def _superuser(primary: OwnPostgres) -> None:
    from django.contrib.auth.hashers import make_password

    primary.query("INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff, "
                  "is_active, date_joined) VALUES (%s, true, 'boss', '', '', 'boss@example.com', true, true, now()) "
                  "RETURNING id", make_password(PASSWORD))


@pytest.fixture(scope="module")
def site(django_db_setup, mock_upstream, tmp_path_factory):
    """The schema, a superuser, then (through the management API) a tenant, a provider on the mock
    and a key; the gateway reads its reports from the replica."""
    from django.conf import settings

    primary = OwnPostgres()
    replica = OwnPostgres(primary=primary)
    redis_server = OwnRedis(tmp_path_factory.mktemp("replica-redis"))
    gateway = None
    try:
        primary.load(database_url(settings.DATABASES["default"]))
        _superuser(primary)
        # A lag bound of ten minutes: no pause of replay in these tests outlasts it, however slow the machine.
        env = {"DATABASE_URL": primary.url, "DATABASE_REPLICA_URL": replica.url, "DATABASE_REPLICA_RETRY_SECONDS": "1",
               "DATABASE_REPLICA_MAX_LAG_SECONDS": "600", "REDIS_URL": redis_server.url, "TRUSTED_PROXIES": ""}
        gateway = start_gateway(env)
        site = Site(primary, replica, {**os.environ, **env}, gateway)
        site.tenant = site.made("tenants", {"name": "Acme", "slug": "acme"})["id"]
        provider = site.made("providers", {"name": "mock", "kind": "openai_compatible", "api_key": "sk-mock-1234",
                                           "base_url": mock_upstream.url + "/v1", "allow_private_network": True})
        site.made("deployments", {"provider": provider["id"], "public_model": "gpt-test", "upstream_model": "mock-gpt",
                                  "input_price_per_mtok": "0.15", "output_price_per_mtok": "0.60"})
        site.key = site.made("keys", {"name": "first", "tenant": site.tenant})["secret"]
        models = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {site.key}"}, timeout=10)
        assert wait_until(lambda: "gpt-test" in str(models.get("/v1/models").json()))
        yield site
    finally:
        if gateway is not None:
            gateway.stop()
        redis_server.stop()
        replica.remove()
        primary.remove()


def test_reports_read_the_replica_while_writes_and_keys_use_the_primary(site):
    assert site.call(site.key) == 200
    assert wait_until(lambda: site.primary.query(RECORDS)[0] == 1, timeout=10)
    site.replica.wait_replayed(site.primary)
    assert site.summary() == site.dashboard() == 1

    site.replica.pause_replay()
    try:
        # A key issued now is on the primary alone, and works at once: key lookups read the primary.
        issued = site.made("keys", {"name": "second", "tenant": site.tenant})
        assert site.api.get(f"/api/manage/keys/{issued['id']}/").status_code == 200
        assert site.replica.query("SELECT count(*) FROM keys_apikey")[0] == 1
        assert site.call(issued["secret"]) == 200
        assert wait_until(lambda: site.primary.query(RECORDS)[0] == 2, timeout=10)
        assert site.replica.query(RECORDS)[0] == 1
        # The reports are the replica's: a moment behind.
        assert site.summary() == 1
        assert site.dashboard() == 1
        assert len(site.api.get("/api/usage/records").json()["results"]) == 1
        ledger = site.admin.get("/admin/usage/usagerecord/")
        assert ledger.status_code == 200 and re.search(r"\b1 usage record\b", ledger.text), ledger.text[-3000:]
        assert site.reported().startswith("Requests: 1 ")
    finally:
        site.replica.resume_replay()
    site.replica.wait_replayed(site.primary)
    assert site.summary() == site.dashboard() == 2


def test_a_stopped_replica_leaves_the_reports_to_the_primary(site):
    (recorded,) = site.primary.query(RECORDS)
    site.replica.stop()
    try:
        assert site.dashboard() == recorded
        assert site.summary() == recorded
        assert site.dashboard() == recorded
        assert f"{recorded} usage records" in site.admin.get("/admin/usage/usagerecord/").text
        assert site.reported().startswith(f"Requests: {recorded} ")
        metrics = httpx.get(site.gateway.url + "/metrics", timeout=10).text
        fallbacks = [line for line in metrics.splitlines()
                     if line.startswith('gateway_db_replica_fallbacks_total{reason="unreachable"}')]
        assert fallbacks and float(fallbacks[0].split()[-1]) >= 3
        assert site.gateway.output().count("database replica unreachable") == 1
    finally:
        site.replica.start()
    # Back, it serves the reports again once the retry delay has passed.
    site.replica.pause_replay()
    try:
        assert site.call(site.key) == 200
        assert wait_until(lambda: site.primary.query(RECORDS)[0] == recorded + 1, timeout=10)
        assert wait_until(lambda: site.summary() == recorded, timeout=5)
        assert "database replica reachable again" in site.gateway.output()
    finally:
        site.replica.resume_replay()


@pytest.fixture()
def guarded(site):
    """A second gateway on the same primary, replica and Redis whose replica may be BOUND seconds behind."""
    gateway = start_gateway({**site.env, "DATABASE_REPLICA_MAX_LAG_SECONDS": str(BOUND)})
    try:
        guarded = Site(site.primary, site.replica, site.env, gateway)
        guarded.tenant, guarded.key = site.tenant, site.key
        yield guarded
    finally:
        gateway.stop()


def _served_by_replica(site: Site, call) -> bool:
    """Whether call() made a gateway run a query on the replica other than its lag measure: the
    last query of each of the replica's client connections, as pg_stat_activity shows it."""
    (before,) = site.replica.query("SELECT clock_timestamp()")
    call()
    (served,) = site.replica.query(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
        "AND query_start > %s AND query NOT LIKE '%%pg_last_wal_replay_lsn%%'", before)
    return served > 0


def test_a_replica_too_far_behind_leaves_the_reports_to_the_primary(site, guarded):
    site.replica.wait_replayed(site.primary)
    (recorded,) = site.primary.query(RECORDS)
    # Idle and caught up, its last transaction older than the bound: not behind, it serves the reports.
    assert wait_until(lambda: site.replica.query(SINCE_COMMIT)[0] > BOUND + 1, timeout=30)
    lagged = guarded.fallbacks("lag")
    assert _served_by_replica(guarded, guarded.dashboard)
    assert _served_by_replica(guarded, guarded.summary)
    assert guarded.summary() == guarded.dashboard() == recorded
    assert site.replica.query(SINCE_COMMIT)[0] > BOUND
    assert guarded.fallbacks("lag") == lagged
    assert "behind the primary" not in guarded.gateway.output()

    site.replica.pause_replay()
    try:
        assert guarded.call(guarded.key) == 200
        assert wait_until(lambda: site.primary.query(RECORDS)[0] == recorded + 1, timeout=10)
        # More than BOUND behind: the guarded gateway's reports are the primary's ...
        assert wait_until(lambda: guarded.summary() == recorded + 1, timeout=BOUND + 5)
        assert guarded.dashboard() == recorded + 1
        assert len(guarded.api.get("/api/usage/records").json()["results"]) == recorded + 1
        assert f"{recorded + 1} usage records" in guarded.admin.get("/admin/usage/usagerecord/").text
        assert not _served_by_replica(guarded, guarded.dashboard)
        assert guarded.fallbacks("lag") >= lagged + 3
        # ... while the replica has not the new record, and a gateway allowing ten minutes still reads it.
        assert site.replica.query(RECORDS)[0] == recorded
        assert site.summary() == recorded
        assert guarded.gateway.output().count("behind the primary") == 1
    finally:
        site.replica.resume_replay()
    site.replica.wait_replayed(site.primary)
    # Caught up, the replica serves the reports again, and no more reads go to the primary for lag.
    assert wait_until(lambda: guarded.summary() == recorded + 1
                      and "database replica caught up" in guarded.gateway.output(), timeout=5)
    assert _served_by_replica(guarded, guarded.dashboard)
    lagged = guarded.fallbacks("lag")
    assert guarded.dashboard() == guarded.summary() == recorded + 1
    assert guarded.fallbacks("lag") == lagged
    assert guarded.gateway.output().count("behind the primary") == 1


def test_a_replica_cut_off_from_the_primary_is_behind_too(site, guarded):
    site.replica.wait_replayed(site.primary)
    (recorded,) = site.primary.query(RECORDS)
    site.replica.cut_stream()
    try:
        assert wait_until(lambda: not site.replica.query("SELECT count(*) FROM pg_stat_wal_receiver")[0])
        assert guarded.call(guarded.key) == 200
        assert wait_until(lambda: site.primary.query(RECORDS)[0] == recorded + 1, timeout=10)
        # By its own positions the replica has replayed all it received: the primary's say it is behind.
        assert site.replica.query("SELECT pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()")[0]
        assert wait_until(lambda: guarded.summary() == recorded + 1, timeout=BOUND + 5)
        assert guarded.dashboard() == recorded + 1
        assert site.replica.query(RECORDS)[0] == recorded
        assert guarded.gateway.output().count("behind the primary") == 1
    finally:
        site.replica.restore_stream()
    site.replica.wait_replayed(site.primary)
    assert wait_until(lambda: guarded.summary() == recorded + 1
                      and "database replica caught up" in guarded.gateway.output(), timeout=5)
    assert _served_by_replica(guarded, guarded.dashboard)


class _Positions:
    """The primary's and the replica's WAL positions (as numbers), as LagGuard's two queries read them."""

    def __init__(self) -> None:
        self.primary = self.replayed = 100
        self.since_commit: float | None = 3600.0  # the replica's last replayed transaction: an hour old
        self.standby, self.queries, self.fails = True, 0, False

    def cursor(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql, params=None):
        from django.db import OperationalError

        self.queries += 1
        if params is None:  # the primary's position
            if self.fails:
                raise OperationalError("the primary went away")
            self.row = (str(self.primary),)
        else:
            now, previous = params
            self.row = (self.standby, self.replayed >= int(now),
                        previous is not None and self.replayed >= int(previous), self.since_commit)

    def fetchone(self):
        return self.row


@pytest.fixture()
def positions(settings, monkeypatch):
    from gateway_project.lib import db_replica

    settings.DATABASE_REPLICA_MAX_LAG_SECONDS = BOUND
    positions = _Positions()
    monkeypatch.setattr(db_replica, "connections", {"default": positions, db_replica.REPLICA: positions})
    positions.now = 1000.0
    positions.guard = db_replica.LagGuard(clock=lambda: positions.now)
    return positions


def test_the_lag_is_measured_once_per_interval_however_many_reads(positions):
    assert not any(positions.guard.behind() for _ in range(50))
    assert positions.queries == 2  # one measure: the primary's position, then the replica's
    positions.now += BOUND / 4
    assert not positions.guard.behind() and positions.queries == 4


def test_a_replica_replaying_a_moment_behind_a_load_that_commits_nothing_is_not_behind(positions, caplog):
    """The primary writes WAL for seconds without a commit (the replica's last transaction stays an
    hour old) and the replica replays each measure's position by the next. The process's first read
    has nothing to compare with: that read alone goes to the primary, and nothing is logged."""
    positions.primary = 105
    assert positions.guard.behind()
    positions.replayed = 105
    verdicts = []
    for _ in range(20):
        positions.primary += 5
        verdicts.append(positions.guard.behind())
        positions.now += BOUND / 4
        positions.replayed = positions.primary
    assert not any(verdicts)
    assert "behind the primary" not in caplog.text


def test_a_replica_that_stops_replaying_is_behind_once_its_last_transaction_is_older_than_the_bound(positions):
    positions.since_commit = 0.1
    assert not positions.guard.behind()
    seen = []
    for _ in range(12):  # the primary commits every quarter of a second, the replica replays nothing
        positions.now += BOUND / 8
        positions.primary += 5
        positions.since_commit += BOUND / 8
        seen.append(positions.guard.behind())
    # Its last transaction passes the bound at the 8th step (index 7); it is found by the next measure.
    assert not any(seen[:7]) and seen.index(True) <= 8 and all(seen[seen.index(True):])
    positions.replayed = positions.primary
    positions.now += BOUND / 4
    assert not positions.guard.behind()


def test_a_stuck_replica_read_seldom_is_found_behind_by_the_second_read(positions, caplog):
    positions.primary, positions.since_commit = 200, 100.0
    assert positions.guard.behind()  # nothing to compare with: this read alone goes to the primary
    assert "behind the primary" not in caplog.text
    positions.now += 60  # the next read a minute later: the replica has replayed nothing since
    positions.primary, positions.since_commit = 300, 160.0
    assert positions.guard.behind()
    assert "database replica 160.0s behind the primary" in caplog.text


def test_a_behind_replica_with_no_transaction_replayed_is_behind_and_one_not_in_recovery_is_not(positions, caplog):
    positions.since_commit, positions.primary = None, 200
    assert positions.guard.behind()
    assert positions.guard.behind()  # measured again at once, against the first read's position
    assert "database replica too far behind the primary" in caplog.text
    positions.standby = False
    positions.now += BOUND / 4
    assert not positions.guard.behind()


def test_the_verdict_stands_while_the_primary_cannot_tell_its_position(positions):
    positions.primary = 200
    assert positions.guard.behind() and positions.guard.behind()
    positions.fails, positions.replayed = True, 200
    positions.now += BOUND / 4
    assert positions.guard.behind()
