"""Create, resume and load the Optuna study behind a search, with its sampler, pruner and baselines.

A study stores its resolved search space and the space's hash as study user_attrs, so any worker
can rebuild the space from the storage alone, and resuming with an edited space fails before any
training. The process that creates a study also enqueues the two baseline trials (fixed GELU
Type-I and SwiGLU Type-II at the space's base settings). The storage rejects a second study with
the same name, so only one process creates it and the baselines are enqueued once, however many
workers start together.

Budget: N trials means N finished search trials in the whole study, counted over all workers and
resumes. Complete and pruned trials count, because both used their training time and informed the
sampler. Failed trials do not count, so they are replaced. Baselines never count.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import optuna
from optuna.samplers import BaseGASampler, BaseSampler
from optuna.trial import FrozenTrial, TrialState

from moa_search import records
from moa_search.config import FFNConfig, RunConfig
from moa_search.errors import ConfigError, StudyError
from moa_search.space import SearchSpace, diff_spaces, parse_space
from moa_search.space_settings import StudySettings
from moa_search.trainer import budget_steps

logger = logging.getLogger(__name__)

DEFAULT_N_TRIALS = 20
# How long a joining process waits for the creator to finish writing a new study's attributes.
_SETUP_WAIT_SECONDS = 15.0

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
ACTIVE_STATES = (TrialState.RUNNING, TrialState.WAITING)


@dataclass
class SearchStudy:
    """An Optuna study together with the search space and settings it runs with."""

    study: optuna.Study
    space: SearchSpace
    settings: StudySettings
    sampler: SearchTrialsSampler
    storage: optuna.storages.BaseStorage  # as opened, so workers can record heartbeats on it

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def n_trials(self) -> int:
        """The budget: finished search trials the whole study should reach."""
        return self.settings.n_trials if self.settings.n_trials is not None else DEFAULT_N_TRIALS


# ---------------------------------------------------------------------------------------------
# Samplers and pruners


class _SearchTrialsView:
    """A study as samplers see it: every call forwards to the real study, but trial lists leave out
    the baselines, whose configs do not come from the space and whose params are empty."""

    def __init__(self, study: Any, owner: SearchTrialsSampler) -> None:
        self._study = study
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Sequence[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [trial for trial in trials if not records.is_baseline(trial)]

    def get_trials(self, deepcopy: bool = True, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        return [trial for trial in self._study.get_trials(deepcopy=deepcopy, states=states)
                if not records.is_baseline(trial)]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def stop(self) -> None:
        # GridSampler stops the study once every grid point ran; the worker loop checks the flag,
        # because Study.stop only works inside Study.optimize.
        self._owner.exhausted = True


class SearchTrialsSampler(BaseSampler):
    """Wrap an Optuna sampler so it learns from search trials only, never from the baselines."""

    def __init__(self, inner: BaseSampler) -> None:
        self.inner = inner
        self.exhausted = False

    def _view(self, study: Any) -> Any:
        return _SearchTrialsView(study, self)

    def infer_relative_search_space(self, study, trial):
        if records.is_baseline(trial):
            return {}
        return self.inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study, trial, search_space):
        # Baselines take no parameters from the space, so they never reach the inner sampler. That
        # also keeps them out of NSGA-II's generations, which only count trials it has sampled.
        if records.is_baseline(trial):
            return {}
        if isinstance(self.inner, BaseGASampler):
            # The GA's generation cache indexes the trial list by trial number, which needs the
            # real study's full list. It already ignores trials without a generation (baselines).
            return self.inner.sample_relative(study, trial, search_space)
        return self.inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.inner.before_trial(self._view(study), trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(self._view(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def build_sampler(name: str, seed: int | None, space: SearchSpace) -> SearchTrialsSampler:
    """Return the sampler called `name`, seeded, wrapped to ignore baselines.

    TPE is multivariate with grouped search spaces, because spaces have conditional dimensions
    (top-k only exists for some banks), and uses a constant liar so parallel workers spread out.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            inner: BaseSampler = optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed)
        elif name == "random":
            inner = optuna.samplers.RandomSampler(seed=seed)
        elif name == "grid":
            inner = optuna.samplers.GridSampler(space.grid(), seed=seed)
        elif name == "cmaes":
            inner = optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        elif name == "nsga2":
            inner = optuna.samplers.NSGAIISampler(seed=seed)
        else:
            raise ConfigError(f"sampler: must be one of tpe, random, grid, cmaes, nsga2, got {name!r}")
    return SearchTrialsSampler(inner)


