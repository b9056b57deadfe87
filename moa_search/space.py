"""Search spaces: YAML files in which every setting of a training run is fixed or searched.

A space file mirrors the sections of a run config (model, ffn, data, train, optional
ffn_per_layer) and adds an optional `study:` section:

    study:                        # optional; command-line flags override each setting
      name: quick                 # default: the file name without .yaml
      n_trials: 8                 # finished search trials in total; baselines come on top
      timeout_seconds: 600
      sampler: tpe                # tpe | random | grid | cmaes | nsga2
      pruner: hyperband           # hyperband | median | none (default hyperband; none for several objectives)
      seed: 0
      objectives: [val_loss]      # val_loss first, then optionally params, tokens_per_second, wall_seconds
    model:
      d_model: 64                 # a fixed value
      n_layers: {choices: [2, 4]} # a search dimension: one of the listed values
    ffn:
      kind: {choices: [la, moa]}
      bank: {from: [relu, relu2, gelu, silu], size: {low: 1, high: 3}}
      temperature: {low: 0.3, high: 3.0, log: true}
      top_k: {choices: [null, 1, 2]}
    train:
      lr: {low: 1e-3, high: 1e-2, log: true}

Rules:
- A value written as a mapping is a search dimension, either `{choices: [...]}` or a range
  `{low, high, log, step}`. Any other value is fixed, so a plain list (a fixed bank) is never taken
  for choices. Integer settings take integer ranges (suggest_int) and number settings sample floats.
- The bank is fixed (`bank: [relu, gelu]`), one of explicit banks (`{choices: [[relu, gelu], [silu]]}`),
  or any subset of a pool of activation names with a size range (`{from: [...], size: {low, high}}`).
- Every dimension is one Optuna parameter named by its dotted key ("ffn.bank", "train.lr").
  A bank is a categorical parameter whose values are canonical bank strings ("gelu+relu+silu").
- Conditional parameters (define-by-run): gate, temperature and top_k act only in MoA layers, so they
  are suggested only when the layer's kind is moa. glu_mixing is suggested only for type glu with
  kind la or moa. A setting that is not suggested keeps its FFNConfig default.
- top_k and the bank: when either is searched, a top_k at or above the size of the sampled bank keeps
  every activation, which is dense mixing, so the run config stores top_k null. A top_k larger than
  every bank the space can produce is an error.
- Validation before any training: every fixed value, every choice and both ends of every range are
  built into a RunConfig through `config.run_config_from_dict`, so the rules live in one place. When
  the combinations of those values number at most MAX_CHECKED_COMBINATIONS, each combination is
  built too. Errors give the file, the line and the key.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import optuna

from moa_search.config import RunConfig, run_config_from_dict, run_config_to_dict
from moa_search.errors import ConfigError
from moa_search.space_diff import describe_dimension_dict, diff_spaces, space_hash
from moa_search.space_params import Dimension
from moa_search.space_parse import SECTION_CLASSES, TOP_LEVEL_KEYS, locate_error, parse_document
from moa_search.space_settings import StudySettings
from moa_search.yamlio import YamlDocument, load_yaml, parse_yaml

__all__ = [
    "MAX_CHECKED_COMBINATIONS", "SearchSpace", "StudySettings", "describe_dimension_dict", "diff_spaces",
    "load_space", "locate_error", "parse_space", "space_hash",
]

logger = logging.getLogger(__name__)

# Above this many combinations of checked values, only each value on its own is checked at load time.
MAX_CHECKED_COMBINATIONS = 2000
_MOA_ONLY = ("gate", "temperature", "top_k")


class SearchSpace:
    """A parsed, validated search space.

    base: the RunConfig with every dimension at its first choice or the middle of its range.
    settings: the `study:` section. dimensions: in suggestion order.
    """

    def __init__(self, document: YamlDocument, fixed: dict[str, dict[str, Any]], dimensions: list[Dimension],
                 settings: StudySettings) -> None:
        self.path = document.path
        self.fixed = fixed  # section ("model", "ffn_per_layer.0") -> {setting: value as written}
        self.dimensions = dimensions
        self.settings = settings
        self._document = document
        self._by_key = {dimension.key: dimension for dimension in dimensions}
        self._check_conditions()
        self.base = self._check_values()

    @property
    def study_name(self) -> str:
        """The study name from the file, else the file name without its suffix."""
        return self.settings.name or Path(self.path).stem

    # -- sampling ------------------------------------------------------------------------------

    def sample(self, trial: optuna.Trial) -> RunConfig:
        """Suggest a value for every active dimension and return the resulting RunConfig.

        Raises ConfigError when the sampled combination breaks a config rule. The load-time checks
        rule that out for spaces with at most MAX_CHECKED_COMBINATIONS combinations of checked values.
        """
        assignment = self._assign(lambda dimension: dimension.suggest(trial))
        try:
            return self.build(assignment)
        except ConfigError as error:
            raise self._locate(error) from None

    def build(self, assignment: dict[str, Any]) -> RunConfig:
        """Return the RunConfig for parameter values keyed by dimension (banks as canonical strings)."""
        from moa_search.activations import bank_from_string

        values = self._fixed_copy()
        for key, value in assignment.items():
            _set(values, key, list(bank_from_string(value)) if key.endswith(".bank") else value)
        self._resolve_top_k(values)
        try:
            return run_config_from_dict(_nest(values))
        except ConfigError as error:
            when = ", ".join(f"{key}={_show(value)}" for key, value in assignment.items())
            raise ConfigError(f"{error}" + (f" (when {when})" if when else "")) from None

    def _assign(self, choose: Callable[[Dimension], Any]) -> dict[str, Any]:
        values = self._fixed_copy()
        assignment: dict[str, Any] = {}
        for dimension in self.dimensions:
            if self._is_active(dimension.key, values):
                assignment[dimension.key] = choose(dimension)
                _set(values, dimension.key, assignment[dimension.key])
        return assignment

    def condition(self, key: str) -> str | None:
        """Describe when a dimension is suggested, or None when it always is."""
        section, name = key.rsplit(".", 1)
        if section not in self._ffn_sections():
            return None
        if name in _MOA_ONLY:
            return f"{section}.kind is moa"
        if name == "glu_mixing":
            return f"{section}.type is glu and {section}.kind is la or moa"
        return None

    def _is_active(self, key: str, values: dict[str, dict[str, Any]]) -> bool:
        section, name = key.rsplit(".", 1)
        if name in _MOA_ONLY:
            return _lookup(values, section, "kind") == "moa"
        if name == "glu_mixing":
            return _lookup(values, section, "type") == "glu" and _lookup(values, section, "kind") != "fixed"
        return True

    def _resolve_top_k(self, values: dict[str, dict[str, Any]]) -> None:
        """Store top_k as null where it is at least the bank size (keeping every activation is dense)."""
        for section in self._ffn_sections():
            if not self._top_k_searched(section):
                continue
            top_k = _lookup(values, section, "top_k")
            if top_k is not None and top_k >= _bank_size(_lookup(values, section, "bank")):
                values.setdefault(section, {})["top_k"] = None

    def _top_k_searched(self, section: str) -> bool:
        keys = {f"{section}.bank", f"{section}.top_k", "ffn.bank", "ffn.top_k"}
        return any(key in self._by_key for key in keys)

    # -- grid and size -------------------------------------------------------------------------

    def grid(self) -> dict[str, list[Any]]:
        """Return the search space for optuna's GridSampler; ConfigError when a range is continuous."""
        grid = {}
        for dimension in self.dimensions:
            values = dimension.grid_values()
            if values is None:
                raise self._locate(ConfigError(
                    f"{dimension.key}: the range {dimension.describe()} is continuous, so the grid sampler "
                    "cannot list it; give it a step or use {choices: [...]}"
                ))
            grid[dimension.key] = values
        return grid

    def size(self) -> int | None:
        """Return the number of grid points (every combination of values), or None if continuous."""
        count = 1
        for dimension in self.dimensions:
            values = dimension.grid_values()
            if values is None:
                return None
            count *= len(values)
        return count

    def distinct_size(self, limit: int = 10_000) -> int | None:
        """Return how many different run configs the grid points give, or None when continuous or over `limit`.

        Fewer than `size()` when settings are conditional (a la trial ignores the gate) or a top_k
        resolves to dense mixing.
        """
        size = self.size()
        if size is None or size > limit:
            return None
        grid = self.grid()
        configs = set()
        for combination in itertools.product(*grid.values()):
            table = dict(zip(grid, combination))
            config = self.build(self._assign(lambda dimension: table[dimension.key]))
            configs.add(json.dumps(run_config_to_dict(config), sort_keys=True))
        return len(configs)

    # -- plain form and hash -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the resolved space as JSON-safe data with flat dotted keys (saved with the study).

        "fixed" contains every setting that is not searched, defaults included, so a changed default
        is a changed space. "dimensions" maps each dimension's key to its definition.
        """
        fixed = {key: value for key, value in _flatten(run_config_to_dict(self.base)).items() if key not in self._by_key}
        for section in self._ffn_sections():
            # base has top_k resolved against the first bank; record the top_k the file wrote.
            key = f"{section}.top_k"
            if key in fixed and "top_k" in self.fixed.get(section, {}):
                fixed[key] = self.fixed[section]["top_k"]
        return {
            "fixed": dict(sorted(fixed.items())),
            "dimensions": {dimension.key: dimension.to_dict() for dimension in self.dimensions},
            "study": self.settings.to_dict(),
        }

    def hash(self) -> str:
        """Return a short hash of the fixed settings and dimensions (study settings excluded)."""
        return space_hash(self.to_dict())

    # -- validation ----------------------------------------------------------------------------

    def _check_conditions(self) -> None:
        """Reject dimensions that can never act and top_k values above every possible bank."""
        for dimension in self.dimensions:
            section, name = dimension.key.rsplit(".", 1)
            if section not in self._ffn_sections():
                continue
            kinds = self._possible(section, "kind")
            if name in _MOA_ONLY and "moa" not in kinds:
                raise ConfigError(
                    f"{dimension.key}: searched, but {section}.kind is never moa (it can be {', '.join(kinds)}); "
                    "gate, temperature and top_k act only in MoA layers, so fix this value or search kind moa"
                )
            if name == "glu_mixing" and ("glu" not in self._possible(section, "type") or kinds == ["fixed"]):
                raise ConfigError(
                    f"{dimension.key}: searched, but {section} is never a glu layer of kind la or moa, "
                    "where glu_mixing acts; fix this value or search type glu"
                )
        for section in self._ffn_sections():
            if "top_k" not in self.fixed.get(section, {}) and f"{section}.top_k" not in self._by_key:
                continue
            if not self._top_k_searched(section):
                continue  # run_config_from_dict checks a fixed top_k against a fixed bank
            largest = max(_bank_size(bank) for bank in self._possible(section, "bank"))
            too_large = [value for value in self._possible(section, "top_k") if value is not None and value > largest]
            if too_large:
                raise ConfigError(
                    f"{section}.top_k: {too_large[0]} is larger than every bank this space can sample "
                    f"(at most {largest} activations); lower it or allow larger banks"
                )

    def _check_values(self) -> RunConfig:
        """Build a RunConfig from every checked value (see the module docstring); return the base."""
        central = {dimension.key: dimension.central() for dimension in self.dimensions}
        base = self.build(self._assign(lambda dimension: central[dimension.key]))
        for dimension in self.dimensions:
            for value in dimension.representatives():
                table = {**central, dimension.key: value}
                self.build(self._assign(lambda other: table[other.key]))
        options = [dimension.representatives() for dimension in self.dimensions]
        count = math.prod(len(values) for values in options)
        if count > MAX_CHECKED_COMBINATIONS:
            logger.debug("%s: %d combinations of checked values; each value was checked on its own", self.path, count)
            return base
        seen: set[tuple] = set()
        for combination in itertools.product(*options):
            table = dict(zip(self._by_key, combination))
            assignment = self._assign(lambda dimension: table[dimension.key])
            signature = tuple(sorted((key, repr(value)) for key, value in assignment.items()))
            if signature not in seen:
                seen.add(signature)
                self.build(assignment)
        return base

    def _possible(self, section: str, name: str) -> list[Any]:
        """Return the values a setting can take: a dimension's checked values, the fixed value or the default."""
        dimension = self._by_key.get(f"{section}.{name}")
        if dimension is not None:
            return dimension.grid_values() or dimension.representatives()
        if name in self.fixed.get(section, {}):
            return [self.fixed[section][name]]
        if section.startswith("ffn_per_layer."):
            return self._possible("ffn", name)
        return [getattr(SECTION_CLASSES[section](), name)]

    def _ffn_sections(self) -> list[str]:
        layers = {key.rsplit(".", 1)[0] for key in self._by_key if key.startswith("ffn_per_layer.")}
        layers |= {section for section in self.fixed if section.startswith("ffn_per_layer.")}
        return ["ffn", *sorted(layers)]

    def _fixed_copy(self) -> dict[str, dict[str, Any]]:
        return {section: dict(values) for section, values in self.fixed.items()}

    def _locate(self, error: ConfigError) -> ConfigError:
        return locate_error(self._document, error)


