"""Train one trial of a study and store its record: config, metrics, curve, gate usage, model.

Faults end the trial, not the worker. A non-finite loss or an invalid sampled config fails the
trial with the reason in FAIL_REASON. An out-of-memory error does the same after the trial's memory
is released. A pruned trial keeps its curve and the step it stopped at. A corpus that cannot be
loaded, and errors that no input explains (bugs), fail the trial and then propagate, because every
later trial would fail the same way.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.trial import TrialState

import moa_search
from moa_search import records
from moa_search.config import DataConfig, RunConfig, run_config_to_dict
from moa_search.errors import CorpusError, MoaSearchError, StorageError
from moa_search.paths import results_dir
from moa_search.study import SearchStudy, baseline_config
from moa_search.trainer import EvalPoint, TrainResult, train

logger = logging.getLogger(__name__)

StorageCall = Callable[[Callable[[], Any], str], Any]


@dataclass(frozen=True)
class TrialOutcome:
    """End of a trial: its state, objective values (COMPLETE only) and the reason otherwise."""

    state: TrialState
    values: list[float] | None = None
    reason: str | None = None
    baseline: str | None = None


class CorpusCache:
    """Tokenised corpora of one worker, loaded once per data config and context length."""

    def __init__(self) -> None:
        self._corpora: dict[tuple[DataConfig, int], Any] = {}

    def get(self, config: RunConfig) -> Any:
        from moa_search.data import load_corpus

        key = (config.data, config.model.context_length)
        if key not in self._corpora:
            self._corpora[key] = load_corpus(config.data, config.model.context_length)
        return self._corpora[key]


def package_versions() -> dict[str, str]:
    """Return the versions that decide whether a trial can be reproduced."""
    return {"python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__,
            "moa_search": moa_search.__version__}


def objective_values(objectives: list[str] | tuple[str, ...], result: TrainResult) -> list[float]:
    """Return one value per objective name, in order, from a finished training run."""
    available = {
        "val_loss": result.val_loss,
        "params": float(result.params["total"]),
        "tokens_per_second": result.tokens_per_second,
        "wall_seconds": result.wall_seconds,
    }
    return [float(available[name]) for name in objectives]


def _curve_entry(point: EvalPoint) -> dict[str, Any]:
    return {key: getattr(point, key) for key in records.CURVE_KEYS}


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    # CUDA raises OutOfMemoryError; the CPU allocator raises a RuntimeError with one of these texts.
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        phrase in text for phrase in ("out of memory", "can't allocate memory", "not enough memory"))


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _describe_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


def save_model(study_name: str, trial_number: int, config: RunConfig, model: torch.nn.Module) -> str:
    """Save the trained weights (on the CPU) and the config dict as model.pt; return the folder
    relative to the results folder."""
    relative = records.artifact_dir_for(study_name, trial_number)
    folder = results_dir() / relative
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    torch.save({"state_dict": state_dict, "config": run_config_to_dict(config)}, folder / records.MODEL_FILE)
    return relative


class _Reporter:
    """The trainer's on_eval callback: curve, intermediate values, progress attribute, pruning."""

    def __init__(self, trial: optuna.Trial, prune: bool, report: bool, storage_call: StorageCall) -> None:
        self.trial = trial
        self.prune = prune
        self.report = report
        self.storage_call = storage_call
        self.curve: list[dict[str, Any]] = []

    def __call__(self, point: EvalPoint) -> None:
        self.curve.append(_curve_entry(point))
        progress = {key: getattr(point, key) for key in records.PROGRESS_KEYS}
        self.storage_call(lambda: self.trial.set_user_attr(records.PROGRESS, progress), "store the trial progress")
        if not self.report:
            return
        # Optuna reports and prunes single-objective studies only.
        # NOTE: the pruner compares trials at equal optimizer steps; when a space searches batch_size,
        # equal steps mean unequal token counts.
        self.storage_call(lambda: self.trial.report(point.val_loss, point.step), "report the validation loss")
        if self.prune and self.storage_call(self.trial.should_prune, "ask the pruner"):
            raise optuna.TrialPruned(f"pruned at step {point.step} of {point.max_steps} "
                                     f"with validation loss {point.val_loss:.4f}")


