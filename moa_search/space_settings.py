"""The optional `study:` section of a search space: how a study over the space runs.

Command-line flags override these settings (`StudySettings.with_overrides`); both paths go through
the same validation, so a flag and a file value obey the same rules.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from moa_search.errors import ConfigError
from moa_search.space_params import suggest_close

SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsga2")
PRUNERS = ("hyperband", "median", "none")
# Objective name -> Optuna direction. The first objective of every study is val_loss.
OBJECTIVES = {
    "val_loss": "minimize",
    "params": "minimize",
    "tokens_per_second": "maximize",
    "wall_seconds": "minimize",
}
# Study names become folder names under the results folder.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class StudySettings:
    """Study settings from a space file's `study:` section; None means "not set" (CLI or default decides).

    pruner None resolves to hyperband for one objective and to none for several objectives or for
    NSGA-II (`resolved_pruner`), because Optuna prunes single-objective studies only and NSGA-II
    breeds from complete trials only.
    """

    name: str | None = None
    n_trials: int | None = None
    timeout_seconds: float | None = None
    sampler: str = "tpe"
    pruner: str | None = None
    seed: int | None = None
    objectives: tuple[str, ...] = ("val_loss",)

    @property
    def directions(self) -> list[str]:
        """Optuna directions, one per objective."""
        return [OBJECTIVES[name] for name in self.objectives]

    @property
    def resolved_pruner(self) -> str:
        if self.pruner is not None:
            return self.pruner
        if len(self.objectives) > 1 or self.sampler == "nsga2":
            return "none"
        return "hyperband"

    def with_overrides(self, **values: Any) -> StudySettings:
        """Return a copy with the given settings replaced (None values are ignored), validated."""
        updates = {key: value for key, value in values.items() if value is not None}
        return study_settings_from_dict({**self.to_dict(), **updates}, key_prefix="")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["objectives"] = list(self.objectives)
        return data


def study_settings_from_dict(values: Any, key_prefix: str = "study.") -> StudySettings:
    """Build and validate StudySettings; errors name the key as `study.KEY` (or bare KEY for flags)."""
    if values is None:
        return StudySettings()
    if not isinstance(values, dict):
        raise ConfigError(f"study: must be a mapping of study settings, got {values!r}")
    fields = [field.name for field in dataclasses.fields(StudySettings)]
    for key in values:
        if key not in fields:
            raise ConfigError(
                f"{key_prefix}{key}: unknown study setting{suggest_close(str(key), fields)}; "
                f"valid settings: {', '.join(fields)}"
            )
    settings = StudySettings(**{**StudySettings().to_dict(), **values})
    _validate(settings, key_prefix)
    objectives = settings.objectives
    timeout = settings.timeout_seconds
    return dataclasses.replace(
        settings,
        objectives=tuple([objectives] if isinstance(objectives, str) else objectives),
        timeout_seconds=None if timeout is None else float(timeout),
    )


def _validate(settings: StudySettings, prefix: str) -> None:
    name, n_trials, timeout, seed = settings.name, settings.n_trials, settings.timeout_seconds, settings.seed
    if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
        raise ConfigError(
            f"{prefix}name: must be letters, digits, '.', '_' or '-' (it names a folder), got {name!r}"
        )
    if n_trials is not None and (not _is_int(n_trials) or n_trials < 1):
        raise ConfigError(f"{prefix}n_trials: must be an integer >= 1 or null, got {n_trials!r}")
    if timeout is not None and (not _is_number(timeout) or not math.isfinite(timeout) or timeout <= 0):
        raise ConfigError(f"{prefix}timeout_seconds: must be a number of seconds > 0 or null, got {timeout!r}")
    if seed is not None and not _is_int(seed):
        raise ConfigError(f"{prefix}seed: must be an integer or null, got {seed!r}")
    if settings.sampler not in SAMPLERS:
        raise ConfigError(
            f"{prefix}sampler: must be one of {', '.join(SAMPLERS)}, got {settings.sampler!r}"
            f"{suggest_close(str(settings.sampler), SAMPLERS)}"
        )
    if settings.pruner is not None and settings.pruner not in PRUNERS:
        raise ConfigError(
            f"{prefix}pruner: must be one of {', '.join(PRUNERS)}, got {settings.pruner!r}"
            f"{suggest_close(str(settings.pruner), PRUNERS)}"
        )
    _validate_objectives(settings, prefix)


def _validate_objectives(settings: StudySettings, prefix: str) -> None:
    objectives = settings.objectives
    objectives = [objectives] if isinstance(objectives, str) else objectives
    if not isinstance(objectives, (list, tuple)) or not objectives:
        raise ConfigError(f"{prefix}objectives: must be a non-empty list such as [val_loss, params], got {objectives!r}")
    for name in objectives:
        if name not in OBJECTIVES:
            raise ConfigError(
                f"{prefix}objectives: unknown objective {name!r}{suggest_close(str(name), list(OBJECTIVES))}; "
                f"valid objectives: {', '.join(OBJECTIVES)}"
            )
    if objectives[0] != "val_loss":
        raise ConfigError(f"{prefix}objectives: the first objective must be val_loss, got {list(objectives)}")
    if len(set(objectives)) != len(objectives):
        raise ConfigError(f"{prefix}objectives: each objective may appear once, got {list(objectives)}")
    if len(objectives) > 1:
        if settings.pruner not in (None, "none"):
            raise ConfigError(
                f"{prefix}pruner: Optuna cannot prune a multi-objective study ({', '.join(objectives)}), "
                f"got pruner {settings.pruner}; use pruner none or a single objective"
            )
        if settings.sampler == "cmaes":
            raise ConfigError(
                f"{prefix}sampler: cmaes optimises a single objective, got {len(objectives)} objectives; "
                "use nsga2 or tpe for several objectives"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