# ---------------------------------------------------------------------------------------------
# Loading


def load_space(path: str | Path) -> SearchSpace:
    """Read, parse and validate a search space file; ConfigError gives the file, line and key."""
    return _space_from_document(load_yaml(path))


def parse_space(text: str, path: str = "<string>") -> SearchSpace:
    """Parse and validate a search space from YAML text (see `load_space`)."""
    return _space_from_document(parse_yaml(text, path))


def _space_from_document(document: YamlDocument) -> SearchSpace:
    data = document.data
    if not isinstance(data, dict):
        raise ConfigError(
            f"{document.path}: a search space must be a mapping of sections ({', '.join(TOP_LEVEL_KEYS)}), "
            f"got {type(data).__name__}"
        )
    try:
        settings, fixed, dimensions = parse_document(data)
        return SearchSpace(document, fixed, dimensions, settings)
    except ConfigError as error:
        raise locate_error(document, error) from None


# ---------------------------------------------------------------------------------------------
# Helpers on settings keyed by section


def _set(values: dict[str, dict[str, Any]], key: str, value: Any) -> None:
    section, name = key.rsplit(".", 1)
    values.setdefault(section, {})[name] = value


def _lookup(values: dict[str, dict[str, Any]], section: str, name: str) -> Any:
    """Return a setting's value: the section's own, the `ffn` value for per-layer FFNs, or the default."""
    if name in values.get(section, {}):
        return values[section][name]
    if section.startswith("ffn_per_layer."):
        return _lookup(values, "ffn", name)
    return getattr(SECTION_CLASSES[section](), name)


def _bank_size(bank: Any) -> int:
    return len(bank.split("+")) if isinstance(bank, str) else len(bank)


def _nest(values: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Turn {"ffn_per_layer.0": {...}} sections into the nested form run_config_from_dict reads."""
    nested: dict[str, Any] = {}
    for section, settings in values.items():
        if section.startswith("ffn_per_layer."):
            nested.setdefault("ffn_per_layer", {})[int(section.split(".")[1])] = settings
        elif settings:
            nested[section] = settings
    return nested


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _show(value: Any) -> str:
    return "null" if value is None else str(value)
