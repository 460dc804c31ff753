"""PostgreSQL clusters of a test's own, from the PostgreSQL 15 binaries on this machine, on
loopback ports: a primary (initdb) to stop and start without disturbing anyone, and a streaming
replica of it (`pg_basebackup -R`) whose replay can be paused, or its stream from the primary cut,
so that it lags on purpose.

PostgreSQL refuses to run as root: when the tests run as root, each cluster's directory (under
/tmp, removed by `remove()`) belongs to the postgres user and its commands run as that user."""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from tests.conftest import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class OwnPostgres:
    """A cluster with a database `gw`; with `primary`, a streaming replica of that cluster instead."""

    def __init__(self, primary: "OwnPostgres | None" = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/gw"
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_owner:
            shutil.chown(self.directory, "postgres")
        if primary is None:
            self._run(PG_BIN / "initdb", "-D", self.directory / "data", "-U", "postgres", "--auth=trust", "-E",
                      "UTF8", "--no-sync")
            self.start()
            self._run(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "gw")
        else:
            self._run(PG_BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", primary.port, "-U", "postgres",
                      "-D", self.directory / "data", "-R", "-X", "stream", "--checkpoint=fast")
            self.start()

    def _run(self, *args) -> None:
        subprocess.run([*self.as_owner, *map(str, args)], check=True, capture_output=True, timeout=120)

    def pg_ctl(self, *args: str) -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.directory / "data", "-w", *args)

    def start(self) -> None:
        self.pg_ctl("-o", f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "-l", str(self.directory / "log"), "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")  # every connection is dropped, new ones are refused

    def query(self, sql: str, *params) -> tuple:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as connection:
            return connection.execute(sql, params or None).fetchone()

    def load(self, source_url: str) -> None:
        """The schema of `source_url` (a migrated database) and its migration history: a migrated
        database in a second, where `manage.py migrate` takes half a minute."""
        dump = b"".join(subprocess.run([PG_BIN / "pg_dump", *args, source_url], check=True, capture_output=True,
                                       timeout=120).stdout
                        for args in (("--schema-only", "--no-owner", "--no-privileges"),
                                     ("--data-only", "-t", "django_migrations")))
        subprocess.run([PG_BIN / "psql", "-q", "-v", "ON_ERROR_STOP=1", self.url], input=dump, check=True,
                       capture_output=True, timeout=120)

    # --- as a replica ---------------------------------------------------------------------

    def wait_replayed(self, primary: "OwnPostgres", timeout: float = 30.0) -> None:
        """Until this replica has replayed everything written on `primary` so far."""
        (written,) = primary.query("SELECT pg_current_wal_insert_lsn()::text")
        deadline = time.monotonic() + timeout
        while not self.query("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", written)[0]:
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not catch up")
            time.sleep(0.05)

    def pause_replay(self) -> None:
        self.query("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.query("SELECT pg_wal_replay_resume()")

    def cut_stream(self) -> None:
        """Stop streaming from the primary (no primary_conninfo): the replica replays what it received, then waits."""
        (self._conninfo,) = self.query("SHOW primary_conninfo")
        self._configure("ALTER SYSTEM SET primary_conninfo = ''")

    def restore_stream(self) -> None:
        self._configure(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(self._conninfo)))

    def _configure(self, statement: "str | sql.Composable") -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as connection:
            connection.execute(statement)
            connection.execute("SELECT pg_reload_conf()")

    def remove(self) -> None:
        try:
            self.pg_ctl("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.directory, ignore_errors=True)
