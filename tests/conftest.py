"""Shared fixtures: FrozenTrials in the stored record format, and one real small study per session."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from moa_search import records
from moa_search.config import FFNConfig, RunConfig, run_config_to_dict


@pytest.fixture(autouse=True)
def _restore_package_logger():
    """Undo the CLI's logging set-up after each test, so caplog in later tests receives moa_search records."""
    logger = logging.getLogger("moa_search")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def usage(names: list[str], shares: list[float], entropy: float) -> dict[str, Any]:
    """Return one layer's gate usage in the format `FeedForward.read_gate_usage` returns."""
    return {"activations": names, "share": shares, "mean_weight": [0.5] * len(names), "entropy": entropy, "tokens": 1000}


def frozen_trial(number: int, state: TrialState = TrialState.COMPLETE, *, val_loss: float | None = None,
                 ffn: FFNConfig | None = None, baseline: str | None = None,
                 gate_usage: dict[str, dict] | None = None, fail_reason: str | None = None,
                 progress: dict[str, Any] | None = None) -> FrozenTrial:
    """Build a FrozenTrial carrying the user attributes a moa-search worker stores."""
    ffn = ffn or FFNConfig()
    config = run_config_to_dict(RunConfig(ffn=ffn))
    attrs: dict[str, Any] = {records.CONFIG: config, records.IS_BASELINE: baseline is not None,
                             records.BASELINE: baseline, records.GATE_USAGE: gate_usage or {}}
    if state == TrialState.COMPLETE:
        attrs[records.METRICS] = {"val_loss": val_loss, "tokens_per_second": 1000.0 + number, "wall_seconds": 10.0,
                                  "params": {"total": 100_000 + number}}
        attrs[records.CURVE] = [{"step": 10, "tokens": 1280, "train_loss": val_loss + 0.5, "val_loss": val_loss + 0.4,
                                 "lr": 1e-3, "elapsed_seconds": 1.0},
                                {"step": 20, "tokens": 2560, "train_loss": val_loss + 0.1, "val_loss": val_loss,
                                 "lr": 1e-4, "elapsed_seconds": 2.0}]
    if fail_reason:
        attrs[records.FAIL_REASON] = fail_reason
    if progress:
        attrs[records.PROGRESS] = progress
    trial = optuna.trial.create_trial(
        state=state, value=val_loss if state == TrialState.COMPLETE else None,
        params={"ffn.kind": ffn.kind}, distributions={"ffn.kind": CategoricalDistribution(["fixed", "la", "moa"])},
        user_attrs=attrs, intermediate_values={10: val_loss} if state == TrialState.PRUNED and val_loss else None,
    )
    trial.number = number
    trial._trial_id = number
    if state != TrialState.RUNNING:
        trial.datetime_start = datetime.datetime(2026, 1, 1, 12, 0, 0)
        trial.datetime_complete = trial.datetime_start + datetime.timedelta(seconds=30 + number)
    return trial


@pytest.fixture
def sample_trials() -> list[FrozenTrial]:
    """Two baselines, three searched trials (one collapsed), one failed, one pruned and one running."""
    bank = ["relu", "gelu", "silu"]
    balanced = {str(layer): usage(bank, [0.4, 0.3, 0.3], 0.9) for layer in range(2)}
    collapsed = {str(layer): usage(bank, [0.97, 0.02, 0.01], 0.1) for layer in range(2)}
    half = {"0": usage(bank, [0.97, 0.02, 0.01], 0.1), "1": usage(bank, [0.5, 0.4, 0.1], 0.7)}
    moa = FFNConfig(kind="moa", bank=tuple(bank), gate="softmax", temperature=0.5, top_k=2)
    return [
        frozen_trial(0, val_loss=2.50, ffn=FFNConfig(kind="fixed", bank=("gelu",)), baseline="gelu"),
        frozen_trial(1, val_loss=2.40, ffn=FFNConfig(kind="fixed", type="glu", bank=("silu",)), baseline="swiglu"),
        frozen_trial(2, val_loss=2.30, ffn=moa, gate_usage=balanced),
        frozen_trial(3, val_loss=2.45, ffn=moa, gate_usage=collapsed),
        frozen_trial(4, val_loss=2.35, ffn=FFNConfig(kind="la", bank=tuple(bank)), gate_usage=half),
        frozen_trial(5, TrialState.FAIL, ffn=moa, fail_reason="TrainingError: loss is nan at step 12"),
        frozen_trial(6, TrialState.PRUNED, val_loss=3.1, ffn=moa, fail_reason="pruned at step 10: val loss 3.1"),
        frozen_trial(7, TrialState.RUNNING, ffn=moa, progress={"step": 10, "max_steps": 20, "tokens": 1280,
                                                               "train_loss": 3.0, "val_loss": 3.2,
                                                               "tokens_per_second": 900.0, "eta_seconds": 12.0}),
    ]


# ---------------------------------------------------------------------------------------------
# One real study, run once per test session through the search path that `moa-search run` uses

# Grid over the learning rate, in the order the grid sampler draws with seed 0: 3e-3 completes,
# 1e-6 learns nothing and is pruned at step 9, 1e3 makes the loss non-finite and fails. The study
# name fixes Hyperband's bracket of each trial (a hash of name and number); with this name the
# completed and the pruned trial share a bracket, so the pruning decision compares them.
REPORT_SPACE = """
study:
  n_trials: 3
  sampler: grid
  pruner: hyperband
  seed: 0
model: {d_model: 16, n_layers: 2, n_heads: 2, context_length: 16}
ffn:
  kind: moa
  bank: [relu, gelu, silu]
  gate: softmax
ffn_per_layer:
  1: {kind: la}
data: {max_documents: 10}
train:
  batch_size: 4
  max_steps: 12
  eval_interval: 3
  eval_batches: 1
  warmup_steps: 0
  lr: {choices: [0.003, 1.0e-6, 1.0e+3]}
"""
REPORT_STUDY = "report-study"


@pytest.fixture(scope="session")
def report_study(tmp_path_factory) -> dict[str, Any]:
    """Run the tiny study once: two baselines, one complete, one pruned and one failed trial.

    Returns the storage URL, the study name and the results folder that contains the trial models.
    """
    from moa_search import paths
    from moa_search.space import parse_space
    from moa_search.storage import open_storage
    from moa_search.study import create_or_resume
    from moa_search.worker import run_trials

    results = tmp_path_factory.mktemp("report_results")
    url = f"sqlite:///{results / 'moa_search.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(paths.RESULTS_ENV, str(results))
        space = parse_space(REPORT_SPACE, "report_space.yaml")
        search = create_or_resume(open_storage(url), space, space.settings, study_name=REPORT_STUDY,
                                  source=REPORT_SPACE)
        run_trials(search, url)
    states = {trial.number: trial.state for trial in search.study.get_trials(deepcopy=False)}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.COMPLETE, 2: TrialState.COMPLETE,
                      3: TrialState.PRUNED, 4: TrialState.FAIL}, f"the report study changed shape: {states}"
    return {"storage": url, "study": REPORT_STUDY, "results": results}


@pytest.fixture
def report_env(report_study, monkeypatch) -> dict[str, Any]:
    """The report study, with the results folder and storage set in the environment as a user would."""
    monkeypatch.setenv("MOA_SEARCH_RESULTS", str(report_study["results"]))
    monkeypatch.setenv("MOA_SEARCH_STORAGE", report_study["storage"])
    return report_study
