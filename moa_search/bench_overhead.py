"""Search overhead: the share of a study's wall time spent outside training.

A real study runs through the same loop as `moa-search run` with one worker (`worker.run_trials`:
create the trial, sample the config, store the records, save model.pt, tell the study). The
measurement wraps the trainer's `train` as the trial runner calls it and times each call. Time
inside the trainer's `on_eval` callback (storing progress, reporting the validation loss, asking
the pruner) is search work, so it is moved from training to overhead. The corpus load is timed
on its own: a worker does it once and every later trial reuses the corpus.

overhead = study loop wall time - (time in train() - time in on_eval), as a share of the loop
wall time; per trial, the same with the trial's start and end times as Optuna stored them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


@dataclass
class _TrainTiming:
    train_seconds: float = 0.0
    on_eval_seconds: float = 0.0


@dataclass
class _Timings:
    trains: list[_TrainTiming] = dataclasses.field(default_factory=list)
    corpus_seconds: float = 0.0


@contextlib.contextmanager
def _timed_trial_runner(timings: _Timings) -> Iterator[None]:
    """Time every train() call and corpus load of the trial runner; restore both on exit."""
    from moa_search import trial_run

    original_train = trial_run.train
    original_get = trial_run.CorpusCache.get

    def timed_train(config, *, on_eval=None, **kwargs):
        timing = _TrainTiming()
        timings.trains.append(timing)

        def timed_on_eval(point):
            start = time.perf_counter()
            try:
                on_eval(point)
            finally:
                timing.on_eval_seconds += time.perf_counter() - start

        start = time.perf_counter()
        try:
            return original_train(config, on_eval=timed_on_eval if on_eval else None, **kwargs)
        finally:
            timing.train_seconds = time.perf_counter() - start

    def timed_get(self, config):
        start = time.perf_counter()
        try:
            return original_get(self, config)
        finally:
            timings.corpus_seconds += time.perf_counter() - start

    trial_run.train = timed_train
    trial_run.CorpusCache.get = timed_get
    try:
        yield
    finally:
        trial_run.train = original_train
        trial_run.CorpusCache.get = original_get


def measure_search_overhead(space_path: str | Path, storage_url: str, *, n_trials: int,
                            study_name: str) -> dict[str, Any]:
    """Create the study `study_name` for the space in `storage_url`, run it with one worker until
    `n_trials` search trials (plus the GELU and SwiGLU baselines) are finished, and return the
    overhead figures: totals, shares and one row per trial."""
    from moa_search.space import load_space
    from moa_search.storage import open_storage
    from moa_search.study import create_or_resume
    from moa_search.worker import run_trials

    space = load_space(space_path)
    settings = space.settings.with_overrides(name=study_name, n_trials=n_trials)
    search = create_or_resume(open_storage(storage_url), space, settings, study_name=study_name,
                              source=Path(space_path).read_text(encoding="utf-8"))
    timings = _Timings()
    with _timed_trial_runner(timings):
        start = time.perf_counter()
        summary = run_trials(search, storage_url)
        loop_seconds = time.perf_counter() - start

    trials = {trial.number: trial for trial in search.study.get_trials(deepcopy=False)}
    rows = []
    for number, timing in zip(summary.trial_numbers, timings.trains):
        trial = trials[number]
        trial_seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        training = timing.train_seconds - timing.on_eval_seconds
        rows.append({
            "number": number,
            "state": trial.state.name,
            "trial_seconds": trial_seconds,
            "train_seconds": training,
            "on_eval_seconds": timing.on_eval_seconds,
            "outside_seconds": trial_seconds - training,
            "overhead_share": (trial_seconds - training) / trial_seconds,
        })
    return _summary(rows, timings, loop_seconds, search.name)


def _summary(rows: list[dict[str, Any]], timings: _Timings, loop_seconds: float, study_name: str) -> dict[str, Any]:
    training = sum(t.train_seconds - t.on_eval_seconds for t in timings.trains)
    outside = loop_seconds - training
    return {
        "study": study_name,
        "trials": len(rows),
        "loop_seconds": loop_seconds,
        "train_seconds": training,
        "on_eval_seconds": sum(t.on_eval_seconds for t in timings.trains),
        "corpus_seconds": timings.corpus_seconds,
        "outside_seconds": outside,
        "overhead_share": outside / loop_seconds,
        "overhead_share_without_corpus_load": (outside - timings.corpus_seconds) / (loop_seconds - timings.corpus_seconds),
        "median_trial_overhead_share": statistics.median(row["overhead_share"] for row in rows) if rows else None,
        "per_trial": rows,
    }
