"""Leaderboard rows built from the trials of a study: plain dicts, ready for tables, CSV and JSON.

Only completed trials are ranked (by validation loss, lowest first). Failed, pruned and running
trials are kept apart with their reason, so a crash never looks like a bad loss. Each row carries the
per-token gate usage of the trial's MoA layers, the mixing weights of its LA layers, and a collapse
mark when one activation wins almost every token in every MoA layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from optuna.trial import FrozenTrial, TrialState

from moa_search.errors import MoaSearchError
from moa_search.records import trial_record

# A MoA layer counts as collapsed when one activation is the largest gate weight for more than this
# share of its tokens. A trial is marked as collapsed when every MoA layer is collapsed; LA and
# fixed layers never count, because LA weights are the same for every token.
COLLAPSE_SHARE = 0.95

STATES = {
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "fail": TrialState.FAIL,
    "running": TrialState.RUNNING,
    "waiting": TrialState.WAITING,
}

# Sort keys of the ranked section; missing values (None) always go last.
SORT_KEYS = ("val_loss", "number", "params", "tokens_per_second", "duration_seconds")
_DESCENDING = {"tokens_per_second"}


@dataclass
class Leaderboard:
    """The rows of one study: `ranked` (completed trials) and `unranked` (all other states)."""

    study_name: str
    ranked: list[dict[str, Any]] = field(default_factory=list)
    unranked: list[dict[str, Any]] = field(default_factory=list)
    best_baseline: dict[str, Any] | None = None
    n_trials: int = 0

    def rows(self) -> list[dict[str, Any]]:
        """Return all rows: ranked ones first, then the unranked ones."""
        return [*self.ranked, *self.unranked]


def parse_states(text: str | None) -> set[TrialState] | None:
    """Parse a comma-separated list of state names ("complete,pruned"); None or "" means all."""
    if not text:
        return None
    states = set()
    for name in (part.strip().lower() for part in text.split(",")):
        if name not in STATES:
            raise MoaSearchError(f"--states: unknown state {name!r}; valid states: {', '.join(STATES)}")
        states.add(STATES[name])
    return states


def summarize_gate_usage(gate_usage: dict[str, dict] | None,
                         layer_kinds: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Average the per-layer usage of the first gated branch over layers of the same kind.

    `layer_kinds` maps a layer key to its FFN kind; a layer missing from it counts as "moa". MoA
    layers give per-token shares. LA layers give their mixing weights instead, because LA weights
    are shared by all tokens, so one activation always wins every token there.

    Returns None for a model without gates (kind fixed), else a dict with "activations" (names in
    order of first appearance), "share" (mean share of tokens won per activation over MoA layers,
    None without MoA layers), "mean_weight" (mean LA mixing weight per activation over LA layers,
    None without LA layers), "entropy" (mean normalised entropy over all gated layers),
    "max_share_per_layer" (MoA layers only) and "collapsed" (every MoA layer collapsed).
    """
    if not gate_usage:
        return None
    kinds = layer_kinds or {}
    keys = sorted(gate_usage, key=_layer_order)
    moa_layers = [gate_usage[key] for key in keys if kinds.get(str(key), "moa") != "la"]
    la_layers = [gate_usage[key] for key in keys if kinds.get(str(key), "moa") == "la"]
    names: list[str] = []
    for key in keys:
        names += [name for name in gate_usage[key]["activations"] if name not in names]
    max_shares = [max(usage["share"]) if usage["share"] else 0.0 for usage in moa_layers]
    return {
        "activations": names,
        "share": _mean_per_name(names, moa_layers, "share"),
        "mean_weight": _mean_per_name(names, la_layers, "mean_weight"),
        "entropy": sum(float(gate_usage[key]["entropy"]) for key in keys) / len(keys),
        "max_share_per_layer": max_shares,
        "collapsed": bool(moa_layers) and all(share > COLLAPSE_SHARE for share in max_shares),
    }


def _mean_per_name(names: list[str], layers: list[dict], field_name: str) -> list[float] | None:
    """Average one per-activation field over layers; a layer without an activation adds 0 for it."""
    if not layers or any(field_name not in usage for usage in layers):
        return None
    totals = dict.fromkeys(names, 0.0)
    for usage in layers:
        for name, value in zip(usage["activations"], usage[field_name]):
            totals[name] += value / len(layers)
    return [totals[name] for name in names]


def layer_kinds(trial: FrozenTrial) -> dict[str, str]:
    """Return the FFN kind of every layer key of the trial's gate usage, from its config.

    The stored config gives the base kind and the `ffn_per_layer` overrides; a trial without a
    stored config falls back to its sampled "ffn.kind" for every layer.
    """
    config = trial_record(trial).config or {}
    base_kind = ffn_settings(trial).get("kind", "moa")
    overrides = {str(index): settings.get("kind", base_kind)
                 for index, settings in (config.get("ffn_per_layer") or {}).items()}
    usage = trial_record(trial).gate_usage or {}
    return {str(key): overrides.get(str(key), base_kind) for key in usage}


def _layer_order(key: str) -> tuple[int, str]:
    return (int(key), key) if str(key).isdigit() else (1 << 30, str(key))


