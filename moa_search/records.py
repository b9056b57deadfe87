"""The record each trial and study stores in Optuna attributes, and helpers to read it back.

Trials (Optuna user_attrs, all JSON-safe):
- CONFIG: the resolved run config as plain data (`run_config_to_dict`); SEED: the training seed;
  VERSIONS: {python, torch, optuna, moa_search}; WORKER: "host:pid" of the process that ran it.
- IS_BASELINE: True for the fixed GELU Type-I and SwiGLU Type-II reference trials; BASELINE: their
  name ("gelu" or "swiglu"), None for search trials.
- METRICS: {val_loss, best_val_loss, train_loss, tokens, tokens_per_second, wall_seconds, steps,
  params, device}, where params is `GPT.parameter_counts()`.
- CURVE: one {step, tokens, train_loss, val_loss, lr, elapsed_seconds} per evaluation.
- GATE_USAGE: {"<layer>": usage dict from `FeedForward.read_gate_usage`}, {} for fixed models.
- FAIL_REASON: why a trial failed or was pruned (absent for complete trials).
- ARTIFACT_DIR: folder of the trial's model.pt, relative to the results folder.
- PROGRESS: {step, max_steps, tokens, train_loss, val_loss, tokens_per_second, eta_seconds},
  rewritten at each evaluation while the trial runs.

Studies (Optuna study user_attrs): SPACE (the resolved space), SPACE_HASH, SPACE_SOURCE ({path,
text} of the space file, from which workers rebuild the space), OBJECTIVES (names, the first is
"val_loss"), SETTINGS (sampler, pruner, seed, n_trials, timeout_seconds) and FORKED_FROM (for forks).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from moa_search.paths import results_dir

# Trial user_attrs.
CONFIG = "config"
SEED = "seed"
VERSIONS = "versions"
WORKER = "worker"
IS_BASELINE = "is_baseline"
BASELINE = "baseline"
METRICS = "metrics"
CURVE = "curve"
GATE_USAGE = "gate_usage"
FAIL_REASON = "fail_reason"
ARTIFACT_DIR = "artifact_dir"
PROGRESS = "progress"

# Study user_attrs.
SPACE = "space"
SPACE_HASH = "space_hash"
SPACE_SOURCE = "space_source"
OBJECTIVES = "objectives"
SETTINGS = "settings"
FORKED_FROM = "forked_from"

# Trial system_attrs written by Optuna's RetryHeartbeatStaleTrialCallback.
RETRIED_FROM = "failed_trial"

MODEL_FILE = "model.pt"
BASELINE_NAMES = ("gelu", "swiglu")
CURVE_KEYS = ("step", "tokens", "train_loss", "val_loss", "lr", "elapsed_seconds")
PROGRESS_KEYS = ("step", "max_steps", "tokens", "train_loss", "val_loss", "tokens_per_second", "eta_seconds")


@dataclass(frozen=True)
class TrialRecord:
    """One trial as moa-search stored it; fields missing from older or unfinished trials are empty."""

    number: int
    state: TrialState
    values: tuple[float, ...] | None
    params: dict[str, Any]
    config: dict[str, Any] | None = None
    seed: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    worker: str | None = None
    is_baseline: bool = False
    baseline: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)
    gate_usage: dict[str, dict] = field(default_factory=dict)
    fail_reason: str | None = None
    artifact_dir: str | None = None
    progress: dict[str, Any] | None = None
    retried_from: int | None = None
    datetime_start: datetime.datetime | None = None
    datetime_complete: datetime.datetime | None = None

    @property
    def value(self) -> float | None:
        """The first objective (validation loss), or None for trials without values."""
        return self.values[0] if self.values else None

    @property
    def finished(self) -> bool:
        """True for trials that count toward the budget: complete or pruned."""
        return self.state in (TrialState.COMPLETE, TrialState.PRUNED)

    def model_path(self, results: Path | None = None) -> Path | None:
        """Return the trial's model.pt under `results` (default: the results folder), or None."""
        if self.artifact_dir is None:
            return None
        return (results if results is not None else results_dir()) / self.artifact_dir / MODEL_FILE


def trial_record(trial: FrozenTrial) -> TrialRecord:
    """Read a trial's moa-search record from its Optuna attributes."""
    attrs = trial.user_attrs
    return TrialRecord(
        number=trial.number,
        state=trial.state,
        values=tuple(trial.values) if trial.values is not None else None,
        params=dict(trial.params),
        config=attrs.get(CONFIG),
        seed=attrs.get(SEED),
        versions=dict(attrs.get(VERSIONS) or {}),
        worker=attrs.get(WORKER),
        is_baseline=bool(attrs.get(IS_BASELINE, False)),
        baseline=attrs.get(BASELINE),
        metrics=dict(attrs.get(METRICS) or {}),
        curve=list(attrs.get(CURVE) or []),
        gate_usage=dict(attrs.get(GATE_USAGE) or {}),
        fail_reason=attrs.get(FAIL_REASON),
        artifact_dir=attrs.get(ARTIFACT_DIR),
        progress=attrs.get(PROGRESS),
        retried_from=trial.system_attrs.get(RETRIED_FROM),
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
    )


def is_baseline(trial: FrozenTrial) -> bool:
    """True for the baseline trials that run once per study and stay out of the budget."""
    return bool(trial.user_attrs.get(IS_BASELINE, False))


def study_records(study: optuna.Study) -> list[TrialRecord]:
    """Return the record of every trial in the study, in trial-number order."""
    return [trial_record(trial) for trial in study.get_trials(deepcopy=False)]


def artifact_dir_for(study_name: str, trial_number: int) -> str:
    """Return the folder of a trial's artifacts relative to the results folder."""
    return f"{safe_folder_name(study_name)}/trial_{trial_number}"


def safe_folder_name(name: str) -> str:
    """Return `name` with every character other than letters, digits, '.', '_' and '-' replaced by '_'."""
    cleaned = "".join(char if char.isalnum() or char in "._-" else "_" for char in name)
    return cleaned.lstrip(".") or "_"
