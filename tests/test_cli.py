"""Tests for the CLI shell: version, help and the one-line error contract."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from moa_search import __version__
from moa_search.cli import app


def test_version_flag():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"moa-search {__version__}"


def test_entry_point_runs_as_module():
    completed = subprocess.run([sys.executable, "-m", "moa_search", "--version"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert __version__ in completed.stdout