def run_trial(search: SearchStudy, trial: optuna.Trial, *, baseline: str | None, device: str | None,
              corpora: CorpusCache, storage_call: StorageCall, worker: str) -> TrialOutcome:
    """Train `trial` (a baseline when `baseline` names one), store its record and tell the study."""
    started = time.perf_counter()
    set_attr = lambda key, value: storage_call(lambda: trial.set_user_attr(key, value), "store the trial record")  # noqa: E731
    set_attr(records.WORKER, worker)
    set_attr(records.VERSIONS, package_versions())
    set_attr(records.PROGRESS, None)  # a retried trial inherits the stale trial's progress
    single_objective = len(search.settings.objectives) == 1
    reporter = _Reporter(trial, prune=baseline is None and single_objective, report=single_objective,
                         storage_call=storage_call)
    out_of_memory = False
    try:
        config = baseline_config(search.space.base, baseline) if baseline else search.space.sample(trial)
        if device is not None:
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, device=device))
        set_attr(records.CONFIG, run_config_to_dict(config))
        set_attr(records.SEED, config.train.seed)
        what = f"baseline {baseline}" if baseline else _describe_params(trial.params) or "fixed config"
        logger.info("Trial %d started on %s: %s", trial.number, worker, what)
        result = train(config, on_eval=reporter, corpus=corpora.get(config))
        outcome = _store_result(search, trial, config, result, set_attr)
        del result
    except optuna.TrialPruned as pruned:
        outcome = TrialOutcome(TrialState.PRUNED, reason=str(pruned))
    except CorpusError as error:
        # The corpus is shared by every trial, so the next ones would fail the same way.
        _finish(search, trial, TrialOutcome(TrialState.FAIL, reason=f"CorpusError: {error}"),
                reporter, set_attr, storage_call, started)
        raise
    except StorageError:
        # The database stayed away: end the worker and leave the trial RUNNING, so its heartbeat
        # stops and another worker retries it with the same parameters.
        raise
    except MoaSearchError as error:
        outcome = TrialOutcome(TrialState.FAIL, reason=f"{type(error).__name__}: {error}")
    except Exception as error:
        if not _is_out_of_memory(error):
            _finish(search, trial, TrialOutcome(TrialState.FAIL, reason=f"{type(error).__name__}: {error}"),
                    reporter, set_attr, storage_call, started)
            raise
        out_of_memory = True
        outcome = TrialOutcome(TrialState.FAIL, reason=f"out of memory on {device or 'the default device'}: "
                                                        f"{str(error).splitlines()[0] if str(error) else type(error).__name__}")
    if out_of_memory:
        # Outside the except block the exception's frames, which held the model and batches, are gone,
        # so a full collection frees them before the next trial allocates. Other outcomes skip it,
        # because it can take seconds.
        _free_memory()
    outcome = dataclasses.replace(outcome, baseline=baseline)
    _finish(search, trial, outcome, reporter, set_attr, storage_call, started)
    return outcome


def _store_result(search: SearchStudy, trial: optuna.Trial, config: RunConfig, result: TrainResult,
                  set_attr: Callable[[str, Any], Any]) -> TrialOutcome:
    metrics = {
        "val_loss": result.val_loss, "best_val_loss": result.best_val_loss, "train_loss": result.train_loss,
        "tokens": result.tokens, "tokens_per_second": result.tokens_per_second,
        "wall_seconds": result.wall_seconds, "steps": result.steps, "params": dict(result.params),
        "device": result.device,
    }
    set_attr(records.METRICS, metrics)
    set_attr(records.CURVE, [_curve_entry(point) for point in result.curve])
    set_attr(records.GATE_USAGE, result.gate_usage)
    set_attr(records.ARTIFACT_DIR, save_model(search.name, trial.number, config, result.model))
    values = objective_values(search.settings.objectives, result)
    if not all(math.isfinite(value) for value in values):
        return TrialOutcome(TrialState.FAIL, reason=f"non-finite objective values {values}")
    return TrialOutcome(TrialState.COMPLETE, values=values)


def _finish(search: SearchStudy, trial: optuna.Trial, outcome: TrialOutcome, reporter: _Reporter,
            set_attr: Callable[[str, Any], Any], storage_call: StorageCall, started: float) -> None:
    """Store the fail reason and the curve of an unfinished run, release memory, tell the study."""
    if outcome.state != TrialState.COMPLETE:
        set_attr(records.FAIL_REASON, outcome.reason)
        set_attr(records.CURVE, reporter.curve)
    values = outcome.values if outcome.state == TrialState.COMPLETE else None
    storage_call(lambda: search.study.tell(trial, values, state=outcome.state, skip_if_finished=True),
                 "finish the trial")
    seconds = time.perf_counter() - started
    if outcome.state == TrialState.COMPLETE:
        shown = ", ".join(f"{name} {value:.4g}" for name, value in zip(search.settings.objectives, outcome.values or []))
        logger.info("Trial %d complete in %.1f s: %s", trial.number, seconds, shown)
    elif outcome.state == TrialState.PRUNED:
        logger.info("Trial %d %s (%.1f s)", trial.number, outcome.reason, seconds)
    else:
        logger.warning("Trial %d failed after %.1f s: %s", trial.number, seconds, outcome.reason)