def build_pruner(name: str, base: RunConfig) -> optuna.pruners.BasePruner:
    """Return the pruner called `name`; Hyperband's rungs start at the first evaluation step."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=base.train.eval_interval,
                                              max_resource=budget_steps(base), reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"pruner: must be one of hyperband, median, none, got {name!r}")


def resolve_pruner(settings: StudySettings) -> str:
    """Return the pruner a study runs with: the one set, else hyperband where pruning works, else none.

    Pruning works with one objective only, and not with NSGA-II, whose generations are built from
    complete trials only, so pruned trials would never become parents.
    """
    return settings.resolved_pruner


def check_pruner(settings: StudySettings) -> str:
    """Return the pruner to use, or raise StudyError when the pruner cannot work with the objectives
    or the sampler."""
    pruner = resolve_pruner(settings)
    if settings.sampler == "nsga2" and pruner != "none":
        raise StudyError(f"pruner {pruner!r} cannot be used with sampler nsga2, because NSGA-II builds its "
                         "generations from complete trials only; the pruner comes from --pruner or the space file's "
                         "study.pruner, so pass --pruner none or choose another sampler")
    if len(settings.objectives) > 1 and pruner != "none":
        raise StudyError(f"pruner {pruner!r} cannot be used with several objectives "
                         f"({', '.join(settings.objectives)}), because Optuna prunes single-objective studies "
                         "only; use --pruner none or a single objective")
    if len(settings.objectives) > 1 and settings.sampler == "cmaes":
        raise StudyError(f"sampler cmaes optimises one objective, got {len(settings.objectives)} "
                         f"({', '.join(settings.objectives)}); use --sampler nsga2 or tpe")
    return pruner


# ---------------------------------------------------------------------------------------------
# Baselines


def baseline_config(base: RunConfig, name: str) -> RunConfig:
    """Return the base config with its FFNs replaced by a fixed GELU Type-I or SwiGLU Type-II layer."""
    if name == "gelu":
        ffn = FFNConfig(kind="fixed", type="mlp", bank=("gelu",))
    elif name == "swiglu":
        ffn = FFNConfig(kind="fixed", type="glu", bank=("silu",))
    else:
        raise StudyError(f"unknown baseline {name!r}; valid baselines: {', '.join(records.BASELINE_NAMES)}")
    return dataclasses.replace(base, ffn=ffn, ffn_per_layer={})


def _enqueue_baselines(study: optuna.Study) -> None:
    for name in records.BASELINE_NAMES:
        study.enqueue_trial({}, user_attrs={records.IS_BASELINE: True, records.BASELINE: name})


# ---------------------------------------------------------------------------------------------
# Budget


@dataclass(frozen=True)
class BudgetCount:
    """Search trials (baselines excluded) by what they mean for the budget."""

    finished: int  # complete or pruned
    running: int
    waiting: int  # queued to run, such as retries of stale trials
    waiting_baselines: int

    @property
    def active(self) -> int:
        """Search trials that may still finish: running or queued."""
        return self.running + self.waiting


def count_budget(trials: Sequence[FrozenTrial]) -> BudgetCount:
    """Count the study's trials against the budget."""
    finished = running = waiting = waiting_baselines = 0
    for trial in trials:
        if records.is_baseline(trial):
            waiting_baselines += trial.state == TrialState.WAITING
        elif trial.state in FINISHED_STATES:
            finished += 1
        elif trial.state == TrialState.RUNNING:
            running += 1
        elif trial.state == TrialState.WAITING:
            waiting += 1
    return BudgetCount(finished, running, waiting, waiting_baselines)


def claim_decision(trials: Sequence[FrozenTrial], number: int, n_trials: int) -> str:
    """Decide whether the search trial `number`, just created, may train: "run", "wait" or "over".

    The storage hands out trial numbers atomically, so they order the claims of workers that asked
    at the same time. A trial may run when the finished search trials plus the active ones numbered
    before it stay below the budget. "wait" means earlier trials fill the budget but
    may still fail; "over" means the budget is already reached.
    """
    finished = ahead = 0
    for trial in trials:
        if trial.number == number or records.is_baseline(trial):
            continue
        if trial.state in FINISHED_STATES:
            finished += 1
        elif trial.state in ACTIVE_STATES and trial.number < number:
            ahead += 1
    if finished >= n_trials:
        return "over"
    return "run" if finished + ahead < n_trials else "wait"


