"""The trial loop in one process on real tiny studies: budget, resume, baselines, records, faults."""

from __future__ import annotations

import os
import logging
import time
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from moa_search import records
from moa_search.config import run_config_from_dict
from moa_search.space import load_space
from moa_search.storage import GRACE_ENV, HEARTBEAT_ENV, open_storage
from moa_search.study import create_or_resume
from moa_search.worker import (
    PARENT_PID_ENV,
    WorkerSummary,
    fail_stale_trials,
    parent_ended,
    parent_pid,
    run_trials,
    stop_message,
)
from tiny_search import read_trials, space_text, write_corpus, write_space


def _open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **space_options):
    monkeypatch.setenv("MOA_SEARCH_RESULTS", str(tmp_path / "results"))
    path = write_space(tmp_path, **space_options)
    space = load_space(path)
    url = f"sqlite:///{(tmp_path / 'studies.db').as_posix()}"
    search = create_or_resume(open_storage(url), space, space.settings, study_name="tiny",
                              source=path.read_text(encoding="utf-8"))
    return search, url


def _search_trials(trials):
    return [trial for trial in trials if not records.is_baseline(trial)]


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """One study run to its budget of two search trials, shared by the read-only tests below."""
    tmp_path = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as monkeypatch:
        search, url = _open(tmp_path, monkeypatch, study="{n_trials: 2, pruner: hyperband, seed: 0}")
        summary = run_trials(search, url)
    return summary, read_trials(url, "tiny"), tmp_path / "results"


def test_run_trials_budget_and_baselines(finished_study):
    summary, trials, _ = finished_study
    baselines = [trial for trial in trials if records.is_baseline(trial)]
    assert sorted(trial.user_attrs[records.BASELINE] for trial in baselines) == ["gelu", "swiglu"]
    assert all(trial.state == TrialState.COMPLETE for trial in baselines)
    assert [trial.number for trial in baselines] == [0, 1]
    assert len([t for t in _search_trials(trials) if t.state.is_finished()]) == 2
    assert summary.baselines == 2
    assert summary.complete + summary.pruned == 2
    assert "2 finished search trials" in summary.stop_reason


def test_resume_adds_trials_not_baselines(tmp_path, monkeypatch):
    search, url = _open(tmp_path, monkeypatch, study="{n_trials: 1, pruner: none, seed: 0}")
    run_trials(search, url)
    assert len(read_trials(url, "tiny")) == 3

    path = write_space(tmp_path, study="{n_trials: 1, pruner: none, seed: 0}")
    space = load_space(path)
    resumed = create_or_resume(open_storage(url), space, space.settings.with_overrides(n_trials=3),
                               study_name="tiny", source=path.read_text(encoding="utf-8"))
    summary = run_trials(resumed, url)
    trials = read_trials(url, "tiny")
    assert summary.baselines == 0
    assert summary.complete == 2
    assert len([t for t in trials if records.is_baseline(t)]) == 2
    assert len([t for t in _search_trials(trials) if t.state == TrialState.COMPLETE]) == 3
    # The seed is offset on resume, so the resumed run does not replay the first proposal.
    params = [t.params["train.lr"] for t in _search_trials(trials)]
    assert len(set(params)) == 3


def test_trial_record_schema(finished_study):
    _, trials, _ = finished_study
    trial = next(t for t in _search_trials(trials) if t.state == TrialState.COMPLETE)
    record = records.trial_record(trial)
    assert record.state == TrialState.COMPLETE
    assert set(record.metrics) == {"val_loss", "best_val_loss", "train_loss", "tokens", "tokens_per_second",
                                   "wall_seconds", "steps", "params", "device"}
    assert record.metrics["steps"] == 4
    assert record.metrics["params"]["total"] > 0
    assert record.value == pytest.approx(record.metrics["val_loss"])
    assert [point["step"] for point in record.curve] == [2, 4]
    assert set(record.curve[0]) == set(records.CURVE_KEYS)
    assert sorted(trial.intermediate_values) == [2, 4]
    assert record.progress["step"] == 4
    assert record.versions["torch"] == torch.__version__
    assert record.seed == record.config["train"]["seed"]
    assert run_config_from_dict(record.config).ffn.bank == tuple(sorted(trial.params["ffn.bank"].split("+")))
    assert set(record.gate_usage) == {"0"}
    assert record.worker is not None
    assert record.fail_reason is None
    assert record.artifact_dir == f"tiny/trial_{trial.number}"


def test_model_artifact_reloads(finished_study):
    _, trials, results = finished_study
    record = records.trial_record(next(t for t in _search_trials(trials) if t.state == TrialState.COMPLETE))
    saved = torch.load(record.model_path(results), weights_only=True)
    from moa_search.model import GPT

    model = GPT.from_run_config(run_config_from_dict(saved["config"]))
    model.load_state_dict(saved["state_dict"])
    assert saved["config"] == record.config


def test_non_finite_loss_fails_and_continues(tmp_path, monkeypatch):
    # A learning rate of 1e30 overflows the weights at the first step. The grid also runs 1e-3, and
    # the failed trial does not count, so the budget of 2 is never reached: the grid ends the run.
    search, url = _open(tmp_path, monkeypatch, study="{n_trials: 2, pruner: none, sampler: grid, seed: 0}",
                        ffn="{kind: fixed, bank: [gelu]}", lr="{choices: [1.0e30, 1.0e-3]}")
    summary = run_trials(search, url)
    trials = _search_trials(read_trials(url, "tiny"))
    failed = [trial for trial in trials if trial.state == TrialState.FAIL]
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    assert len(failed) == 1
    assert failed[0].params["train.lr"] == 1.0e30
    assert failed[0].user_attrs[records.FAIL_REASON].startswith("TrainingError:")
    assert "finite" in failed[0].user_attrs[records.FAIL_REASON]
    assert len(complete) == 1
    assert complete[0].params["train.lr"] == 1.0e-3
    assert summary.failed == 1
    assert summary.stop_reason == "every grid point has run"


