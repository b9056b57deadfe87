"""Read studies for the report commands: pick the study, load its trials, find one trial.

Every lookup failure is a StudyError with one line that names the value and the choices, so the
CLI prints it without a traceback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from moa_search.errors import StorageError, StudyError

logger = logging.getLogger(__name__)


def open_storage(storage_url: str) -> optuna.storages.BaseStorage:
    """Open an existing storage for reading; raises StorageError for a URL that cannot be opened.

    A missing SQLite file is an error here, because opening it would create an empty database
    where the user probably mistyped a path.
    """
    from sqlalchemy.engine import make_url

    from moa_search.storage import is_sqlite, open_storage as open_study_storage, redact_url

    if is_sqlite(storage_url):
        database = make_url(storage_url).database
        if database not in (None, "", ":memory:") and not Path(database).is_file():
            raise StorageError(f"no study storage at {database}; run `moa-search run SPACE.yaml` first, "
                               "or pass --storage (or set MOA_SEARCH_STORAGE) to point at an existing one")
    logger.debug("reading studies from %s", redact_url(storage_url))
    # Readers send no heartbeats: only the process that runs a trial may keep it alive.
    return open_study_storage(storage_url, heartbeat=False)


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """Return the names of all studies in the storage, sorted."""
    return sorted(summary.study_name for summary in optuna.get_all_study_summaries(storage, include_best_trial=False))


def resolve_study_name(storage: optuna.storages.BaseStorage, study_name: str | None) -> str:
    """Return `study_name` if the storage contains it, or with None the only study in the storage."""
    names = study_names(storage)
    if study_name is not None:
        if study_name not in names:
            listing = ", ".join(names) if names else "none"
            raise StudyError(f"study {study_name!r} not found in the storage; studies there: {listing}")
        return study_name
    if len(names) == 1:
        return names[0]
    if not names:
        raise StudyError("the storage contains no study; start one with `moa-search run SPACE.yaml` or pass --storage")
    raise StudyError(f"the storage contains {len(names)} studies, so choose one with --study: {', '.join(names)}")


def load_study(storage_url: str, study_name: str | None) -> optuna.Study:
    """Open the storage and load the named study (or the only one)."""
    storage = open_storage(storage_url)
    name = resolve_study_name(storage, study_name)
    return optuna.load_study(study_name=name, storage=storage)


def require_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Return the study's trials; a study without any trial raises StudyError."""
    trials = study.get_trials(deepcopy=False)
    if not trials:
        raise StudyError(f"study {study.study_name!r} has no trials yet; run `moa-search run` or wait for a worker")
    return trials


def find_trial(study: optuna.Study, which: str | None) -> FrozenTrial:
    """Return the trial numbered `which`, or the completed trial with the lowest val loss for "best"/None."""
    trials = require_trials(study)
    if which is None or which == "best":
        completed = [trial for trial in trials if trial.state == TrialState.COMPLETE and trial.values]
        if not completed:
            raise StudyError(f"study {study.study_name!r} has no completed trial yet, so there is no best trial")
        return min(completed, key=lambda trial: (trial.values[0], trial.number))
    try:
        number = int(which)
    except ValueError:
        raise StudyError(f"trial must be a trial number or 'best', got {which!r}") from None
    for trial in trials:
        if trial.number == number:
            return trial
    numbers = [trial.number for trial in trials]
    raise StudyError(f"trial {number} not found in study {study.study_name!r}; trial numbers run from "
                     f"{min(numbers)} to {max(numbers)}")


@dataclass
class StudyListing:
    """One line of `moa-search studies`."""

    name: str
    counts: dict[str, int]
    best_val_loss: float | None
    best_trial: int | None
    created: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-safe form (created as ISO 8601)."""
        return {"name": self.name, "counts": self.counts, "best_val_loss": self.best_val_loss,
                "best_trial": self.best_trial, "created": self.created.isoformat() if self.created else None}


def list_studies(storage_url: str) -> list[StudyListing]:
    """Return name, trial counts by state, best val loss and creation time of every study."""
    storage = open_storage(storage_url)
    listings = []
    for summary in sorted(optuna.get_all_study_summaries(storage, include_best_trial=False),
                          key=lambda item: item.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = {state.name.lower(): 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                                      TrialState.RUNNING, TrialState.WAITING)}
        for trial in trials:
            counts[trial.state.name.lower()] += 1
        completed = [trial for trial in trials if trial.state == TrialState.COMPLETE and trial.values]
        best = min(completed, key=lambda trial: trial.values[0]) if completed else None
        listings.append(StudyListing(
            name=summary.study_name, counts=counts,
            best_val_loss=best.values[0] if best else None, best_trial=best.number if best else None,
            created=summary.datetime_start or _first_start(trials),
        ))
    return listings


def _first_start(trials: list[FrozenTrial]) -> datetime | None:
    starts = [trial.datetime_start for trial in trials if trial.datetime_start is not None]
    return min(starts) if starts else None


def delete_study(storage_url: str, study_name: str) -> int:
    """Delete a study and return how many trials it had; an unknown name raises StudyError."""
    storage = open_storage(storage_url)
    name = resolve_study_name(storage, study_name)
    n_trials = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    optuna.delete_study(study_name=name, storage=storage)
    logger.info("deleted study %s with %d trials", name, n_trials)
    return n_trials
