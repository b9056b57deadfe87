"""Open Optuna study storage from a URL: the one module that deals with databases.

Every command that reads or writes studies goes through `open_storage(url)`, which returns an
Optuna `RDBStorage` with the heartbeat switched on, so a trial whose process was killed is
detected as stale and retried. Any SQLAlchemy URL works (SQLite, PostgreSQL, MySQL).

SQLite needs care when several local workers share one file: connections wait for a lock
(busy timeout) instead of failing, the file runs in write-ahead-log mode so readers do not
block the writer, and every transaction starts with BEGIN IMMEDIATE. Without that last point a
transaction that first reads and then writes can fail at once with "database is locked" when
another process wrote in between, because SQLite cannot upgrade its snapshot.

Environment variables (whole seconds, because Optuna takes integers):
- MOA_SEARCH_HEARTBEAT_SECONDS: how often a running trial records that it is alive (default 30).
- MOA_SEARCH_GRACE_SECONDS: how long without a heartbeat before a running trial counts as stale
  (default 3 × the heartbeat interval).
- MOA_SEARCH_STORAGE_RETRY_SECONDS: how long a worker keeps retrying a lost database connection
  before it gives up (default 120).
- MOA_SEARCH_CONNECT_TIMEOUT_SECONDS: how long one connection attempt to a PostgreSQL or MySQL
  server may take before it fails (default 10), so an unreachable host gives an error, not a hang.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from moa_search.errors import StorageError
from moa_search.paths import RESULTS_ENV, STORAGE_ENV, results_dir

logger = logging.getLogger(__name__)

HEARTBEAT_ENV = "MOA_SEARCH_HEARTBEAT_SECONDS"
GRACE_ENV = "MOA_SEARCH_GRACE_SECONDS"
RETRY_ENV = "MOA_SEARCH_STORAGE_RETRY_SECONDS"
CONNECT_TIMEOUT_ENV = "MOA_SEARCH_CONNECT_TIMEOUT_SECONDS"
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10
DEFAULT_HEARTBEAT_SECONDS = 30
SQLITE_BUSY_TIMEOUT_SECONDS = 60

# Drivers each backend needs, for the error message when one is missing.
_DRIVER_HINTS = {
    "postgresql": "pip install 'moa-search[postgres]' (psycopg2-binary)",
    "mysql": "pip install 'moa-search[mysql]' (pymysql)",
}

# Backend: (default driver module, module the extra installs, drivername that selects it).
_FALLBACK_DRIVERS = {
    "postgresql": ("psycopg", "psycopg2", "postgresql+psycopg2"),
    "mysql": ("MySQLdb", "pymysql", "mysql+pymysql"),
}

T = TypeVar("T")


def redact_url(url: str) -> str:
    """Return the URL with its password replaced by ***, for logs, tables and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError):
        # Not parseable as a SQLAlchemy URL: hide whatever sits between "user:" and "@".
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def _scrub(text: str, url: str) -> str:
    """Remove the URL's password from a driver's error text, in case the driver echoes it."""
    try:
        password = make_url(url).password
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError):
        password = None
    text = text.replace(url, redact_url(url))
    return text.replace(password, "***") if password else text


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StorageError(f"{name} must be a whole number of seconds >= 1, got {raw!r}") from None
    if value < 1:
        raise StorageError(f"{name} must be a whole number of seconds >= 1, got {value}")
    return value


def heartbeat_settings() -> tuple[int, int]:
    """Return (heartbeat interval, grace period) in seconds from the environment or the defaults."""
    interval = _env_int(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_SECONDS)
    grace = _env_int(GRACE_ENV, 3 * interval)
    if grace <= interval:
        raise StorageError(f"{GRACE_ENV} ({grace} s) must be longer than the heartbeat interval ({interval} s), "
                           "or every slow heartbeat would mark a live trial as stale")
    return interval, grace


