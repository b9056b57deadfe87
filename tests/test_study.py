"""Study creation, resume, the edited-space rejection, samplers, pruners and the budget rules."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from moa_search import records
from moa_search.config import RunConfig
from moa_search.errors import ConfigError, StudyError
from moa_search.space import load_space
from moa_search.space_settings import StudySettings
from moa_search.storage import open_storage
from moa_search.study import (
    SearchTrialsSampler,
    baseline_config,
    build_pruner,
    build_sampler,
    check_pruner,
    claim_decision,
    count_budget,
    create_or_resume,
    load_search_study,
)
from tiny_search import write_space


def _trial(number: int, state: TrialState, baseline: str | None = None) -> optuna.trial.FrozenTrial:
    attrs = {records.IS_BASELINE: True, records.BASELINE: baseline} if baseline else {}
    trial = optuna.trial.create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                                      user_attrs=attrs)
    trial.number = number
    return trial


def _create(tmp_path, name: str = "tiny", fork: bool = False, **space_options):
    path = write_space(tmp_path, **space_options)
    space = load_space(path)
    storage = open_storage(f"sqlite:///{(tmp_path / 'studies.db').as_posix()}")
    search = create_or_resume(storage, space, space.settings, study_name=name,
                              source=path.read_text(encoding="utf-8"), fork=fork)
    return search, storage


# Budget rules


def test_count_budget_states():
    trials = [_trial(0, TrialState.COMPLETE, "gelu"), _trial(1, TrialState.WAITING, "swiglu"),
              _trial(2, TrialState.COMPLETE), _trial(3, TrialState.PRUNED), _trial(4, TrialState.FAIL),
              _trial(5, TrialState.RUNNING), _trial(6, TrialState.WAITING)]
    count = count_budget(trials)
    assert count.finished == 2
    assert count.running == 1
    assert count.waiting == 1
    assert count.active == 2
    assert count.waiting_baselines == 1


@pytest.mark.parametrize(("states", "number", "n_trials", "expected"), [
    # Earlier running trial and this one both fit in a budget of 3 after one finished trial.
    ({0: TrialState.COMPLETE, 1: TrialState.RUNNING}, 2, 3, "run"),
    # The earlier running trial takes the last place: wait in case it fails.
    ({0: TrialState.COMPLETE, 1: TrialState.RUNNING}, 2, 2, "wait"),
    # A later running trial does not block an earlier one: the later one waits instead.
    ({0: TrialState.COMPLETE, 3: TrialState.RUNNING}, 2, 2, "run"),
    # Failed trials leave the budget.
    ({0: TrialState.FAIL, 1: TrialState.FAIL}, 2, 1, "run"),
    # Finished trials count whatever their number.
    ({0: TrialState.PRUNED, 5: TrialState.COMPLETE}, 2, 2, "over"),
])
def test_claim_decision_cases(states, number, n_trials, expected):
    trials = [_trial(index, state) for index, state in states.items()]
    trials.append(_trial(number, TrialState.RUNNING))
    assert claim_decision(trials, number, n_trials) == expected


def test_claim_ignores_baselines():
    trials = [_trial(0, TrialState.COMPLETE, "gelu"), _trial(1, TrialState.RUNNING, "swiglu"),
              _trial(2, TrialState.RUNNING)]
    assert claim_decision(trials, 2, 1) == "run"


# Creating and resuming


def test_create_stores_space_and_baselines(tmp_path):
    search, _ = _create(tmp_path)
    attrs = search.study.user_attrs
    assert attrs[records.SPACE_HASH] == search.space.hash()
    assert attrs[records.SPACE] == search.space.to_dict()
    assert attrs[records.OBJECTIVES] == ["val_loss"]
    assert attrs[records.SETTINGS]["n_trials"] == 2
    assert attrs[records.SETTINGS]["pruner"] == "none"
    waiting = search.study.get_trials(states=(TrialState.WAITING,))
    assert [trial.user_attrs[records.BASELINE] for trial in waiting] == ["gelu", "swiglu"]
    assert all(trial.user_attrs[records.IS_BASELINE] for trial in waiting)


def test_resume_queues_no_more_baselines(tmp_path):
    _create(tmp_path)
    search, _ = _create(tmp_path)
    assert len(search.study.get_trials()) == 2


def test_edited_space_rejected_with_changes(tmp_path):
    _create(tmp_path)
    with pytest.raises(StudyError) as error:
        _create(tmp_path, lr="{low: 1e-4, high: 1e-2, log: true}")
    message = str(error.value)
    assert "train.lr" in message
    assert "0.0001" in message
    assert "--study NEW_NAME" in message
    assert "--fork" in message
    assert "tiny-fork-1" in message


def test_fork_starts_new_study(tmp_path):
    _create(tmp_path)
    search, storage = _create(tmp_path, fork=True, lr="{low: 1e-4, high: 1e-2, log: true}")
    assert search.name == "tiny-fork-1"
    assert search.study.user_attrs[records.FORKED_FROM] == "tiny"
    names = {summary.study_name for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    assert names == {"tiny", "tiny-fork-1"}
    assert len(search.study.get_trials()) == 2  # its own baselines, no copied trials


def test_resume_updates_budget(tmp_path):
    search, storage = _create(tmp_path)
    space = search.space
    create_or_resume(storage, space, space.settings.with_overrides(n_trials=7), study_name="tiny",
                     source=(tmp_path / "tiny.yaml").read_text(encoding="utf-8"))
    assert load_search_study(storage, "tiny").n_trials == 7


def test_load_search_study_rebuilds_space(tmp_path):
    search, storage = _create(tmp_path)
    loaded = load_search_study(storage, "tiny", seed=5)
    assert loaded.space.hash() == search.space.hash()
    assert loaded.settings.seed == 5
    assert load_search_study(storage, "tiny").settings.seed is None


def test_load_missing_study_lists_names(tmp_path):
    _, storage = _create(tmp_path)
    with pytest.raises(StudyError, match="'nope' not found.*tiny"):
        load_search_study(storage, "nope")


# Samplers, pruners and baselines


def test_multi_objective_with_pruner_rejected():
    settings = StudySettings(objectives=("val_loss", "params"), pruner="hyperband")
    with pytest.raises(StudyError, match="cannot be used with several objectives"):
        check_pruner(settings)
    assert check_pruner(StudySettings(objectives=("val_loss", "params"))) == "none"
    assert check_pruner(StudySettings()) == "hyperband"


def test_space_file_multi_objective_pruner_rejected(tmp_path):
    with pytest.raises(ConfigError, match="multi-objective"):
        write_space(tmp_path, study="{objectives: [val_loss, params], pruner: median}")
        load_space(tmp_path / "tiny.yaml")


@pytest.mark.parametrize("name", ["tpe", "random", "grid", "cmaes", "nsga2"])
def test_build_sampler_names(tmp_path, name):
    space = load_space(write_space(tmp_path, lr="{choices: [1.0e-3, 1.0e-2]}"))
    sampler = build_sampler(name, 0, space)
    assert isinstance(sampler, SearchTrialsSampler)
    assert type(sampler.inner).__name__.lower().startswith(name[:3])


def test_build_pruner_names(tmp_path):
    base = RunConfig()
    assert isinstance(build_pruner("hyperband", base), optuna.pruners.HyperbandPruner)
    assert isinstance(build_pruner("median", base), optuna.pruners.MedianPruner)
    assert isinstance(build_pruner("none", base), optuna.pruners.NopPruner)


def test_sampler_view_hides_baselines():
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={records.IS_BASELINE: True}))
    study.add_trial(optuna.trial.create_trial(value=2.0, params={"x": 0.5},
                                              distributions={"x": FloatDistribution(0, 1)}))
    sampler = SearchTrialsSampler(optuna.samplers.RandomSampler())
    view = sampler._view(study)
    assert [trial.value for trial in view.get_trials()] == [2.0]
    assert [trial.value for trial in view._get_trials(deepcopy=False)] == [2.0]
    assert len(view.trials) == 1
    view.stop()
    assert sampler.exhausted


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_grid_exhaustion_sets_flag(tmp_path):
    search, _ = _create(tmp_path, study="{sampler: grid, n_trials: 5}", ffn="{kind: fixed, bank: [gelu]}",
                        lr="{choices: [1.0e-3]}")
    study = search.study
    for _ in range(2):  # the baselines
        study.tell(study.ask(), 1.0)
    assert not search.sampler.exhausted
    trial = study.ask()
    search.space.sample(trial)
    study.tell(trial, 1.0)
    assert search.sampler.exhausted


def test_baseline_configs():
    base = dataclasses.replace(RunConfig(), ffn_per_layer={0: RunConfig().ffn})
    gelu = baseline_config(base, "gelu")
    swiglu = baseline_config(base, "swiglu")
    assert (gelu.ffn.kind, gelu.ffn.type, gelu.ffn.bank) == ("fixed", "mlp", ("gelu",))
    assert (swiglu.ffn.kind, swiglu.ffn.type, swiglu.ffn.bank) == ("fixed", "glu", ("silu",))
    assert gelu.ffn_per_layer == {}
    assert gelu.train == base.train
    assert gelu.model == base.model
    with pytest.raises(StudyError, match="unknown baseline"):
        baseline_config(base, "relu")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
@pytest.mark.parametrize("objectives", [["val_loss"], ["val_loss", "params"]])
def test_nsga2_generations_skip_baselines(tmp_path, objectives):
    search, _ = _create(tmp_path, study=f"{{sampler: nsga2, pruner: none, seed: 0, objectives: {objectives}}}")
    # A population of 2 makes the third search trial a child of the first generation.
    search.sampler.inner.population_size = 2
    study = search.study
    for _ in range(2):  # the baselines
        study.tell(study.ask(), [1.0] * len(objectives))
    for index in range(6):
        trial = study.ask()
        config = search.space.sample(trial)
        study.tell(trial, [config.train.lr * (index + 1)] * len(objectives))
    search_trials = [trial for trial in study.get_trials() if not records.is_baseline(trial)]
    assert [trial.state for trial in search_trials] == [TrialState.COMPLETE] * 6
    generation_key = type(search.sampler.inner)._get_generation_key()
    assert [trial.system_attrs[generation_key] for trial in search_trials] == [0, 0, 1, 1, 2, 2]
    baselines = [trial for trial in study.get_trials() if records.is_baseline(trial)]
    assert all(generation_key not in trial.system_attrs for trial in baselines)


@pytest.mark.parametrize("pruner", ["hyperband", "median"])
def test_nsga2_with_pruner_rejected(pruner):
    settings = StudySettings(sampler="nsga2", pruner=pruner)
    with pytest.raises(StudyError, match=f"pruner {pruner!r} cannot be used with sampler nsga2"):
        check_pruner(settings)


def test_nsga2_defaults_to_no_pruner():
    assert check_pruner(StudySettings(sampler="nsga2")) == "none"
    assert check_pruner(StudySettings(sampler="nsga2", pruner="none")) == "none"


def test_grid_on_continuous_space_creates_nothing(tmp_path, caplog):
    with caplog.at_level("INFO", logger="moa_search"), pytest.raises(ConfigError):
        _create(tmp_path, study="{sampler: grid, n_trials: 2}")
    storage = open_storage(f"sqlite:///{(tmp_path / 'studies.db').as_posix()}")
    assert optuna.get_all_study_summaries(storage, include_best_trial=False) == []
    assert "Created study" not in caplog.text
