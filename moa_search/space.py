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

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable

import optuna

from moa_search.config import DataConfig, FFNConfig, ModelConfig, RunConfig, TrainConfig, run_config_from_dict, run_config_to_dict
from moa_search.errors import ConfigError
from moa_search.space_params import Dimension, Range, is_dimension_spec, parse_dimension, suggest_close
from moa_search.space_settings import StudySettings, study_settings_from_dict
from moa_search.yamlio import YamlDocument, load_yaml, parse_yaml

logger = logging.getLogger(__name__)

SECTION_CLASSES: dict[str, type] = {"model": ModelConfig, "ffn": FFNConfig, "data": DataConfig, "train": TrainConfig}
TOP_LEVEL_KEYS = ("study", "model", "ffn", "ffn_per_layer", "data", "train")
# Above this many combinations of checked values, only each value on its own is checked at load time.
MAX_CHECKED_COMBINATIONS = 2000
_MOA_ONLY = ("gate", "temperature", "top_k")
# Suggested first in an FFN section because the conditional settings depend on them.
_FFN_FIRST = ("bank", "kind", "type")
# PyYAML (YAML 1.1) reads these words as booleans, but under YAML 1.2 they are text.
_YAML11_BOOLEAN_WORDS = {"yes", "no", "on", "off", "y", "n"}
_KEY_RE = re.compile(r"^[A-Za-z0-9_.]+")
_DOTTED_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+")


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
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                raise ConfigError(
                    f"{key}: unknown section{suggest_close(str(key), TOP_LEVEL_KEYS)}; "
                    f"valid sections: {', '.join(TOP_LEVEL_KEYS)}"
                )
        settings = study_settings_from_dict(data.get("study"))
        fixed: dict[str, dict[str, Any]] = {}
        dimensions: list[Dimension] = []
        for section, cls, values in _sections(data):
            fixed[section], section_dimensions = _parse_section(section, cls, values)
            dimensions.extend(section_dimensions)
        return SearchSpace(document, fixed, dimensions, settings)
    except ConfigError as error:
        raise locate_error(document, error) from None


def _sections(data: dict[str, Any]) -> list[tuple[str, type, Any]]:
    """Return (section key, config class, raw values) in suggestion order: per-layer FFNs after ffn."""
    sections = [(name, cls, data.get(name)) for name, cls in SECTION_CLASSES.items()]
    layers = data.get("ffn_per_layer") or {}
    if not isinstance(layers, dict):
        raise ConfigError(f"ffn_per_layer: must map layer indices to FFN settings, got {layers!r}")
    per_layer = []
    for raw_index, values in layers.items():
        if isinstance(raw_index, str) and raw_index.isdigit():
            raw_index = int(raw_index)  # a quoted index such as "0"
        if not isinstance(raw_index, int) or isinstance(raw_index, bool):
            raise ConfigError(f"ffn_per_layer.{raw_index}: keys must be layer indices (0, 1, ...)")
        per_layer.append((f"ffn_per_layer.{raw_index}", FFNConfig, values))
    return [*sections[:2], *sorted(per_layer), *sections[2:]]


def _parse_section(section: str, cls: type, values: Any) -> tuple[dict[str, Any], list[Dimension]]:
    if values is None:
        return {}, []
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: must be a mapping of settings, got {values!r}")
    fields = {field.name: str(field.type) for field in dataclasses.fields(cls)}
    fixed: dict[str, Any] = {}
    dimensions: list[Dimension] = []
    for name, value in values.items():
        key = f"{section}.{name}"
        if name not in fields:
            raise ConfigError(
                f"{key}: unknown setting{suggest_close(str(name), list(fields))}; "
                f"valid settings of {section}: {', '.join(fields)}"
            )
        if is_dimension_spec(value):
            dimension = parse_dimension(key, value, fields[name])
            if fields[name] == "bool":
                for choice in value.get("choices", []):
                    _check_boolean_word(f"{key}.choices", choice)
            dimensions.append(dimension)
        else:
            if fields[name] == "bool":
                _check_boolean_word(key, value)
            fixed[name] = value.split("+") if name == "bank" and isinstance(value, str) else value
    if cls is FFNConfig:
        dimensions.sort(key=lambda dimension: _FFN_FIRST.index(dimension.key.rsplit(".", 1)[1])
                        if dimension.key.rsplit(".", 1)[1] in _FFN_FIRST else len(_FFN_FIRST))
    return fixed, dimensions


def _check_boolean_word(key: str, value: Any) -> None:
    if isinstance(value, str) and value.lower() in _YAML11_BOOLEAN_WORDS:
        raise ConfigError(
            f"{key}: {value!r} is text under YAML 1.2, which moa-search reads (YAML 1.1 tools read it as a "
            "boolean); write true or false"
        )


def locate_error(document: YamlDocument, error: ConfigError) -> ConfigError:
    """Prefix an error by the FILE:LINE of the key it names.

    The message starts with a key. When the file does not write that key (a default broke a rule
    together with a searched value, such as d_model and a searched n_heads), the first other key of
    the message that the file writes gives the line.
    """
    message = str(error)
    match = _KEY_RE.match(message)
    first = match.group(0) if match else ""
    others = [key for key in _DOTTED_KEY_RE.findall(message) if key in document.lines]
    key = first if first in document.lines or not others else others[0]
    where = document.where(key)
    return ConfigError(f"{where}: {message}")


# ---------------------------------------------------------------------------------------------
# Plain-data helpers


def space_hash(space: dict[str, Any]) -> str:
    """Return the hash of a `SearchSpace.to_dict()` result, stable across JSON round trips."""
    material = {"fixed": space["fixed"], "dimensions": space["dimensions"]}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def diff_spaces(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """List the changes between two `SearchSpace.to_dict()` results, one readable line per key."""
    keys = sorted({*old["fixed"], *new["fixed"], *old["dimensions"], *new["dimensions"]})
    changes = []
    for key in keys:
        before, after = _describe_entry(old, key), _describe_entry(new, key)
        if before != after:
            changes.append(f"{key}: {before} -> {after}")
    return changes


def _describe_entry(space: dict[str, Any], key: str) -> str:
    if key in space["dimensions"]:
        return "searched " + describe_dimension_dict(space["dimensions"][key])
    if key in space["fixed"]:
        return f"fixed {json.dumps(space['fixed'][key])}"
    return "not set"


def describe_dimension_dict(data: dict[str, Any]) -> str:
    """Describe a dimension from its plain form, e.g. "0.001 .. 0.01 (log)" or "choices [1, 2]"."""
    if "from" in data:
        size = data["size"]
        return f"banks from {'+'.join(data['from'])} with {size['low']}..{size['high']} activations"
    if "choices" in data:
        return f"choices {json.dumps(data['choices'])}"
    text = f"{data['low']} .. {data['high']}"
    if data.get("step") is not None:
        text += f" step {data['step']}"
    return text + (" (log)" if data.get("log") else "")


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