def _normalise_url(url: str) -> str:
    """Parse the URL and pick an installed PostgreSQL or MySQL driver when the URL names none."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as error:
        raise StorageError(f"invalid storage URL {redact_url(url)!r}: {error}. Use a SQLAlchemy URL such as "
                           "sqlite:///results/moa_search.db or postgresql://user:password@host:5432/dbname") from None
    # A URL without a driver gets SQLAlchemy's default driver (psycopg 3 for PostgreSQL in
    # SQLAlchemy 2.1, MySQLdb for MySQL), but the extras install psycopg2 and PyMySQL.
    fallback = _FALLBACK_DRIVERS.get(parsed.drivername)
    if fallback is not None:
        default_module, module, drivername = fallback
        if importlib.util.find_spec(default_module) is None and importlib.util.find_spec(module) is not None:
            parsed = parsed.set(drivername=drivername)
    return parsed.render_as_string(hide_password=False)


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _prepare_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """Make one SQLite file safe for several processes: busy timeout, WAL and BEGIN IMMEDIATE."""

    def on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy's "begin" event start transactions instead of the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    def on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    sqlalchemy.event.listen(engine, "connect", on_connect)
    sqlalchemy.event.listen(engine, "begin", on_begin)
    # Connections opened while Optuna created the tables lack the settings above.
    engine.dispose()


def open_storage(url: str, *, heartbeat: bool = True) -> optuna.storages.RDBStorage:
    """Open the study storage at `url`, creating its tables (and an SQLite file's folder) if needed.

    With `heartbeat` (the default) running trials record a heartbeat, and trials whose heartbeat
    stops are failed and re-queued with the same parameters. Raises StorageError for an invalid
    URL, a missing database driver, an unreachable server or an incompatible schema; the message
    never shows the password.
    """
    full_url = _normalise_url(url)
    shown_url = redact_url(url)
    sqlite_file = _sqlite_path(full_url)
    engine_kwargs: dict = {}
    if sqlite_file is not None:
        _make_sqlite_folder(sqlite_file, shown_url)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
    elif make_url(full_url).get_backend_name() == "sqlite":
        raise StorageError(f"storage {shown_url} is an in-memory SQLite database, which is gone when the process "
                           "ends and which worker processes and later commands cannot see; use a file, "
                           "for example sqlite:///results/moa_search.db")
    else:
        # Servers drop idle connections; check each one before use instead of failing a trial.
        engine_kwargs["pool_pre_ping"] = True
        if make_url(full_url).get_backend_name() in ("postgresql", "mysql", "mariadb"):
            # psycopg2, psycopg and PyMySQL all take connect_timeout; without it libpq waits forever.
            engine_kwargs["connect_args"] = {
                "connect_timeout": _env_int(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_SECONDS)}
    heartbeat_kwargs: dict = {}
    try:
        with warnings.catch_warnings():
            # The heartbeat arguments are marked experimental in Optuna 5.1.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat:
                interval, grace = heartbeat_settings()
                heartbeat_kwargs = dict(
                    heartbeat_interval=interval,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
                )
            storage = optuna.storages.RDBStorage(full_url, engine_kwargs=engine_kwargs, **heartbeat_kwargs)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as error:
        backend = make_url(full_url).get_backend_name()
        hint = _DRIVER_HINTS.get(backend, "install the database driver the URL names")
        raise StorageError(f"cannot open storage {shown_url}: the database driver is not installed "
                           f"({_scrub(str(error.__cause__ or error), url)}); {hint}") from None
    except (sqlalchemy.exc.DatabaseError, optuna.exceptions.StorageInternalError) as error:
        # DatabaseError covers OperationalError (cannot connect) and "file is not a database".
        reason = _scrub(str(getattr(error, "orig", None) or error.__cause__ or error).strip().splitlines()[0], url)
        if sqlite_file is not None:
            raise StorageError(f"cannot open the SQLite storage {shown_url}: {reason}. Check that {sqlite_file} "
                               f"is a database file (or absent) and that its folder {sqlite_file.parent} exists "
                               "and is writable") from None
        raise StorageError(f"cannot connect to storage {shown_url}: {reason}. Check that the database server is "
                           "running and reachable and that the user, password and database name are right") from None
    except RuntimeError as error:
        # Optuna raises RuntimeError when the schema was written by another Optuna version.
        raise StorageError(f"cannot use storage {shown_url}: {_scrub(str(error), url)}. "
                           f"Run `optuna storage upgrade --storage URL` to migrate it") from None
    if sqlite_file is not None:
        _prepare_sqlite(storage.engine)
    return storage


def _make_sqlite_folder(sqlite_file: Path, shown_url: str) -> None:
    folder = sqlite_file.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"cannot create the folder {folder} for the SQLite storage {shown_url}: "
                           f"{error.strerror or error}{_path_hint(folder)}. Pass --storage (or set {STORAGE_ENV}) "
                           "with a path in a writable folder") from None


def _path_hint(folder: Path) -> str:
    """Name the part of `folder` that is a file, because mkdir then fails with a vague error."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            return "" if parent.is_dir() else f" ({parent} is a file, not a folder)"
    return ""


def check_results_folder() -> Path:
    """Create the results folder if needed and check that files can be written in it.

    Runs before a study is created or a trial trains, so a bad MOA_SEARCH_RESULTS fails at once and
    not after the first trial has trained. Raises StorageError naming the folder.
    """
    folder = results_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise StorageError(f"cannot write to the results folder {folder}: {error.strerror or error}"
                           f"{_path_hint(folder)}. Set {RESULTS_ENV} to a writable folder") from None
    return folder


def is_sqlite(url: str) -> bool:
    """True when the URL is an SQLite database (file or in-memory)."""
    try:
        return make_url(url).get_backend_name() == "sqlite"
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return False


def with_retries(action: Callable[[], T], what: str, url: str, *, max_seconds: float | None = None,
                 first_delay: float = 1.0) -> T:
    """Run `action`, retrying with exponential backoff while the database is unreachable.

    A worker that loses its connection (server restart, network blip) waits and retries instead of
    losing its trial. After `max_seconds` (default MOA_SEARCH_STORAGE_RETRY_SECONDS, else 120) it
    raises StorageError naming the URL without its password. The delay starts at `first_delay`
    seconds and doubles up to 30 s.
    """
    budget = max_seconds if max_seconds is not None else _env_int(RETRY_ENV, 120)
    deadline = time.monotonic() + budget
    delay = first_delay
    attempt = 1
    while True:
        try:
            return action()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                optuna.exceptions.StorageInternalError) as error:
            reason = _scrub(str(getattr(error, "orig", None) or error.__cause__ or error).strip().splitlines()[0], url)
            if time.monotonic() + delay > deadline:
                raise StorageError(f"lost the connection to storage {redact_url(url)} while trying to {what}, "
                                   f"and it did not come back within {budget:.0f} s: {reason}") from None
            logger.warning("Storage %s failed to %s (attempt %d: %s); retrying in %.0f s",
                           redact_url(url), what, attempt, reason, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
            attempt += 1
