"""The live study display: pure views, log lines, and the polling thread on a real SQLite storage."""

from __future__ import annotations

import logging

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

from conftest import frozen_trial
from moa_search import display
from moa_search.display import StudyDisplay, _Seen, display_mode, live_view, log_lines, progress_text


def _render(renderable) -> str:
    console = Console(width=250, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_live_view_shows_budget_running_and_top(sample_trials):
    text = _render(live_view(sample_trials, "tiny", n_trials=10, elapsed_seconds=75, top=2))
    assert "4/10 search trials finished · 1 running · 5 complete · 1 pruned · 1 failed · 1m15s elapsed" in text
    assert "trial 7 moa/mlp relu+gelu+silu" in text
    assert "step 10/20" in text
    assert "ETA 12s" in text
    ranked_lines = [line for line in text.splitlines() if line.startswith("│")]
    assert len(ranked_lines) == 2  # top=2
    assert "-0.1000 (-4.17%)" in ranked_lines[0]


def test_progress_text_formats_fields():
    progress = {"step": 50, "max_steps": 200, "tokens": 6400, "train_loss": 2.3456, "val_loss": 2.4,
                "tokens_per_second": 12_345.0, "eta_seconds": 125.0}
    assert progress_text(progress) == "step 50/200 · 6.4k tok · train 2.346 · val 2.400 · 12.3k tok/s · ETA 2m05s"
    assert progress_text({}) == "starting"


def test_log_lines_report_each_change_once(sample_trials):
    seen = _Seen()
    first = log_lines(sample_trials, seen)
    assert "trial 2 complete: val loss 2.3000 (rank 1 of 5, -0.1000 vs best baseline)" in first
    assert "trial 5 fail: TrainingError: loss is nan at step 12" in first
    assert "trial 7 started: moa/mlp relu+gelu+silu" in first
    assert any(line.startswith("trial 7: step 10/20") for line in first)
    assert log_lines(sample_trials, seen) == []


def test_mode_follows_quiet_and_terminal(monkeypatch):
    monkeypatch.setenv(display.QUIET_ENV, "1")
    assert display_mode() == "quiet"
    monkeypatch.delenv(display.QUIET_ENV)
    monkeypatch.setenv("NO_COLOR", "1")
    assert display_mode() == "log"


@pytest.fixture
def storage_url(tmp_path):
    return f"sqlite:///{tmp_path / 'display.db'}"


def test_display_logs_trials_of_storage(storage_url, caplog):
    study = optuna.create_study(study_name="watched", storage=storage_url)
    study.add_trial(frozen_trial(0, val_loss=2.5, baseline="gelu"))
    caplog.set_level(logging.INFO, logger="moa_search.display")
    with StudyDisplay(storage_url, "watched", n_trials=2, refresh_seconds=0.05, mode="log"):
        study.add_trial(frozen_trial(1, val_loss=2.25))
        study.add_trial(frozen_trial(2, TrialState.FAIL, fail_reason="TrainingError: loss is inf"))
    messages = [record.getMessage() for record in caplog.records]
    assert not any(message.startswith("trial 0 ") for message in messages)  # finished before the display
    assert "trial 1 complete: val loss 2.2500 (rank 1 of 2, -0.2500 vs best baseline)" in messages
    assert "trial 2 fail: TrainingError: loss is inf" in messages
    assert sum(message.startswith("trial 1 complete") for message in messages) == 1


def test_live_mode_renders_final_state(storage_url):
    study = optuna.create_study(study_name="watched", storage=storage_url)
    console = Console(width=200, record=True, color_system=None, force_terminal=True)
    with StudyDisplay(storage_url, "watched", n_trials=1, refresh_seconds=0.05, mode="live", console=console):
        study.add_trial(frozen_trial(0, val_loss=2.5))
    text = console.export_text()
    assert "1/1 search trials finished" in text
    assert "2.5000" in text


def test_unreadable_storage_warns_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="moa_search.display")
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    watcher = StudyDisplay(missing, "nothing", n_trials=1, refresh_seconds=0.05, mode="log")
    with watcher:
        watcher.refresh()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "live display cannot read study nothing" in warnings[0]


def test_quiet_mode_starts_no_thread(storage_url):
    watcher = StudyDisplay(storage_url, "watched", n_trials=1, mode="quiet")
    with watcher:
        assert watcher._thread is None