# ---------------------------------------------------------------------------------------------
# Creating, resuming and loading


def _stored_settings(study: optuna.Study) -> dict[str, Any]:
    return dict(study.user_attrs.get(records.SETTINGS) or {})


def _settings_record(settings: StudySettings) -> dict[str, Any]:
    return {
        "sampler": settings.sampler,
        "pruner": resolve_pruner(settings),
        "seed": settings.seed,
        "n_trials": settings.n_trials if settings.n_trials is not None else DEFAULT_N_TRIALS,
        "timeout_seconds": settings.timeout_seconds,
    }


def _wait_for_setup(study: optuna.Study) -> dict[str, Any]:
    """Return the study's user_attrs once its creator has written the space (the last attribute)."""
    deadline = time.monotonic() + _SETUP_WAIT_SECONDS
    while True:
        attrs = study.user_attrs
        if records.SPACE_HASH in attrs or time.monotonic() > deadline:
            return attrs
        time.sleep(0.5)


def _fork_name(storage: optuna.storages.BaseStorage, name: str) -> str:
    existing = {summary.study_name for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    index = 1
    while f"{name}-fork-{index}" in existing:
        index += 1
    return f"{name}-fork-{index}"


def _refuse_edited_space(name: str, stored: dict[str, Any], space: SearchSpace, fork_name: str) -> StudyError:
    changes = diff_spaces(stored, space.to_dict()) or ["the space hash differs"]
    listed = "\n".join(f"  - {change}" for change in changes)
    return StudyError(
        f"study {name!r} was created with a different search space, so it was not resumed and nothing was "
        f"trained. Changes:\n{listed}\n"
        f"To keep both, start a new study with --study NEW_NAME, or pass --fork to start {fork_name!r} "
        "from the edited space (the old study stays as it is)."
    )


def create_or_resume(storage: optuna.storages.BaseStorage, space: SearchSpace, settings: StudySettings,
                     *, study_name: str, source: str, fork: bool = False) -> SearchStudy:
    """Create the study `study_name` for `space`, or resume it when it exists with the same space.

    `source` is the space file's YAML text, stored so workers rebuild the exact space from it.

    A resumed study takes the budget, sampler, pruner and seed from `settings` and stores them, so
    workers that join later follow them. With an edited space it raises StudyError naming the
    changes, unless `fork` is set: then it creates `<study_name>-fork-<n>` (the first free n) for the
    edited space. A fork copies no trials, because their parameters may lie outside the new space.
    """
    pruner_name = check_pruner(settings)
    # Build both once before touching the storage, so an invalid choice (such as grid over a
    # continuous range) raises before a half-created study exists.
    build_sampler(settings.sampler, settings.seed, space)
    build_pruner(pruner_name, space.base)
    directions = settings.directions
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                    sampler=optuna.samplers.RandomSampler())
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
        created = False

    if created:
        _set_up_new_study(study, space, settings, source)
        logger.info("Created study %r with %s baselines queued", study_name, len(records.BASELINE_NAMES))
    else:
        attrs = _wait_for_setup(study)
        if records.SPACE_HASH not in attrs:
            raise StudyError(f"study {study_name!r} exists but has no moa-search search space (it was created "
                             "by another tool, or its creation was interrupted); choose another name with --study")
        same_space = attrs[records.SPACE_HASH] == space.hash()
        same_objectives = list(attrs.get(records.OBJECTIVES) or []) == list(settings.objectives)
        if not (same_space and same_objectives):
            new_name = _fork_name(storage, study_name)
            if not fork:
                if not same_space:
                    raise _refuse_edited_space(study_name, attrs[records.SPACE], space, new_name)
                raise StudyError(f"study {study_name!r} optimises {attrs.get(records.OBJECTIVES)}, but the space "
                                 f"asks for {list(settings.objectives)}; use --study NEW_NAME or --fork")
            logger.info("Study %r has a different space; forking it as %r", study_name, new_name)
            forked = create_or_resume(storage, space, settings, study_name=new_name, source=source)
            forked.study.set_user_attr(records.FORKED_FROM, study_name)
            return forked
        _update_settings(study, settings)
        logger.info("Resuming study %r", study_name)
    study = _with_strategies(storage, study, space, settings, pruner_name)
    return SearchStudy(study=study, space=space, settings=settings, sampler=study.sampler, storage=storage)


