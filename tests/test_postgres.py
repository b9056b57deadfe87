"""Tests for studies spread over processes and machines: PostgreSQL, MySQL and SQLite storages,
worker processes, stale-trial retries, lost connections and device assignment.

Tests marked `postgres` run against a real server (see tests/pg_server.py). Each test session
creates its own database there and drops it at the end. The storage URLs carry a password, and
every output is checked for it. The password is "sekret" unless the server's URL has one, which
works because the test server trusts loopback users.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import optuna
import pytest
import torch
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from moa_search import records
from moa_search.cli import app
from moa_search.commands.run import SQLITE_WORKER_LIMIT, check_device, sqlite_worker_warning, worker_devices
from moa_search.errors import ConfigError
from moa_search.space import load_space
from moa_search.storage import open_storage
from moa_search.study import create_or_resume

from pg_server import URL_ENV, OwnCluster, admin_url, create_database, drop_database, free_port, libpq_url

WORDS = "the cat sat on a mat and a dog ran to the big red box".split()
# Short heartbeats, so a killed worker's trial turns stale within seconds.
HEARTBEAT_ENV = {"MOA_SEARCH_HEARTBEAT_SECONDS": "1", "MOA_SEARCH_GRACE_SECONDS": "3"}


# ---------------------------------------------------------------------------------------------
# Helpers


def write_space(folder: Path, max_steps: int = 20) -> Path:
    """Write a corpus and a space whose trials train a 32-wide one-layer model for `max_steps` steps."""
    rng = random.Random(0)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(300)),
                      encoding="utf-8")
    path = folder / "space.yaml"
    path.write_text("\n".join([
        "study: {n_trials: 2, pruner: none, sampler: random}",
        "model: {vocab_size: 256, context_length: 16, d_model: 32, n_layers: 1, n_heads: 2}",
        "ffn: {kind: moa, bank: {choices: [[relu, gelu], [silu], [relu, silu]]}}",
        f"data: {{corpus: {corpus.as_posix()}}}",
        f"train: {{batch_size: 4, max_steps: {max_steps}, eval_interval: 5, eval_batches: 1, warmup_steps: 2, "
        "device: cpu, lr: {low: 1.0e-3, high: 1.0e-2, log: true}}",
        "",
    ]), encoding="utf-8")
    return path


def create_study(url: str, folder: Path, name: str, n_trials: int, max_steps: int = 20) -> None:
    """Create the study `name` with its two baselines queued, as `run --workers 0` does."""
    space_path = write_space(folder, max_steps)
    space = load_space(space_path)
    create_or_resume(open_storage(url, heartbeat=False), space, space.settings.with_overrides(n_trials=n_trials),
                     study_name=name, source=space_path.read_text(encoding="utf-8"))


def read_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
    return study.get_trials(deepcopy=False)


def baselines(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [trial for trial in trials if records.is_baseline(trial)]


def finished_search_trials(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [trial for trial in trials
            if not records.is_baseline(trial) and trial.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def worker_env(url: str, results: Path, **extra: str) -> dict[str, str]:
    """Return the environment of a worker subprocess; the URL goes in the environment, as `run --workers` does."""
    return {**os.environ, "MOA_SEARCH_STORAGE": url, "MOA_SEARCH_RESULTS": str(results), "COLUMNS": "1000",
            "NO_COLOR": "1", **extra}


def start_worker(name: str, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    """Start `moa-search worker --study NAME` as a subprocess logging to `log`."""
    with log.open("w") as stream:
        return subprocess.Popen([sys.executable, "-m", "moa_search", "worker", "--study", name, *args], env=env,
                                stdout=stream, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], object], seconds: float, what: str) -> object:
    """Poll `condition` until it returns something true; fail the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}")


def running_search_trial(url: str, name: str) -> optuna.trial.FrozenTrial | None:
    """Return a search trial that is training (it has reported progress), or None."""
    for trial in read_trials(url, name):
        if (trial.state == TrialState.RUNNING and not records.is_baseline(trial) and trial.params
                and trial.user_attrs.get(records.PROGRESS)):
            return trial
    return None