def trial_row(trial: FrozenTrial, best_baseline_loss: float | None = None) -> dict[str, Any]:
    """Return the leaderboard row of one trial (rank is filled in by `build_leaderboard`)."""
    record = trial_record(trial)
    ffn = ffn_settings(trial)
    metrics = record.metrics or {}
    val_loss = metrics.get("val_loss")
    if val_loss is None and trial.state == TrialState.COMPLETE and trial.values:
        val_loss = trial.values[0]
    if val_loss is None and trial.intermediate_values:
        # Pruned and failed trials show their last reported loss; they are never ranked by it.
        val_loss = trial.intermediate_values[max(trial.intermediate_values)]
    delta = delta_percent = None
    if trial.state == TrialState.COMPLETE and _finite(val_loss) and _finite(best_baseline_loss):
        delta = val_loss - best_baseline_loss
        delta_percent = 100.0 * delta / best_baseline_loss if best_baseline_loss else None
    mixes = ffn.get("kind") == "moa"
    usage = summarize_gate_usage(record.gate_usage, layer_kinds(trial))
    params = metrics.get("params") or {}
    return {
        "rank": None,
        "number": trial.number,
        "state": trial.state.name.lower(),
        "val_loss": val_loss,
        "delta": delta,
        "delta_percent": delta_percent,
        "is_baseline": record.is_baseline,
        "baseline": record.baseline,
        "kind": ffn.get("kind"),
        "type": ffn.get("type"),
        "glu_mixing": ffn.get("glu_mixing") if ffn.get("type") == "glu" and ffn.get("kind") != "fixed" else None,
        "bank": list(ffn.get("bank") or []),
        "gate": ffn.get("gate") if mixes else None,
        "temperature": ffn.get("temperature") if mixes else None,
        "top_k": ffn.get("top_k") if mixes else None,
        "params": params.get("total") if isinstance(params, dict) else params,
        "tokens_per_second": metrics.get("tokens_per_second"),
        "duration_seconds": _duration(trial, metrics),
        "gate_usage": record.gate_usage or {},
        "gate_share": _by_name(usage, "share"),
        "mixing_weight": _by_name(usage, "mean_weight"),
        "gate_entropy": usage["entropy"] if usage else None,
        "collapsed": bool(usage and usage["collapsed"]),
        "reason": record.fail_reason if trial.state != TrialState.COMPLETE else None,
        "progress": record.progress if trial.state == TrialState.RUNNING else None,
    }


def _by_name(usage: dict[str, Any] | None, key: str) -> dict[str, float] | None:
    if usage is None or usage[key] is None:
        return None
    return dict(zip(usage["activations"], usage[key]))


def ffn_settings(trial: FrozenTrial) -> dict[str, Any]:
    """Return the trial's base FFN settings: from its stored config, else from its sampled parameters.

    A trial that failed before its config was stored still has the parameters the sampler chose
    (named by dotted config keys, such as "ffn.kind"), which is enough to label its row.
    """
    config = trial_record(trial).config or {}
    if config.get("ffn"):
        return dict(config["ffn"])
    settings: dict[str, Any] = {}
    for key, value in trial.params.items():
        if key.startswith("ffn."):
            settings[key[len("ffn."):]] = value
    if isinstance(settings.get("bank"), str):
        settings["bank"] = settings["bank"].split("+")
    return settings


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _duration(trial: FrozenTrial, metrics: dict[str, Any]) -> float | None:
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return metrics.get("wall_seconds")


def best_baseline(trials: Iterable[FrozenTrial]) -> dict[str, Any] | None:
    """Return number, baseline name and val_loss of the completed baseline with the lowest loss."""
    best = None
    for trial in trials:
        if trial.state != TrialState.COMPLETE:
            continue
        record = trial_record(trial)
        loss = (record.metrics or {}).get("val_loss", trial.values[0] if trial.values else None)
        if record.is_baseline and _finite(loss) and (best is None or loss < best["val_loss"]):
            best = {"number": trial.number, "baseline": record.baseline, "val_loss": loss}
    return best


def build_leaderboard(
    trials: Iterable[FrozenTrial],
    *,
    study_name: str = "",
    states: set[TrialState] | None = None,
    sort: str = "val_loss",
    top: int | None = None,
) -> Leaderboard:
    """Rank the completed trials by validation loss and collect the other trials apart.

    `states` filters which trials appear (None: all); `sort` orders the ranked rows without
    changing their rank; `top` keeps the first N rows of each section.
    """
    if sort not in SORT_KEYS:
        raise MoaSearchError(f"--sort: unknown key {sort!r}; valid keys: {', '.join(SORT_KEYS)}")
    if top is not None and top < 1:
        raise MoaSearchError(f"--top: must be >= 1, got {top}")
    trials = list(trials)
    baseline = best_baseline(trials)
    baseline_loss = baseline["val_loss"] if baseline else None
    rows = [trial_row(trial, baseline_loss) for trial in trials]

    ranked = sorted((row for row in rows if row["state"] == "complete" and _finite(row["val_loss"])),
                    key=lambda row: (row["val_loss"], row["number"]))
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    unranked = [row for row in rows if row["rank"] is None]
    unranked.sort(key=lambda row: row["number"])

    if states is not None:
        names = {state.name.lower() for state in states}
        ranked = [row for row in ranked if row["state"] in names]
        unranked = [row for row in unranked if row["state"] in names]
    if sort != "val_loss":
        ranked.sort(key=lambda row: _sort_key(row, sort))
    if top is not None:
        ranked, unranked = ranked[:top], unranked[:top]
    return Leaderboard(study_name=study_name, ranked=ranked, unranked=unranked,
                       best_baseline=baseline, n_trials=len(trials))


def _sort_key(row: dict[str, Any], key: str) -> tuple[bool, float, int]:
    value = row.get(key)
    if value is None:
        return (True, 0.0, row["number"])
    return (False, -value if key in _DESCENDING else value, row["number"])
