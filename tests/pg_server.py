"""PostgreSQL servers for the tests: the shared test server and throwaway clusters of our own.

The shared server comes from MOA_SEARCH_TEST_POSTGRES_URL (`.ci/test` starts one with
`.ci/postgres`). Tests that need it fail when CI=true and the server is missing, and skip with the
reason otherwise, so a missing server never passes as green. `OwnCluster` starts a second cluster
from the same binaries on another loopback port, for tests that stop the server mid-run.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

URL_ENV = "MOA_SEARCH_TEST_POSTGRES_URL"


def missing_server(reason: str) -> None:
    """Fail under CI, where the server must exist, and skip with the reason elsewhere."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"PostgreSQL tests cannot run: {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


def libpq_url(url: str, database: str | None = None, password: str | None = None) -> str:
    """Return the URL in the plain postgresql:// form psycopg2 accepts, optionally with another
    database or password."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    if password is not None:
        parsed = parsed.set(password=password)
    return parsed.render_as_string(hide_password=False)


def admin_url() -> str:
    """Return the test server's URL after checking that it accepts connections."""
    import psycopg2

    url = os.environ.get(URL_ENV)
    if not url:
        missing_server(f"{URL_ENV} is not set; `bash .ci/postgres start` starts a server and prints its URL")
    try:
        psycopg2.connect(libpq_url(url), connect_timeout=5).close()
    except psycopg2.Error as error:
        missing_server(f"cannot connect to {make_url(url).render_as_string(hide_password=True)}: "
                       f"{str(error).strip()}")
    return url


def _execute(url: str, statement: str) -> None:
    import psycopg2

    connection = psycopg2.connect(libpq_url(url), connect_timeout=5)
    # CREATE and DROP DATABASE cannot run inside a transaction.
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def create_database(url: str) -> str:
    """Create a database with a fresh name on the server at `url` and return its name."""
    name = f"moa_search_test_{os.getpid()}_{secrets.token_hex(3)}"
    _execute(url, f'CREATE DATABASE "{name}"')
    return name


def drop_database(url: str, name: str) -> None:
    """Drop the database, closing connections that workers left open."""
    _execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    """Return a loopback TCP port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path | None:
    """Return the newest installed /usr/lib/postgresql/N/bin, or None."""
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(Path(path).parent.name))
    return Path(folders[-1]) if folders else None


class OwnCluster:
    """A throwaway PostgreSQL cluster under /tmp on a free loopback port, trusting local users.

    `start` runs initdb the first time; `kill` sends the postmaster SIGINT (fast shutdown, which
    closes every client connection) by its pid and waits for it to exit; `close` stops it and
    removes its folder.
    """

    def __init__(self) -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            missing_server("no PostgreSQL binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="moa-search-test-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres:sekret@127.0.0.1:{self.port}/postgres"
        if os.getuid() == 0:
            # The server refuses to run as root, so the cluster belongs to the postgres user.
            shutil.chown(self.root, user="postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o", options, "start")

    def pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        return int(pid_file.read_text().splitlines()[0]) if pid_file.exists() else None

    def kill(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL postmaster {pid} did not stop within 60 s")

    def close(self) -> None:
        try:
            self.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
