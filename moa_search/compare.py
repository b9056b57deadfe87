"""A fair comparison of FFN variants: equal token budget, equal parameter count, several seeds.

A comparison file (see search_spaces/comparisons/moa_vs_baselines.yaml) has three sections:

    base:        # a run config (model, data, train) shared by every variant
    variants:    # a list of {name, ffn: {...FFNConfig settings}}
    comparison:  # seeds (default 3), reference (default: the first variant), tolerance (0.01)

Every variant trains the same token budget (base.train) on the same corpus, and gets its own
d_hidden so that its total parameter count matches the reference variant's to within `tolerance`
(a relative difference). `run_comparison` trains every variant once per seed, all variants of a seed
before the next seed, so an interrupted comparison has the same seeds done for every variant.
`summarise` turns the runs into one row per variant (mean and standard deviation of the final
validation loss).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from moa_search.config import RunConfig, resolved_d_hidden, run_config_from_dict
from moa_search.errors import ConfigError

if TYPE_CHECKING:
    from moa_search.data import Corpus

log = logging.getLogger(__name__)

DEFAULT_SEEDS = 3
DEFAULT_TOLERANCE = 0.01
_SECTIONS = ("base", "variants", "comparison")


@dataclass(frozen=True)
class Variant:
    """One FFN variant of a comparison, with the run config that gives it the matched size."""

    name: str
    config: RunConfig

    @property
    def kind(self) -> str:
        return self.config.ffn.kind

    @property
    def type(self) -> str:
        return self.config.ffn.type


@dataclass(frozen=True)
class Comparison:
    """A loaded comparison file: the variants (d_hidden not yet matched) and how to run them."""

    base: RunConfig
    variants: tuple[Variant, ...]
    seeds: int = DEFAULT_SEEDS
    reference: str = ""
    tolerance: float = DEFAULT_TOLERANCE
    source: str = "<dict>"


def comparison_from_dict(values: Mapping[str, Any], source: str = "<dict>") -> Comparison:
    """Build and validate a Comparison from plain data; ConfigError names the key and the rule."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: a comparison must be a mapping with sections {', '.join(_SECTIONS)}")
    for key in values:
        if key not in _SECTIONS:
            raise ConfigError(f"{source}: {key}: unknown section; valid sections: {', '.join(_SECTIONS)}")
    base_values = dict(values.get("base") or {})
    if "ffn" in base_values or "ffn_per_layer" in base_values:
        raise ConfigError(f"{source}: base.ffn: the FFN belongs to each variant; move it under variants")
    try:
        base = run_config_from_dict(base_values)
    except ConfigError as error:
        raise ConfigError(f"{source}: base.{error}") from None

    raw_variants = values.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise ConfigError(f"{source}: variants: must be a non-empty list of {{name, ffn}} entries, got {raw_variants!r}")
    variants = []
    for index, entry in enumerate(raw_variants):
        if not isinstance(entry, Mapping) or set(entry) - {"name", "ffn"} or "name" not in entry:
            raise ConfigError(f"{source}: variants[{index}]: must be a mapping with keys name and ffn, got {entry!r}")
        name = str(entry["name"])
        if any(variant.name == name for variant in variants):
            raise ConfigError(f"{source}: variants[{index}].name: {name!r} is used twice; names must be unique")
        try:
            config = run_config_from_dict({"ffn": entry.get("ffn") or {}}, base=base)
        except ConfigError as error:
            raise ConfigError(f"{source}: variants[{index}] ({name}): {error}") from None
        variants.append(Variant(name, config))

    settings = dict(values.get("comparison") or {})
    unknown = set(settings) - {"seeds", "reference", "tolerance"}
    if unknown:
        raise ConfigError(f"{source}: comparison.{sorted(unknown)[0]}: unknown setting; valid: seeds, reference, tolerance")
    seeds = settings.get("seeds", DEFAULT_SEEDS)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"{source}: comparison.seeds: must be an integer >= 1, got {seeds!r}")
    reference = str(settings.get("reference", variants[0].name))
    if reference not in [variant.name for variant in variants]:
        raise ConfigError(f"{source}: comparison.reference: {reference!r} is not a variant name; "
                          f"use one of {', '.join(v.name for v in variants)}")
    tolerance = settings.get("tolerance", DEFAULT_TOLERANCE)
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not 0 < tolerance < 1:
        raise ConfigError(f"{source}: comparison.tolerance: must be a number in (0, 1), got {tolerance!r}")
    return Comparison(base, tuple(variants), seeds, reference, float(tolerance), source)


