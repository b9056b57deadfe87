"""Frozen configs for one training run, built and validated from plain dicts or YAML.

A `RunConfig` is everything one trial trains: the model (`ModelConfig`), its feedforward layers
(`FFNConfig`, optionally overridden per layer), the corpus (`DataConfig`) and the optimisation
(`TrainConfig`). Each config is a frozen dataclass. `run_config_from_dict` validates user input and
raises `ConfigError` naming the key, the value and the rule. `run_config_to_dict` gives the plain
form that is stored with every trial and reloads to an equal config.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from moa_search.errors import ConfigError

FFN_KINDS = ("fixed", "la", "moa")
FFN_TYPES = ("mlp", "glu")
GLU_MIXING = ("one", "bi")
GATE_FUNCTIONS = ("sigmoid", "softmax", "tanh")
SCHEDULES = ("cosine", "wsd")


@dataclass(frozen=True)
class FFNConfig:
    """One feedforward layer: which activations it mixes and how.

    kind: "fixed" (one activation), "la" (learned scalar weights shared by all tokens) or "moa"
        (per-token gate weights computed from the layer input).
    type: "mlp" (Type-I, W2 σ(W1 x)) or "glu" (Type-II, W3 (σ(W1 x) ⊙ W2 x)).
    bank: names of dictionary activations, each once; exactly one for kind "fixed".
    gate: gate function for MoA: "sigmoid" (reported default), "softmax" or "tanh".
    temperature: gate logits are divided by it; must be > 0.
    top_k: keep the k largest gate weights per token; None (or the bank size) is dense.
    glu_mixing: for Type-II LA/MoA, mix only the σ(W1 x) branch ("one") or both branches ("bi").
    compile: run the mixing through torch.compile.
    """

    kind: str = "moa"
    type: str = "mlp"
    bank: tuple[str, ...] = ("relu", "relu2", "gelu", "silu")
    gate: str = "sigmoid"
    temperature: float = 1.0
    top_k: int | None = None
    glu_mixing: str = "bi"
    compile: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only Transformer shape. d_hidden None means 4·d_model (mlp) or 8/3·d_model rounded
    up to a multiple of 8 (glu), the usual way to keep the two types at similar parameter counts."""

    vocab_size: int = 256
    context_length: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_hidden: int | None = None
    n_experts: int = 0  # 0: dense FFN; >1: mixture of experts, each expert an FFN from FFNConfig
    top_k_experts: int = 2
    moe_aux_weight: float = 0.01  # weight of the load-balancing loss
    dropout: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    """The training text and how it is tokenised and split.

    corpus: "builtin" (offline text shipped with Python), "hub:NAME" (a Hugging Face dataset), or
        one or more local file paths or globs (.txt, .jsonl/.json, .csv, .parquet).
    """

    corpus: str | tuple[str, ...] = "builtin"
    hub_config: str | None = None
    hub_split: str = "train"
    text_column: str = "text"
    format: str = "auto"  # auto (from the file suffix), text, jsonl, csv, parquet
    tokenizer: str = "byte"
    val_fraction: float = 0.05
    max_documents: int | None = None
    decode_errors: str = "strict"  # strict: error with file and offset; replace: U+FFFD
    cache_dir: str | None = None  # default: <results dir>/cache


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and budget. The budget is max_tokens when set, else max_steps."""

    batch_size: int = 16
    max_steps: int | None = 300
    max_tokens: int | None = None
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 30
    schedule: str = "cosine"
    decay_fraction: float = 0.2  # share of steps in the final decay of the wsd schedule
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_batches: int = 8
    device: str = "auto"  # auto: cuda if available, else cpu
    compile: bool = False
    seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; stored with every trial."""

    model: ModelConfig = field(default_factory=ModelConfig)
    ffn: FFNConfig = field(default_factory=FFNConfig)
    ffn_per_layer: Mapping[int, FFNConfig] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def ffn_for_layer(self, index: int) -> FFNConfig:
        """Return the FFN config of block `index`: its override if one is set, else `ffn`."""
        return self.ffn_per_layer.get(index, self.ffn)


_SECTIONS = {"model": ModelConfig, "ffn": FFNConfig, "data": DataConfig, "train": TrainConfig}


def resolved_d_hidden(model: ModelConfig, ffn: FFNConfig) -> int:
    """Return the hidden width of an FFN, applying the default for its type when d_hidden is None."""
    if model.d_hidden is not None:
        return model.d_hidden
    if ffn.type == "glu":
        return int(math.ceil(8 * model.d_model / 3 / 8) * 8)
    return 4 * model.d_model


# ---------------------------------------------------------------------------------------------
# Parsing and validation