def stop_all(processes: list[subprocess.Popen]) -> None:
    """Kill the workers this test started that are still running."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def flat(text: str) -> str:
    """Collapse whitespace, so log lines wrapped by the console still match."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def pg(tmp_path_factory) -> dict[str, str]:
    """A fresh database on the test server for this module, dropped at the end.

    Returns the storage URL (with a password) and the password that must never be shown.
    """
    admin = admin_url()
    name = create_database(admin)
    secret = make_url(admin).password or "sekret"
    try:
        yield {"url": libpq_url(admin, database=name, password=secret), "secret": secret}
    finally:
        drop_database(admin, name)


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "results"
    monkeypatch.setenv("MOA_SEARCH_RESULTS", str(folder))
    return folder


def test_missing_server_fails_under_ci(monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=URL_ENV):
        admin_url()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=URL_ENV):
        admin_url()


def test_unreachable_test_server_skips_with_reason(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv(URL_ENV, f"postgresql://postgres:sekret@127.0.0.1:{free_port()}/postgres")
    with pytest.raises(pytest.skip.Exception, match="cannot connect to postgresql://postgres:\\*\\*\\*@") as skipped:
        admin_url()
    assert "sekret" not in str(skipped.value)


# ---------------------------------------------------------------------------------------------
# Every command on a PostgreSQL study


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.postgres
def test_commands_on_postgres(pg, tmp_path, results):
    url, secret = pg["url"], pg["secret"]
    space = write_space(tmp_path)

    created = invoke("run", str(space), "--storage", url, "--study", "cli", "--n-trials", "1", "--workers", "0")
    assert created.exit_code == 0, created.output
    assert [trial.state for trial in read_trials(url, "cli")] == [TrialState.WAITING] * 2

    ran = invoke("run", str(space), "--storage", url, "--study", "cli", "--n-trials", "1")
    assert ran.exit_code == 0, ran.output
    joined = invoke("worker", "--study", "cli", "--storage", url, "--n-trials", "2")
    assert joined.exit_code == 0, joined.output
    trials = read_trials(url, "cli")
    assert len(baselines(trials)) == 2
    assert len(finished_search_trials(trials)) == 2

    leaderboard = invoke("leaderboard", "--study", "cli", "--storage", url, "--format", "json")
    assert leaderboard.exit_code == 0, leaderboard.output
    rows = json.loads(leaderboard.stdout)
    assert len(rows) == 4
    best_search = min(finished_search_trials(trials), key=lambda trial: trial.value).number

    inspected = invoke("inspect", str(best_search), "--study", "cli", "--storage", url, "--format", "json")
    assert inspected.exit_code == 0, inspected.output
    assert str(best_search) in inspected.stdout

    exported = invoke("export", str(best_search), "--study", "cli", "--storage", url, "--format", "yaml")
    assert exported.exit_code == 0, exported.output
    assert "ffn:" in exported.stdout

    listed = invoke("-v", "studies", "--storage", url, "--format", "csv")
    assert listed.exit_code == 0, listed.output
    assert "cli," in listed.stdout

    for result in (created, ran, joined, leaderboard, inspected, exported, listed):
        assert secret not in result.output


# ---------------------------------------------------------------------------------------------
# Errors for unreachable servers and missing drivers


def test_closed_port_error_hides_password(tmp_path, results):
    port = free_port()
    url = f"postgresql://postgres:sekret@127.0.0.1:{port}/studies"
    for args in (["studies"], ["leaderboard"], ["worker", "--study", "x"]):
        result = invoke(*args, "--storage", url)
        assert result.exit_code == 1, result.output
        assert f"cannot connect to storage postgresql://postgres:***@127.0.0.1:{port}/studies" in flat(result.stderr)
        assert "sekret" not in result.output
        assert "Traceback" not in result.output


@pytest.mark.timeout(120)
def test_silent_server_times_out(monkeypatch, results):
    # A socket that accepts TCP connections but never sends a byte. Without a connect timeout the
    # driver would wait forever, and pytest-timeout would end the test.
    monkeypatch.setenv("MOA_SEARCH_CONNECT_TIMEOUT_SECONDS", "2")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        result = invoke("leaderboard", "--storage", f"postgresql://postgres:sekret@127.0.0.1:{port}/studies")
    assert result.exit_code == 1, result.output
    assert f"postgresql://postgres:***@127.0.0.1:{port}/studies" in flat(result.stderr)
    assert "timeout" in result.stderr
    assert "sekret" not in result.output


@pytest.mark.parametrize("scheme", ["mysql", "mysql+pymysql"])
def test_missing_mysql_driver_names_extra(scheme, monkeypatch, results):
    # A None entry in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "pymysql", None)
    monkeypatch.setitem(sys.modules, "MySQLdb", None)
    result = invoke("studies", "--storage", f"{scheme}://root:sekret@127.0.0.1:3306/studies")
    assert result.exit_code == 1, result.output
    message = flat(result.stderr)
    assert f"cannot open storage {scheme}://root:***@127.0.0.1:3306/studies" in message
    assert "pip install 'moa-search[mysql]'" in message
    assert "sekret" not in result.output


# ---------------------------------------------------------------------------------------------
# Devices and SQLite limits


def test_worker_devices_one_per_gpu():
    assert worker_devices(4, None, 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert worker_devices(3, None, 2) == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices(2, None, 1) == [None, None]
    assert worker_devices(2, None, 0) == [None, None]
    assert worker_devices(3, "cuda:1", 4) == ["cuda:1"] * 3
    assert worker_devices(2, "cpu", 4) == ["cpu", "cpu"]


def test_check_device_rules():
    check_device(None, 0)
    check_device("cpu", 0)
    check_device("cuda", 1)
    check_device("cuda:1", 2)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        check_device("cuda:0", 0)
    with pytest.raises(ConfigError, match=r"has 2 GPU\(s\), cuda:0 to cuda:1"):
        check_device("cuda:2", 2)
    with pytest.raises(ConfigError, match="not a device name"):
        check_device("cuda:x", 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_device_without_gpu_fails_fast(tmp_path, results):
    url = f"sqlite:///{(tmp_path / 'studies.db').as_posix()}"
    worker = invoke("worker", "--study", "x", "--storage", url, "--device", "cuda:1")
    assert worker.exit_code == 1, worker.output
    assert "--device 'cuda:1' requested but CUDA is not available" in flat(worker.stderr)
    ran = invoke("run", str(write_space(tmp_path)), "--storage", url, "--workers", "2", "--device", "cuda")
    assert ran.exit_code == 1, ran.output
    assert "--device 'cuda' requested but CUDA is not available" in flat(ran.stderr)
    assert not (tmp_path / "studies.db").exists()


def test_sqlite_warning_points_to_postgres(tmp_path):
    sqlite_url = f"sqlite:///{(tmp_path / 'studies.db').as_posix()}"
    assert sqlite_worker_warning(sqlite_url, SQLITE_WORKER_LIMIT) is None
    warning = sqlite_worker_warning(sqlite_url, SQLITE_WORKER_LIMIT + 1)
    assert warning is not None
    assert "PostgreSQL" in warning
    assert f"{SQLITE_WORKER_LIMIT + 1} workers" in warning
    assert sqlite_worker_warning("postgresql://u:p@127.0.0.1:5432/db", 16) is None


@pytest.mark.slow
def test_three_sqlite_workers_budget_exact(tmp_path, results):
    # No --storage and no MOA_SEARCH_STORAGE: the workers share the default SQLite file.
    env = worker_env("", results)
    del env["MOA_SEARCH_STORAGE"]
    space = write_space(tmp_path)
    completed = subprocess.run(
        [sys.executable, "-m", "moa_search", "run", str(space), "--study", "local", "--n-trials", "3", "--workers", "3"],
        env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "locked" not in completed.stderr
    url = f"sqlite:///{(results / 'moa_search.db').as_posix()}"
    trials = read_trials(url, "local")
    assert len(finished_search_trials(trials)) == 3
    assert sorted(trial.user_attrs[records.BASELINE] for trial in baselines(trials)) == ["gelu", "swiglu"]
    assert all(trial.state == TrialState.COMPLETE for trial in baselines(trials))
    for trial in trials:
        assert "locked" not in (trial.user_attrs.get(records.FAIL_REASON) or "")
    assert not [trial for trial in trials if trial.state in (TrialState.RUNNING, TrialState.WAITING)]


# ---------------------------------------------------------------------------------------------
# Worker processes on one PostgreSQL study


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_share_budget(pg, tmp_path, results):
    url = pg["url"]
    create_study(url, tmp_path, "pair", n_trials=4)
    env = worker_env(url, results)
    workers = [start_worker("pair", env, tmp_path / f"worker{index}.log") for index in range(2)]
    try:
        codes = [worker.wait(timeout=300) for worker in workers]
    finally:
        stop_all(workers)
    logs = [(tmp_path / f"worker{index}.log").read_text() for index in range(2)]
    assert codes == [0, 0], logs

    trials = read_trials(url, "pair")
    assert len(finished_search_trials(trials)) == 4
    assert sorted(trial.user_attrs[records.BASELINE] for trial in baselines(trials)) == ["gelu", "swiglu"]
    assert all(trial.state == TrialState.COMPLETE for trial in baselines(trials))
    assert not [trial for trial in trials if trial.state in (TrialState.RUNNING, TrialState.WAITING)]
    # Both workers trained trials: the budget was shared, not run twice.
    ran_by = {trial.user_attrs[records.WORKER].rsplit(":", 1)[1] for trial in trials if trial.state.is_finished()
              and records.WORKER in trial.user_attrs and not trial.user_attrs.get(records.FAIL_REASON, "").startswith("not run")}
    assert ran_by == {str(worker.pid) for worker in workers}
    for log in logs:
        assert pg["secret"] not in log


@pytest.mark.postgres
@pytest.mark.slow
def test_killed_worker_trial_retried(pg, tmp_path, results):
    url = pg["url"]
    create_study(url, tmp_path, "killed", n_trials=2, max_steps=400)
    env = worker_env(url, results, **HEARTBEAT_ENV)
    first = start_worker("killed", env, tmp_path / "first.log")
    started: list[subprocess.Popen] = [first]
    try:
        victim = wait_for(lambda: running_search_trial(url, "killed"), 240, "a search trial in training")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        before = {trial.number: trial.state for trial in read_trials(url, "killed")}

        second = start_worker("killed", env, tmp_path / "second.log")
        started.append(second)
        assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()
    finally:
        stop_all(started)

    trials = read_trials(url, "killed")
    by_number = {trial.number: trial for trial in trials}
    assert by_number[victim.number].state == TrialState.FAIL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retries = [trial for trial in trials
                   if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial) == victim.number]
    assert len(retries) == 1
    assert retries[0].params == victim.params
    assert retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs[records.WORKER].endswith(f":{second.pid}")
    # Trials the killed worker finished stay as they were; the baselines ran once.
    for number, state in before.items():
        if state.is_finished():
            assert by_number[number].state == state
    assert sorted(trial.user_attrs[records.BASELINE] for trial in baselines(trials)) == ["gelu", "swiglu"]
    assert all(trial.state == TrialState.COMPLETE for trial in baselines(trials))
    assert len(finished_search_trials(trials)) == 2


@pytest.mark.postgres
@pytest.mark.slow
def test_worker_rides_out_and_reports_lost_database(tmp_path, results):
    cluster = OwnCluster()
    started: list[subprocess.Popen] = []
    try:
        cluster.start()
        url = cluster.url
        # Trials long enough that the poll below finds one in training on a fast, idle machine.
        create_study(url, tmp_path, "outage", n_trials=2, max_steps=400)
        env = worker_env(url, results, MOA_SEARCH_STORAGE_RETRY_SECONDS="8", **HEARTBEAT_ENV)

        # A short outage: the worker logs its retries, then finishes the budget.
        log = tmp_path / "recovers.log"
        recovers = start_worker("outage", env, log)
        started.append(recovers)
        wait_for(lambda: running_search_trial(url, "outage"), 240, "a search trial in training")
        cluster.kill()
        wait_for(lambda: "retrying in" in log.read_text(), 60, "the worker's retry message")
        cluster.start()
        assert recovers.wait(timeout=300) == 0, log.read_text()
        assert len(finished_search_trials(read_trials(url, "outage"))) == 2

        # The database stays away: the worker gives up with the URL, password hidden, and exit code 1.
        log = tmp_path / "gives_up.log"
        gives_up = start_worker("outage", env, log, "--n-trials", "4")
        started.append(gives_up)
        victim = wait_for(lambda: running_search_trial(url, "outage"), 240, "a search trial in training")
        cluster.kill()
        assert gives_up.wait(timeout=120) == 1, log.read_text()
        # The worker left its trial RUNNING rather than failed, so another worker retries it.
        cluster.start()
        left = {trial.number: trial for trial in read_trials(url, "outage")}[victim.number]
        assert left.state == TrialState.RUNNING
        assert records.FAIL_REASON not in left.user_attrs
    finally:
        stop_all(started)
        cluster.close()
    text = flat(log.read_text())
    assert "retrying in" in text
    assert f"lost the connection to storage postgresql://postgres:***@127.0.0.1:{cluster.port}/postgres" in text
    assert "sekret" not in text
    assert "Traceback" not in text