def load_comparison(path: str | Path) -> Comparison:
    """Load a comparison file; errors name the file, and the line for settings under `base`."""
    from moa_search.yamlio import load_yaml

    document = load_yaml(path)
    try:
        return comparison_from_dict(document.data, source=str(path))
    except ConfigError as error:
        message = str(error)
        prefix = f"{path}: "
        key = message[len(prefix):].split(":", 1)[0] if message.startswith(prefix) else ""
        if key.startswith("base."):
            raise ConfigError(f"{document.where(key)}: {message[len(prefix):]}") from None
        raise


# ---------------------------------------------------------------------------------------------
# Equal parameter counts


def parameter_count(config: RunConfig) -> int:
    """Return the total parameter count of the model of `config`, built on the meta device
    (shapes only, no memory, no random numbers drawn)."""
    from moa_search.model import GPT

    with torch.device("meta"):
        model = GPT.from_run_config(config)
    return model.parameter_counts()["total"]


def with_d_hidden(config: RunConfig, d_hidden: int) -> RunConfig:
    """Return `config` with model.d_hidden set (every FFN of the model gets that hidden width)."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, d_hidden=d_hidden))


def match_d_hidden(config: RunConfig, target: int) -> tuple[int, int]:
    """Return (d_hidden, total parameters) of the d_hidden whose total is closest to `target`.

    The total is linear in d_hidden (projections scale with it, gates and the rest do not), so
    two model builds give the slope and the intercept; the neighbours of the solution are checked.
    """
    at_one = parameter_count(with_d_hidden(config, 1))
    slope = parameter_count(with_d_hidden(config, 2)) - at_one
    estimate = 1 + round((target - at_one) / slope)
    candidates = [max(1, estimate + offset) for offset in (-1, 0, 1)]
    counts = {d_hidden: parameter_count(with_d_hidden(config, d_hidden)) for d_hidden in candidates}
    best = min(counts, key=lambda d_hidden: (abs(counts[d_hidden] - target), d_hidden))
    return best, counts[best]


def equalise(comparison: Comparison) -> list[Variant]:
    """Return the variants with d_hidden chosen so every total is within the tolerance of the
    reference variant's total (the reference keeps its own d_hidden, as base.model sets it).

    Raises ConfigError when no d_hidden gets a variant close enough (for example when the gates
    alone outweigh the tolerance).
    """
    reference = next(v for v in comparison.variants if v.name == comparison.reference)
    target = parameter_count(reference.config)
    matched = []
    for variant in comparison.variants:
        if variant.name == reference.name:
            d_hidden = resolved_d_hidden(variant.config.model, variant.config.ffn)
            matched.append(Variant(variant.name, with_d_hidden(variant.config, d_hidden)))
            continue
        d_hidden, total = match_d_hidden(variant.config, target)
        difference = abs(total - target) / target
        if difference > comparison.tolerance:
            raise ConfigError(
                f"variant {variant.name!r}: the closest parameter count is {total:,} (d_hidden {d_hidden}), "
                f"{difference:.2%} from the reference {reference.name!r} ({target:,}); the tolerance is "
                f"{comparison.tolerance:.2%}. Raise comparison.tolerance or use a larger model"
            )
        matched.append(Variant(variant.name, with_d_hidden(variant.config, d_hidden)))
    return matched


# ---------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class RunRecord:
    """The outcome of one variant and seed: final metrics and the gate usage per layer."""

    variant: str
    kind: str
    type: str
    glu_mixing: str | None
    seed: int
    d_hidden: int
    params: int
    val_loss: float
    best_val_loss: float
    train_loss: float
    tokens: int
    tokens_per_second: float
    wall_seconds: float
    gate_usage: dict[str, dict]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_comparison(
    comparison: Comparison,
    *,
    seeds: int | None = None,
    corpus: Corpus | None = None,
    on_run: Callable[[RunRecord], None] | None = None,
) -> list[RunRecord]:
    """Train every variant once per seed (seeds 0..n-1, all variants of a seed before the next)
    and return one RunRecord per run; `on_run` is called after each run, for progress or logs."""
    from moa_search.trainer import train

    variants = equalise(comparison)
    n_seeds = comparison.seeds if seeds is None else seeds
    if n_seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {n_seeds}")
    if corpus is None:
        from moa_search.data import load_corpus

        corpus = load_corpus(comparison.base.data, comparison.base.model.context_length)

    records = []
    for seed in range(n_seeds):
        for variant in variants:
            config = dataclasses.replace(variant.config, train=dataclasses.replace(variant.config.train, seed=seed))
            log.info("training %s, seed %d (%d of %d)", variant.name, seed, len(records) + 1, n_seeds * len(variants))
            result = train(config, corpus=corpus)
            ffn = config.ffn
            record = RunRecord(
                variant=variant.name, kind=ffn.kind, type=ffn.type,
                glu_mixing=ffn.glu_mixing if ffn.type == "glu" and ffn.kind != "fixed" else None,
                seed=seed, d_hidden=config.model.d_hidden, params=result.params["total"],
                val_loss=result.val_loss, best_val_loss=result.best_val_loss, train_loss=result.train_loss,
                tokens=result.tokens, tokens_per_second=result.tokens_per_second,
                wall_seconds=result.wall_seconds, gate_usage=result.gate_usage,
            )
            records.append(record)
            if on_run is not None:
                on_run(record)
    return records


# ---------------------------------------------------------------------------------------------
# Summary


def summarise(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Return one row per variant (first-seen order): seeds, parameters, d_hidden, the mean and
    sample standard deviation of the final validation loss (std 0.0 for a single seed), and the
    mean tokens/s and wall time."""
    rows = []
    for name in dict.fromkeys(record.variant for record in records):
        runs = [record for record in records if record.variant == name]
        losses = [run.val_loss for run in runs]
        rows.append({
            "name": name,
            "kind": runs[0].kind,
            "type": runs[0].type,
            "glu_mixing": runs[0].glu_mixing,
            "seeds": len(runs),
            "params": runs[0].params,
            "d_hidden": runs[0].d_hidden,
            "tokens": runs[0].tokens,
            "val_loss_mean": statistics.fmean(losses),
            "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
            "val_losses": losses,
            "tokens_per_second": statistics.fmean(run.tokens_per_second for run in runs),
            "wall_seconds": statistics.fmean(run.wall_seconds for run in runs),
        })
    return rows


def mean_gate_usage(records: list[RunRecord], variant: str, branch: str | None = None) -> dict[str, Any] | None:
    """Return the gate usage of one variant averaged over layers and seeds: activations, share,
    mean_weight and entropy (branch "second" reads the σ(W2 x) branch of bi-sided layers).
    None when the variant has no gates (fixed)."""
    layers = []
    for record in records:
        if record.variant != variant:
            continue
        for usage in record.gate_usage.values():
            part = usage.get(branch) if branch else usage
            if part:
                layers.append(part)
    if not layers:
        return None
    size = len(layers[0]["activations"])
    return {
        "activations": list(layers[0]["activations"]),
        "share": [statistics.fmean(layer["share"][k] for layer in layers) for k in range(size)],
        "mean_weight": [statistics.fmean(layer["mean_weight"][k] for layer in layers) for k in range(size)],
        "entropy": statistics.fmean(layer["entropy"] for layer in layers),
        "layers_x_seeds": len(layers),
    }