def _suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise ConfigError naming the key."""
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required, got null")
    base = annotation.replace(" | None", "")
    if base == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be true or false, got {value!r}; moa-search reads YAML 1.2, where "
                          "yes, no, on and off are strings, so write true or false")
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return int(value)
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"{key}: must be a number, got {value!r}; write numbers unquoted, e.g. 3e-4"
            )
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}; quote it if YAML read it as another type")
        return value
    if base == "tuple[str, ...]":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{key}: must be a list of names, got {value!r}")
        return tuple(items)
    if base == "str | tuple[str, ...]":
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and value and all(isinstance(item, str) for item in value):
            return value[0] if len(value) == 1 else tuple(value)
        raise ConfigError(f"{key}: must be a string or a non-empty list of strings, got {value!r}")
    raise AssertionError(f"unhandled annotation {annotation} for {key}")


def _section_from_dict(name: str, cls: type, values: Any, base: Any = None) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name}: must be a mapping of settings, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    updates = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"{name}.{key}: unknown setting{_suggest(str(key), list(fields))}; "
                f"valid settings of '{name}': {', '.join(fields)}"
            )
        updates[key] = _coerce(f"{name}.{key}", value, str(fields[key].type))
    return dataclasses.replace(base if base is not None else cls(), **updates)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}{_suggest(value, choices)}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_ffn(ffn: FFNConfig, key: str = "ffn") -> None:
    """Raise ConfigError when an FFN config breaks a rule (names the key, the value and the rule)."""
    from moa_search.activations import check_bank  # late import: activations imports torch

    _check_choice(f"{key}.kind", ffn.kind, FFN_KINDS)
    _check_choice(f"{key}.type", ffn.type, FFN_TYPES)
    _check_choice(f"{key}.gate", ffn.gate, GATE_FUNCTIONS)
    _check_choice(f"{key}.glu_mixing", ffn.glu_mixing, GLU_MIXING)
    check_bank(ffn.bank, key=f"{key}.bank")
    if ffn.kind == "fixed":
        _check(len(ffn.bank) == 1, f"{key}.bank: a fixed FFN uses exactly one activation, got {list(ffn.bank)}; use kind la or moa to mix several")
    _check(math.isfinite(ffn.temperature) and ffn.temperature > 0,
           f"{key}.temperature: must be > 0 and finite, got {ffn.temperature}")
    if ffn.top_k is not None:
        _check(1 <= ffn.top_k <= len(ffn.bank),
               f"{key}.top_k: must be between 1 and the bank size {len(ffn.bank)}, got {ffn.top_k}; use null for dense mixing")


def validate_run_config(config: RunConfig) -> None:
    """Raise ConfigError when any setting of a run config breaks a rule."""
    model, train, data = config.model, config.train, config.data
    validate_ffn(config.ffn)
    for index, layer_ffn in config.ffn_per_layer.items():
        _check(0 <= index < model.n_layers,
               f"ffn_per_layer.{index}: layer index must be in 0..{model.n_layers - 1} (model.n_layers = {model.n_layers})")
        validate_ffn(layer_ffn, key=f"ffn_per_layer.{index}")

    for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
        _check(getattr(model, name) >= 1, f"model.{name}: must be >= 1, got {getattr(model, name)}")
    _check(model.d_model % model.n_heads == 0,
           f"model.d_model: must be divisible by model.n_heads ({model.n_heads}), got {model.d_model}")
    _check((model.d_model // model.n_heads) % 2 == 0,
           f"model.d_model / model.n_heads: the head size must be even for rotary embeddings, got {model.d_model // model.n_heads}")
    _check(model.d_hidden is None or model.d_hidden >= 1, f"model.d_hidden: must be >= 1 or null, got {model.d_hidden}")
    _check(model.n_experts == 0 or model.n_experts >= 2, f"model.n_experts: must be 0 (dense) or >= 2, got {model.n_experts}")
    if model.n_experts:
        _check(1 <= model.top_k_experts <= model.n_experts,
               f"model.top_k_experts: must be between 1 and model.n_experts ({model.n_experts}), got {model.top_k_experts}")
    _check(model.moe_aux_weight >= 0, f"model.moe_aux_weight: must be >= 0, got {model.moe_aux_weight}")
    _check(0 <= model.dropout < 1, f"model.dropout: must be in [0, 1), got {model.dropout}")

    _check(0 < data.val_fraction < 0.5, f"data.val_fraction: must be in (0, 0.5), got {data.val_fraction}")
    _check_choice("data.format", data.format, ("auto", "text", "jsonl", "csv", "parquet"))
    _check_choice("data.decode_errors", data.decode_errors, ("strict", "replace"))
    _check(data.max_documents is None or data.max_documents >= 1,
           f"data.max_documents: must be >= 1 or null, got {data.max_documents}")

    _check(train.batch_size >= 1, f"train.batch_size: must be >= 1, got {train.batch_size}")
    _check(train.max_steps is not None or train.max_tokens is not None,
           "train: set max_steps or max_tokens, the training budget")
    _check(train.max_steps is None or train.max_steps >= 1, f"train.max_steps: must be >= 1, got {train.max_steps}")
    _check(train.max_tokens is None or train.max_tokens >= train.batch_size * model.context_length,
           f"train.max_tokens: must be at least one batch ({train.batch_size * model.context_length} tokens), got {train.max_tokens}")
    _check(math.isfinite(train.lr) and train.lr > 0, f"train.lr: must be > 0, got {train.lr}")
    _check(0 <= train.min_lr_ratio <= 1, f"train.min_lr_ratio: must be in [0, 1], got {train.min_lr_ratio}")
    _check(train.weight_decay >= 0, f"train.weight_decay: must be >= 0, got {train.weight_decay}")
    _check(0 <= train.beta1 < 1 and 0 <= train.beta2 < 1, f"train.beta1/beta2: must be in [0, 1), got {train.beta1}, {train.beta2}")
    _check(train.warmup_steps >= 0, f"train.warmup_steps: must be >= 0, got {train.warmup_steps}")
    _check_choice("train.schedule", train.schedule, SCHEDULES)
    _check(0 < train.decay_fraction <= 1, f"train.decay_fraction: must be in (0, 1], got {train.decay_fraction}")
    _check(train.grad_clip >= 0, f"train.grad_clip: must be >= 0 (0 disables clipping), got {train.grad_clip}")
    _check(train.eval_interval >= 1, f"train.eval_interval: must be >= 1, got {train.eval_interval}")
    _check(train.eval_batches >= 1, f"train.eval_batches: must be >= 1, got {train.eval_batches}")
    _check(train.device == "auto" or train.device == "cpu" or train.device.startswith(("cuda", "mps")),
           f"train.device: must be auto, cpu, cuda or cuda:N, got {train.device!r}")


def run_config_from_dict(values: Mapping[str, Any] | None, base: RunConfig | None = None) -> RunConfig:
    """Build and validate a RunConfig from nested plain data, starting from `base` (default: defaults).

    `ffn_per_layer` maps a layer index to FFN settings that override the base `ffn` for that layer.
    """
    values = dict(values or {})
    config = base or RunConfig()
    allowed = [*_SECTIONS, "ffn_per_layer"]
    for key in values:
        if key not in allowed:
            raise ConfigError(f"{key}: unknown section{_suggest(str(key), allowed)}; valid sections: {', '.join(allowed)}")
    sections = {
        name: _section_from_dict(name, cls, values[name], getattr(config, name)) if name in values else getattr(config, name)
        for name, cls in _SECTIONS.items()
    }
    per_layer = dict(config.ffn_per_layer)
    raw_layers = values.get("ffn_per_layer") or {}
    if not isinstance(raw_layers, Mapping):
        raise ConfigError(f"ffn_per_layer: must map layer indices to FFN settings, got {raw_layers!r}")
    for raw_index, layer_values in raw_layers.items():
        try:
            index = int(raw_index)
        except (TypeError, ValueError):
            raise ConfigError(f"ffn_per_layer.{raw_index}: keys must be layer indices (0, 1, ...)") from None
        per_layer[index] = _section_from_dict(f"ffn_per_layer.{index}", FFNConfig, layer_values, sections["ffn"])
    config = RunConfig(ffn_per_layer=per_layer, **sections)
    validate_run_config(config)
    return config


def run_config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Return the plain, JSON- and YAML-safe form of a config (tuples become lists)."""
    def plain(section: Any) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(section).items()}

    result: dict[str, Any] = {name: plain(getattr(config, name)) for name in _SECTIONS}
    if config.ffn_per_layer:
        result["ffn_per_layer"] = {index: plain(ffn) for index, ffn in sorted(config.ffn_per_layer.items())}
    return result


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `--set section.key=value` override; the value is read as a YAML 1.2 scalar or list."""
    from moa_search.yamlio import parse_yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or key.count(".") < 1:
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, for example --set train.lr=1e-3")
    return key, parse_yaml(raw or "null", f"--set {key}").data


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of nested `values` with each `--set a.b=value` override applied."""
    result = {key: dict(value) if isinstance(value, Mapping) else value for key, value in values.items()}
    for text in overrides:
        key, value = parse_override(text)
        *parents, leaf = key.split(".")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        node[leaf] = value
    return result


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from a YAML file (or defaults when path is None) and apply `--set` overrides.

    Errors name the file and the line of the offending key when it came from the file.
    """
    from moa_search.yamlio import load_yaml

    document = load_yaml(path) if path is not None else None
    values = document.data if document is not None else {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: a config must be a mapping of sections (model, ffn, data, train), got {type(values).__name__}")
    values = apply_overrides(dict(values), overrides or [])
    try:
        return run_config_from_dict(values)
    except ConfigError as error:
        if document is None:
            raise
        key = str(error).split(":", 1)[0]
        raise ConfigError(f"{document.where(key)}: {error}") from None
