"""`moa-search run` and `moa-search worker` through the real command line, including real worker
processes: two workers on one budget, and a worker killed with SIGKILL in the middle of a trial."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from moa_search import records
from moa_search.cli import app
from moa_search.paths import RESULTS_ENV, STORAGE_ENV
from moa_search.storage import GRACE_ENV, HEARTBEAT_ENV
from tiny_search import read_trials, write_space


def _env(tmp_path: Path, url: str) -> dict[str, str]:
    return {**os.environ, RESULTS_ENV: str(tmp_path / "results"), STORAGE_ENV: url,
            HEARTBEAT_ENV: "1", GRACE_ENV: "3", "NO_COLOR": "1"}


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{(tmp_path / 'studies.db').as_posix()}"


def _finished_search(trials) -> list:
    return [t for t in trials if not records.is_baseline(t) and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_run_resumes_then_rejects_edit(tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "results"))
    url = _url(tmp_path)
    space = write_space(tmp_path, study="{n_trials: 1, pruner: none, seed: 0}")
    runner = CliRunner()

    first = runner.invoke(app, ["-q", "run", str(space), "--storage", url])
    assert first.exit_code == 0, first.output
    assert len(_finished_search(read_trials(url, "tiny"))) == 1

    second = runner.invoke(app, ["-q", "run", str(space), "--storage", url, "--n-trials", "2"])
    assert second.exit_code == 0, second.output
    trials = read_trials(url, "tiny")
    assert len(_finished_search(trials)) == 2
    assert len([t for t in trials if records.is_baseline(t)]) == 2

    write_space(tmp_path, study="{n_trials: 1, pruner: none, seed: 0}", max_steps=8)
    edited = runner.invoke(app, ["-q", "run", str(space), "--storage", url])
    assert edited.exit_code == 1
    assert "train.max_steps: fixed 4 -> fixed 8" in edited.output
    assert "--fork" in edited.output
    assert len(read_trials(url, "tiny")) == len(trials)


def test_worker_unknown_study_exits_1(tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "results"))
    url = _url(tmp_path)
    space = write_space(tmp_path, study="{n_trials: 1, pruner: none}")
    from moa_search.space import load_space
    from moa_search.storage import open_storage
    from moa_search.study import create_or_resume

    loaded = load_space(space)
    create_or_resume(open_storage(url), loaded, loaded.settings, study_name="tiny", source=space.read_text())
    result = CliRunner().invoke(app, ["worker", "--study", "tinny", "--storage", url])
    assert result.exit_code == 1
    assert "'tinny' not found" in result.output


# Over 30 s on a loaded 2-core machine: three processes each import torch before training.
@pytest.mark.slow
def test_two_workers_finish_budget_exactly(tmp_path):
    url = _url(tmp_path)
    space = write_space(tmp_path, study="{n_trials: 3, pruner: none, seed: 0}")
    completed = subprocess.run([sys.executable, "-m", "moa_search", "run", str(space), "--workers", "2"],
                               env=_env(tmp_path, url), capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    trials = read_trials(url, "tiny")
    assert len(_finished_search(trials)) == 3
    baselines = [t for t in trials if records.is_baseline(t)]
    assert sorted(t.user_attrs[records.BASELINE] for t in baselines) == ["gelu", "swiglu"]
    assert all(t.state == TrialState.COMPLETE for t in baselines)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


# Steps of the trial the test kills. At 40 steps the tiny trial could finish between two polls.
LONG_STEPS = 200


def _wait_for_long_trial(url: str, process: subprocess.Popen, timeout: float = 300):
    """Return the long search trial once it is running and has reported an evaluation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before the test could kill it"
        try:
            trials = read_trials(url, "tiny")
        except KeyError:  # the study does not exist yet
            trials = []
        for trial in trials:
            if (trial.state == TrialState.RUNNING and trial.params.get("train.max_steps") == LONG_STEPS
                    and trial.user_attrs.get(records.PROGRESS)):
                return trial
        time.sleep(0.2)
    raise AssertionError(f"the {LONG_STEPS}-step trial did not start within the timeout")


