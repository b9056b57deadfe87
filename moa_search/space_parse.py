"""Parsing of a search space document into study settings, fixed values and search dimensions.

`parse_document` reads the plain data of a YAML document; `SearchSpace` (moa_search.space) then
validates the combination. Every error message starts with the dotted key it concerns, and
`locate_error` prefixes it with the file and line of that key.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from moa_search.config import DataConfig, FFNConfig, ModelConfig, TrainConfig
from moa_search.errors import ConfigError
from moa_search.space_params import Dimension, is_dimension_spec, parse_dimension, suggest_close
from moa_search.space_settings import StudySettings, study_settings_from_dict
from moa_search.yamlio import YamlDocument

SECTION_CLASSES: dict[str, type] = {"model": ModelConfig, "ffn": FFNConfig, "data": DataConfig, "train": TrainConfig}
TOP_LEVEL_KEYS = ("study", "model", "ffn", "ffn_per_layer", "data", "train")
# Suggested first in an FFN section because the conditional settings depend on them.
_FFN_FIRST = ("bank", "kind", "type")
# PyYAML (YAML 1.1) reads these words as booleans, but under YAML 1.2 they are text.
_YAML11_BOOLEAN_WORDS = {"yes", "no", "on", "off", "y", "n"}
_KEY_RE = re.compile(r"^[A-Za-z0-9_.]+")
_DOTTED_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+")


def parse_document(data: dict[str, Any]) -> tuple[StudySettings, dict[str, dict[str, Any]], list[Dimension]]:
    """Split a space document into study settings, fixed values by section and dimensions in suggestion order."""
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
    return settings, fixed, dimensions


def _sections(data: dict[str, Any]) -> list[tuple[str, type, Any]]:
    """Return (section key, config class, raw values) in suggestion order: per-layer FFNs after ffn."""
    sections = [(name, cls, data.get(name)) for name, cls in SECTION_CLASSES.items()]
    layers = data.get("ffn_per_layer") or {}
    if not isinstance(layers, dict):
        raise ConfigError(f"ffn_per_layer: must map layer indices to FFN settings, got {layers!r}")
    per_layer: dict[int, Any] = {}
    for raw_index, values in layers.items():
        index = int(raw_index) if isinstance(raw_index, str) and raw_index.isdigit() else raw_index  # quoted "0"
        if not isinstance(index, int) or isinstance(index, bool):
            raise ConfigError(f"ffn_per_layer.{raw_index}: keys must be layer indices (0, 1, ...)")
        per_layer[index] = values
    layer_sections = [(f"ffn_per_layer.{index}", FFNConfig, per_layer[index]) for index in sorted(per_layer)]
    return [*sections[:2], *layer_sections, *sections[2:]]


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