@pytest.mark.skipif(Path("/proc/sys/vm/overcommit_memory").exists()
                    and Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1",
                    reason="with overcommit always on, a huge allocation succeeds and the OOM killer strikes later")
def test_out_of_memory_fails_and_continues(tmp_path, monkeypatch):
    # d_model 131072 needs a 64 GiB attention matrix, which the CPU allocator refuses at once.
    monkeypatch.setenv("MOA_SEARCH_RESULTS", str(tmp_path / "results"))
    text = space_text(write_corpus(tmp_path), study="{n_trials: 2, pruner: none, sampler: grid, seed: 0}",
                      ffn="{kind: fixed, bank: [gelu]}", lr="3.0e-3")
    path = tmp_path / "huge.yaml"
    path.write_text(text.replace("d_model: 8", "d_model: {choices: [8, 131072]}"), encoding="utf-8")
    space = load_space(path)
    url = f"sqlite:///{(tmp_path / 'studies.db').as_posix()}"
    search = create_or_resume(open_storage(url), space, space.settings, study_name="huge",
                              source=path.read_text(encoding="utf-8"))
    summary = run_trials(search, url)
    trials = _search_trials(read_trials(url, "huge"))
    failed = [trial for trial in trials if trial.state == TrialState.FAIL]
    assert len(failed) == 1
    assert failed[0].params["model.d_model"] == 131072
    assert failed[0].user_attrs[records.FAIL_REASON].startswith("out of memory")
    assert [trial.params["model.d_model"] for trial in trials if trial.state == TrialState.COMPLETE] == [8]
    assert summary.failed == 1


def test_nsga2_runs_four_trials(tmp_path, monkeypatch):
    search, url = _open(tmp_path, monkeypatch, study="{n_trials: 4, sampler: nsga2, seed: 0}")
    summary = run_trials(search, url)
    trials = _search_trials(read_trials(url, "tiny"))
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 4
    assert summary.complete == 4
    assert summary.failed == 0
    assert search.study.user_attrs[records.SETTINGS]["pruner"] == "none"


def test_orphaned_worker_stops_before_trial(tmp_path, monkeypatch):
    search, url = _open(tmp_path, monkeypatch)
    # This process's own pid is never its parent pid, so parent_ended() returns True.
    monkeypatch.setenv(PARENT_PID_ENV, str(os.getpid()))
    assert parent_ended()
    summary = run_trials(search, url)
    assert summary.stop_reason == f"the run process (pid {os.getpid()}) that started this worker ended"
    assert summary.trial_numbers == []
    assert all(trial.state == TrialState.WAITING for trial in read_trials(url, "tiny"))


def test_parent_check_without_parent(monkeypatch):
    monkeypatch.delenv(PARENT_PID_ENV, raising=False)
    assert parent_pid() is None
    assert not parent_ended()
    monkeypatch.setenv(PARENT_PID_ENV, str(os.getppid()))
    assert parent_pid() == os.getppid()
    assert not parent_ended()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_stale_trial_gets_reason_and_retry(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(HEARTBEAT_ENV, "1")
    monkeypatch.setenv(GRACE_ENV, "2")
    search, _ = _open(tmp_path, monkeypatch)
    study = search.study
    for _ in range(2):  # the baselines
        study.tell(study.ask(), 1.0)
    trial = study.ask()
    search.space.sample(trial)
    trial.set_user_attr(records.PROGRESS, {"step": 2})
    search.storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)  # past the grace period; SQLite's clock counts whole seconds

    with caplog.at_level(logging.WARNING, logger="moa_search"):
        retried = fail_stale_trials(study, search.storage)
    assert len(retried) == 1
    stale_number, retry_number = retried[0]
    assert stale_number == trial.number
    trials = {t.number: t for t in study.get_trials()}
    stale, retry = trials[stale_number], trials[retry_number]
    assert stale.state == TrialState.FAIL
    assert stale.user_attrs[records.FAIL_REASON].startswith("stale: no heartbeat for over 2 s (worker died or was killed)")
    assert retry.state == TrialState.WAITING
    assert retry.params == stale.params
    assert retry.system_attrs[records.RETRIED_FROM] == stale_number
    assert records.FAIL_REASON not in retry.user_attrs
    assert records.PROGRESS not in retry.user_attrs
    assert f"Trial {stale_number} failed as stale" in caplog.text
    assert f"retried as trial {retry_number}" in caplog.text
    assert fail_stale_trials(study, search.storage) == []


def test_stop_message_separates_counts():
    idle = WorkerSummary(stop_reason="budget met: the study has 8 finished search trials")
    assert stop_message(idle) == "Budget met: the study has 8 finished search trials; this worker trained none"
    busy = WorkerSummary(complete=2, pruned=1, failed=1, baselines=2,
                         stop_reason="budget met: the study has 8 finished search trials")
    assert stop_message(busy) == ("Budget met: the study has 8 finished search trials; this worker trained 6: "
                                  "2 complete, 1 pruned, 1 failed, 2 baselines")