@pytest.mark.slow
def test_killed_worker_trial_retried(tmp_path):
    url = _url(tmp_path)
    # The grid contains a 4-step and a long trial; the baselines take the first choice, 4 steps.
    # The run is killed in the middle of the long trial.
    space = write_space(tmp_path, study="{n_trials: 2, pruner: none, sampler: grid, seed: 0}",
                        max_steps=f"{{choices: [4, {LONG_STEPS}]}}", eval_interval=10,
                        ffn="{kind: fixed, bank: [gelu]}", lr="3.0e-3")
    command = [sys.executable, "-m", "moa_search", "-q", "run", str(space)]
    env = _env(tmp_path, url)
    first = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        killed = _wait_for_long_trial(url, first)
        before = {t.number: t.state for t in read_trials(url, "tiny") if t.state.is_finished()}
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(timeout=60)
    # Let the heartbeat go stale (grace 3 s), so the next run fails and re-queues the trial at once.
    time.sleep(4)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]

    trials = {t.number: t for t in read_trials(url, "tiny")}
    assert trials[killed.number].state == TrialState.FAIL
    assert trials[killed.number].user_attrs[records.FAIL_REASON].startswith("stale: no heartbeat for over 3 s")
    retries = [t for t in trials.values() if t.system_attrs.get(records.RETRIED_FROM) == killed.number]
    assert len(retries) == 1
    assert retries[0].params == killed.params
    assert retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs[records.METRICS]["steps"] == LONG_STEPS
    for number, state in before.items():
        assert trials[number].state == state
    assert len(_finished_search(trials.values())) == 2
    assert not [t for t in trials.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def _alive(pid: int) -> bool:
    """Return True while the process runs; a zombie (ended, not yet reaped) counts as ended."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def test_killed_run_ends_its_workers(tmp_path):
    url = _url(tmp_path)
    space = write_space(tmp_path, study="{n_trials: 4, pruner: none, seed: 0}", max_steps=400)
    parent = subprocess.Popen([sys.executable, "-m", "moa_search", "run", str(space), "--workers", "2"],
                              env=_env(tmp_path, url), stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        for line in parent.stderr:
            match = re.search(r"Started worker \d+ of 2 \(pid (\d+)", line)
            if match:
                pids.append(int(match.group(1)))
            if len(pids) == 2:
                break
        assert len(pids) == 2, "the run did not report its two worker pids"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        assert [pid for pid in pids if _alive(pid)] == []
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=30)
        parent.stderr.close()


def test_run_unwritable_results_rejected(tmp_path, monkeypatch):
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("not a folder")
    monkeypatch.setenv(RESULTS_ENV, str(blocker / "results"))
    space = write_space(tmp_path, study="{n_trials: 1, pruner: none}")
    result = CliRunner().invoke(app, ["-q", "run", str(space), "--storage", _url(tmp_path)])
    assert result.exit_code == 1
    assert str(blocker / "results") in result.output
    assert RESULTS_ENV in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "studies.db").exists()


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cudafoo"])
def test_run_invalid_device_rejected(tmp_path, monkeypatch, device):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "results"))
    space = write_space(tmp_path, study="{n_trials: 1, pruner: none}")
    result = CliRunner().invoke(app, ["-q", "run", str(space), "--storage", _url(tmp_path), "--device", device])
    assert result.exit_code == 1
    assert f"--device {device!r}" in result.output
    assert "auto, cpu, cuda, cuda:N or mps" in result.output
    assert not (tmp_path / "studies.db").exists()


def test_worker_invalid_device_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "results"))
    result = CliRunner().invoke(app, ["worker", "--study", "tiny", "--storage", _url(tmp_path), "--device", "tpu"])
    assert result.exit_code == 1
    assert "--device 'tpu'" in result.output
    assert not (tmp_path / "studies.db").exists()


def test_run_repeated_failures_exit_1(tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "results"))
    monkeypatch.setattr("moa_search.worker.MAX_FAILURES_IN_ROW", 2)
    # A learning rate of 1e30 overflows the weights at the first step, so every trial fails.
    space = write_space(tmp_path, study="{n_trials: 5, pruner: none, seed: 0}", lr="1.0e30")
    result = CliRunner().invoke(app, ["-q", "run", str(space), "--storage", _url(tmp_path)])
    assert result.exit_code == 1
    assert "2 trials failed in a row" in result.output
    trials = read_trials(_url(tmp_path), "tiny")
    assert len([t for t in trials if not records.is_baseline(t) and t.state == TrialState.FAIL]) == 2