def _set_up_new_study(study: optuna.Study, space: SearchSpace, settings: StudySettings, source: str) -> None:
    _enqueue_baselines(study)
    study.set_user_attr(records.SPACE_SOURCE, {"path": str(space.path), "text": source})
    study.set_user_attr(records.OBJECTIVES, list(settings.objectives))
    study.set_user_attr(records.SETTINGS, _settings_record(settings))
    study.set_user_attr(records.SPACE, space.to_dict())
    # Written last, so joining processes wait until it exists and then find every other attribute.
    study.set_user_attr(records.SPACE_HASH, space.hash())


def _update_settings(study: optuna.Study, settings: StudySettings) -> None:
    stored = _stored_settings(study)
    wanted = _settings_record(settings)
    changed = {key: value for key, value in wanted.items() if stored.get(key) != value}
    if changed:
        logger.info("Study %r settings changed: %s", study.study_name,
                    ", ".join(f"{key} {stored.get(key)} -> {value}" for key, value in changed.items()))
        study.set_user_attr(records.SETTINGS, {**stored, **wanted})


def _with_strategies(storage: optuna.storages.BaseStorage, study: optuna.Study, space: SearchSpace,
                     settings: StudySettings, pruner_name: str) -> optuna.Study:
    """Reload the study with the requested sampler and pruner attached.

    The seed is offset by the number of trials already in the study, so a resumed run does not
    replay the proposals of the first one.
    """
    seed = None if settings.seed is None else settings.seed + len(study.get_trials(deepcopy=False))
    sampler = build_sampler(settings.sampler, seed, space)
    return optuna.load_study(study_name=study.study_name, storage=storage, sampler=sampler,
                             pruner=build_pruner(pruner_name, space.base))


def stored_settings(study: optuna.Study) -> StudySettings:
    """Return the settings a study was last run with, as StudySettings."""
    stored = _stored_settings(study)
    objectives = tuple(study.user_attrs.get(records.OBJECTIVES) or ("val_loss",))
    return StudySettings(
        name=study.study_name,
        n_trials=stored.get("n_trials"),
        timeout_seconds=stored.get("timeout_seconds"),
        sampler=stored.get("sampler", "tpe"),
        pruner=stored.get("pruner"),
        seed=stored.get("seed"),
        objectives=objectives,
    )


def load_search_study(storage: optuna.storages.BaseStorage, study_name: str, **overrides: Any) -> SearchStudy:
    """Load an existing moa-search study, rebuilding its space from the stored attributes.

    `overrides` (n_trials, timeout_seconds, sampler, pruner, seed) apply to this process only and are
    not written to the study. None keeps the stored value, except for the seed: without one the
    sampler is seeded randomly.
    """
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        names = sorted(summary.study_name for summary in optuna.get_all_study_summaries(storage, include_best_trial=False))
        listed = ", ".join(names) if names else "none"
        raise StudyError(f"study {study_name!r} not found in the storage (studies there: {listed}); "
                         "create it with `moa-search run SPACE.yaml --study NAME` first") from None
    attrs = _wait_for_setup(study)
    if records.SPACE_SOURCE not in attrs or records.SPACE_HASH not in attrs:
        raise StudyError(f"study {study_name!r} has no moa-search search space, because it was not created by "
                         "`moa-search run`, so workers cannot join it")
    source = attrs[records.SPACE_SOURCE]
    space = parse_space(source["text"], source["path"])
    if space.hash() != attrs[records.SPACE_HASH]:
        changes = "; ".join(diff_spaces(attrs[records.SPACE], space.to_dict())) or "the hash differs"
        raise StudyError(f"study {study_name!r}: its stored space file resolves differently in this installation "
                         f"({changes}); run the worker with the moa-search version that created the study")
    settings = stored_settings(study).with_overrides(**overrides)
    if overrides.get("seed") is None:
        # Workers sharing the stored seed would all propose the same parameters.
        settings = dataclasses.replace(settings, seed=None)
    pruner_name = check_pruner(settings)
    study = _with_strategies(storage, study, space, settings, pruner_name)
    return SearchStudy(study=study, space=space, settings=settings, sampler=study.sampler, storage=storage)
