"""Tests for MySQL and MariaDB storage through the same RDB path as PostgreSQL.

They run when MOA_SEARCH_TEST_MYSQL_URL names a server database the tests may fill (for example
mysql+pymysql://moa:PASSWORD@127.0.0.1:3306/moa) and are skipped otherwise, because CI starts only
PostgreSQL. The study names are unique per run, so the database can be reused.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from moa_search.cli import app
from test_postgres import HEARTBEAT_ENV, write_space

URL = os.environ.get("MOA_SEARCH_TEST_MYSQL_URL")
pytestmark = pytest.mark.skipif(not URL, reason="set MOA_SEARCH_TEST_MYSQL_URL to a MySQL or MariaDB database")


def test_run_worker_and_reports_on_mysql(tmp_path, monkeypatch):
    monkeypatch.setenv("MOA_SEARCH_RESULTS", str(tmp_path / "results"))
    for key, value in HEARTBEAT_ENV.items():
        monkeypatch.setenv(key, value)
    space = write_space(tmp_path)
    study = f"mysql-{int(time.time() * 1000)}"
    runner = CliRunner()

    created = runner.invoke(app, ["-q", "run", str(space), "--study", study, "--storage", URL, "--n-trials", "2"])
    assert created.exit_code == 0, created.output
    joined = runner.invoke(app, ["-q", "worker", "--study", study, "--storage", URL, "--n-trials", "3"])
    assert joined.exit_code == 0, joined.output

    board = runner.invoke(app, ["leaderboard", "--study", study, "--storage", URL, "--format", "json"])
    assert board.exit_code == 0, board.output
    rows = json.loads(board.stdout)
    assert sum(1 for row in rows if row["is_baseline"]) == 2
    assert sum(1 for row in rows if not row["is_baseline"] and row["state"] in ("complete", "pruned")) == 3

    exported = runner.invoke(app, ["export", "--study", study, "--storage", URL])
    assert exported.exit_code == 0, exported.output
    listed = runner.invoke(app, ["studies", "--storage", URL])
    assert listed.exit_code == 0, listed.output
    assert study in listed.stdout

    password = make_url(URL).password
    if password:
        for result in (created, joined, board, exported, listed):
            assert password not in result.output
