"""Opening study storage: URL errors without passwords, SQLite settings, several writers, retries."""

from __future__ import annotations

import importlib.util
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc

from moa_search.errors import StorageError
from moa_search.paths import RESULTS_ENV
from moa_search.storage import (
    GRACE_ENV,
    HEARTBEAT_ENV,
    check_results_folder,
    heartbeat_settings,
    open_storage,
    redact_url,
    with_retries,
)


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://bob:s3cret@db.example:5432/studies", "postgresql://bob:***@db.example:5432/studies"),
    ("mysql+pymysql://bob:s3cret@localhost/studies", "mysql+pymysql://bob:***@localhost/studies"),
    ("sqlite:///results/moa_search.db", "sqlite:///results/moa_search.db"),
    ("not a url://bob:s3cret@host", "not a url://bob:***@host"),
])
def test_redact_url_hides_password(url, expected):
    assert redact_url(url) == expected
    assert "s3cret" not in redact_url(url)


def test_invalid_url_rejected():
    with pytest.raises(StorageError, match="invalid storage URL 'results/moa_search.db'.*sqlite:///"):
        open_storage("results/moa_search.db")


def test_missing_driver_named():
    with pytest.raises(StorageError, match="driver is not installed"):
        open_storage("nosuchdatabase://bob:s3cret@localhost/db")


@pytest.mark.skipif(importlib.util.find_spec("MySQLdb") is not None or importlib.util.find_spec("pymysql") is not None,
                    reason="a MySQL driver is installed here")
def test_missing_mysql_driver_points_to_extra():
    with pytest.raises(StorageError) as error:
        open_storage("mysql://bob:s3cret@127.0.0.1:1/db")
    assert "moa-search[mysql]" in str(error.value)
    assert "s3cret" not in str(error.value)


def test_unreachable_server_hides_password():
    # Port 1 on this machine: nothing listens there, so the connection is refused at once.
    with pytest.raises(StorageError) as error:
        open_storage("postgresql://bob:s3cret@127.0.0.1:1/studies")
    message = str(error.value)
    assert "cannot connect to storage postgresql" in message
    assert "bob:***@127.0.0.1:1" in message
    assert "s3cret" not in message


def test_sqlite_file_uses_wal_and_creates_folder(tmp_path):
    path = tmp_path / "new" / "folder" / "studies.db"
    storage = open_storage(f"sqlite:///{path.as_posix()}")
    study = optuna.create_study(storage=storage, study_name="s")
    study.add_trial(optuna.trial.create_trial(value=1.0))
    assert path.is_file()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert storage.get_heartbeat_interval() == 30


def test_heartbeat_settings_from_environment(monkeypatch):
    monkeypatch.setenv(HEARTBEAT_ENV, "2")
    monkeypatch.delenv(GRACE_ENV, raising=False)
    assert heartbeat_settings() == (2, 6)
    monkeypatch.setenv(GRACE_ENV, "5")
    assert heartbeat_settings() == (2, 5)
    monkeypatch.setenv(GRACE_ENV, "2")
    with pytest.raises(StorageError, match="must be longer than the heartbeat interval"):
        heartbeat_settings()
    monkeypatch.setenv(HEARTBEAT_ENV, "soon")
    with pytest.raises(StorageError, match="whole number of seconds.*'soon'"):
        heartbeat_settings()


_WRITER = textwrap.dedent("""
    import sys
    import optuna
    from moa_search.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="s", storage=open_storage(sys.argv[1], heartbeat=False))
    for _ in range(15):
        trial = study.ask()
        trial.set_user_attr("writer", sys.argv[2])
        study.tell(trial, trial.suggest_float("x", 0, 1))
""")


def test_sqlite_several_writers_lose_nothing(tmp_path):
    url = f"sqlite:///{(tmp_path / 'studies.db').as_posix()}"
    optuna.create_study(storage=open_storage(url), study_name="s")
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, url, str(index)], stderr=subprocess.PIPE, text=True)
               for index in range(4)]
    errors = [writer.communicate(timeout=120)[1] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0, 0, 0], errors
    trials = optuna.load_study(study_name="s", storage=open_storage(url, heartbeat=False)).trials
    assert len(trials) == 60
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    assert sorted(trial.number for trial in trials) == list(range(60))


def test_with_retries_recovers():
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return "done"

    assert with_retries(flaky, "read the trials", "sqlite://", first_delay=0.01) == "done"
    assert len(attempts) == 3


def test_with_retries_gives_up_without_password():
    def down() -> None:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("could not connect"))

    with pytest.raises(StorageError) as error:
        with_retries(down, "read the trials", "postgresql://bob:s3cret@db/studies", max_seconds=0.05,
                     first_delay=0.01)
    message = str(error.value)
    assert "lost the connection to storage postgresql://bob:***@db/studies" in message
    assert "read the trials" in message
    assert "s3cret" not in message


def test_sqlite_folder_under_file_rejected(tmp_path):
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError) as error:
        open_storage(f"sqlite:///{(blocker / 'x.db').as_posix()}")
    message = str(error.value)
    assert "\n" not in message
    assert str(blocker) in message
    assert "--storage" in message


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs the Linux /proc file system")
def test_sqlite_folder_in_proc_rejected():
    with pytest.raises(StorageError, match="cannot create the folder /proc/nope"):
        open_storage("sqlite:////proc/nope/x.db")


def test_sqlite_open_failure_hint(tmp_path):
    # A folder where the database file should be: SQLite cannot open it.
    (tmp_path / "x.db").mkdir()
    with pytest.raises(StorageError) as error:
        open_storage(f"sqlite:///{(tmp_path / 'x.db').as_posix()}")
    message = str(error.value)
    assert "x.db" in message
    assert "writable" in message
    assert "password" not in message
    assert "server" not in message


def test_results_folder_under_file_rejected(tmp_path, monkeypatch):
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("not a folder")
    monkeypatch.setenv(RESULTS_ENV, str(blocker / "results"))
    with pytest.raises(StorageError) as error:
        check_results_folder()
    message = str(error.value)
    assert str(blocker / "results") in message
    assert RESULTS_ENV in message
    assert "\n" not in message


def test_results_folder_created(tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "new" / "results"))
    assert check_results_folder() == tmp_path / "new" / "results"
    assert (tmp_path / "new" / "results").is_dir()
    assert list((tmp_path / "new" / "results").iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_rejected(url):
    with pytest.raises(StorageError, match="in-memory SQLite"):
        open_storage(url)


def test_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "notdb"
    path.write_text("x\n")
    with pytest.raises(StorageError) as error:
        open_storage(f"sqlite:///{path}")
    assert "is a database file" in str(error.value)
    assert str(path) in str(error.value)
