"""Reading trial records back from Optuna trials."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from moa_search import records


def _stored_trial(**user_attrs) -> optuna.trial.FrozenTrial:
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(value=2.5, user_attrs=user_attrs, system_attrs={"failed_trial": 4}))
    return study.trials[0]


def test_trial_record_reads_every_key():
    curve = [{"step": 2, "tokens": 32, "train_loss": 5.0, "val_loss": 4.9, "lr": 1e-3, "elapsed_seconds": 0.5}]
    usage = {"0": {"activations": ["relu", "gelu"], "share": [0.6, 0.4], "mean_weight": [0.5, 0.5],
                   "entropy": 0.9, "tokens": 64}}
    trial = _stored_trial(**{
        records.CONFIG: {"train": {"seed": 3}}, records.SEED: 3, records.VERSIONS: {"torch": "2.13.0"},
        records.WORKER: "host:1", records.IS_BASELINE: True, records.BASELINE: "gelu",
        records.METRICS: {"val_loss": 2.5}, records.CURVE: curve, records.GATE_USAGE: usage,
        records.ARTIFACT_DIR: "tiny/trial_0", records.PROGRESS: {"step": 2},
    })
    record = records.trial_record(trial)
    assert record.number == 0
    assert record.state == TrialState.COMPLETE
    assert record.value == 2.5
    assert record.config == {"train": {"seed": 3}}
    assert record.seed == 3
    assert record.versions == {"torch": "2.13.0"}
    assert record.worker == "host:1"
    assert record.is_baseline
    assert record.baseline == "gelu"
    assert record.metrics == {"val_loss": 2.5}
    assert record.curve == curve
    assert record.gate_usage == usage
    assert record.fail_reason is None
    assert record.progress == {"step": 2}
    assert record.retried_from == 4
    assert record.finished
    assert record.model_path(Path("out")) == Path("out/tiny/trial_0/model.pt")


def test_trial_record_defaults_when_missing():
    record = records.trial_record(_stored_trial())
    assert record.config is None
    assert not record.is_baseline
    assert record.baseline is None
    assert record.metrics == {}
    assert record.curve == []
    assert record.gate_usage == {}
    assert record.model_path() is None
    assert not records.is_baseline(_stored_trial())


def test_artifact_dir_is_safe_path():
    assert records.artifact_dir_for("quick", 7) == "quick/trial_7"
    assert records.artifact_dir_for("../a b/c", 1) == "_a_b_c/trial_1"
    assert records.safe_folder_name("...") == "_"
