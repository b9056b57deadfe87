"""Inspection of a trained trial: the tokens each activation wins, mixing weights, effective curves.

The trial's weights come from the `model.pt` artifact stored when the trial finished, so nothing is
retrained. Validation tokens are run through the model with forward pre-hooks on the feedforward
layers. For each token, the activation with the largest absolute gate weight of the first gated
branch wins, the same rule as the layer's gate usage, and ties go to the lower bank index.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from moa_search.config import RunConfig, run_config_from_dict
from moa_search.errors import StudyError

logger = logging.getLogger(__name__)

# Validation tokens scanned for token preferences. This is an estimate of enough tokens for stable
# top-10 lists on a byte vocabulary while the scan stays within seconds on a CPU.
DEFAULT_SCAN_TOKENS = 16_384


def model_file(trial, results_dir: Path | None = None) -> Path | None:
    """Return the path of a trial's stored model.pt, or None when no artifact folder was recorded."""
    from moa_search.records import trial_record

    return trial_record(trial).model_path(results_dir)


def read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (state_dict, config dict) from a trial's model.pt."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as error:
        raise StudyError(f"cannot read the trial model {path}: {error}") from None
    state_dict = saved.get("state_dict", saved.get("model")) if isinstance(saved, dict) else None
    config = saved.get("config") if isinstance(saved, dict) else None
    if not isinstance(state_dict, dict) or not isinstance(config, dict):
        raise StudyError(f"{path} lacks the 'state_dict' and 'config' entries, so moa-search did not write it; "
                         "rerun the trial to store its model again")
    # A model trained under torch.compile saves its weights under the "_orig_mod." prefix.
    state_dict = {key.removeprefix("_orig_mod."): value for key, value in state_dict.items()}
    return state_dict, config


def load_trial_model(trial, results_dir: Path | None = None):
    """Rebuild the trained GPT of a trial from its model.pt; return (model in eval mode, run config)."""
    from moa_search.model import GPT

    path = model_file(trial, results_dir)
    if path is None or not path.is_file():
        raise StudyError(f"trial {trial.number} has no saved model (expected {path or 'an artifact folder'}); "
                         "completed trials store one, so inspect a completed trial, or pass --results "
                         "when the results folder moved")
    state_dict, config_dict = read_model_file(path)
    config = run_config_from_dict(config_dict)
    model = GPT.from_run_config(config)
    model.load_state_dict(state_dict)
    model.eval()
    return model, config


def validation_tokens(config: RunConfig, max_tokens: int = DEFAULT_SCAN_TOKENS):
    """Return (the first `max_tokens` validation token ids as int64, the tokenizer) of a trial's corpus."""
    from moa_search.data import load_corpus

    corpus = load_corpus(config.data, config.model.context_length)
    return corpus.val[:max_tokens].to(torch.int64), corpus.tokenizer


@torch.no_grad()
def collect_gate_weights(model, tokens: torch.Tensor, context_length: int, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Run `tokens` through the model and return layer index -> gate weights [N, K] per token.

    Layers without per-token gates (fixed and LA activations, mixture-of-experts blocks) are left out.
    """
    from moa_search.ffn import FeedForward

    n_windows = tokens.numel() // context_length
    if n_windows == 0:
        raise StudyError(f"the validation split has {tokens.numel()} tokens, fewer than one context "
                         f"window ({context_length}); use a larger corpus or validation fraction")
    windows = tokens[: n_windows * context_length].view(n_windows, context_length)
    inputs: dict[int, list[torch.Tensor]] = {}
    hooks = []
    for index, block in enumerate(model.blocks):
        # NOTE: a mixture-of-experts block routes each token to a few experts, each with its own
        # gates, so it has no single per-token gate vector and is skipped here.
        if isinstance(block.ffn, FeedForward) and block.ffn.config.kind == "moa":
            hooks.append(block.ffn.register_forward_pre_hook(_capture(inputs, index)))
    try:
        weights: dict[int, list[torch.Tensor]] = {}
        for start in range(0, n_windows, batch_size):
            model(windows[start:start + batch_size])
            for index, captured in inputs.items():
                layer_weights = model.blocks[index].ffn.gate_weights(captured.pop())
                if layer_weights is not None:
                    weights.setdefault(index, []).append(layer_weights.reshape(-1, layer_weights.shape[-1]).float())
    finally:
        for hook in hooks:
            hook.remove()
    return {index: torch.cat(parts) for index, parts in weights.items()}


def _capture(store: dict[int, list[torch.Tensor]], index: int):
    def hook(module, args):
        store.setdefault(index, []).append(args[0].detach())
    return hook


def token_preferences(weights: dict[int, torch.Tensor], token_ids: torch.Tensor, activations: dict[int, list[str]],
                      decode, top: int = 10) -> dict[int, dict[str, Any]]:
    """For each layer and activation: tokens won, and the most frequent tokens among them as text.

    `weights[layer]` is [N, K] for the first N of `token_ids`; `decode` maps one token id to text.
    """
    result = {}
    for layer, layer_weights in sorted(weights.items()):
        # argmax returns the first maximal index, so ties go to the lower bank index.
        winners = layer_weights.abs().argmax(dim=-1)
        ids = token_ids[: winners.numel()]
        names = activations[layer]
        per_activation = {}
        for k, name in enumerate(names):
            won = ids[winners == k].tolist()
            per_activation[name] = {
                "tokens_won": len(won),
                "share": len(won) / max(1, winners.numel()),
                "top_tokens": [{"token": readable_token(decode(token)), "id": token, "count": count}
                               for token, count in Counter(won).most_common(top)],
                "mean_weights": layer_weights[winners == k].mean(dim=0).tolist() if won else None,
            }
        result[layer] = {"activations": names, "tokens": int(winners.numel()), "per_activation": per_activation,
                         "mean_weights": layer_weights.mean(dim=0).tolist()}
    return result


def readable_token(text: str) -> str:
    """Show a token's text on one line: control characters escaped, edge spaces as "␣"."""
    out = []
    for char in text:
        if char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    joined = "".join(out)
    stripped = joined.strip(" ")
    left = len(joined) - len(joined.lstrip(" "))
    right = len(joined) - len(joined.rstrip(" "))
    return "␣" * left + stripped + "␣" * right if stripped else "␣" * len(joined)


def token_decoder(tokenizer):
    """Return a function that maps one token id to text for tables.

    A byte token that is not valid UTF-8 on its own shows as <0xNN>, and the document separator
    as <separator>. Decoding errors of other tokenizers show as U+FFFD instead of raising.
    """
    separator = getattr(tokenizer, "separator_id", None)

    def decode(token: int) -> str:
        if token == separator:
            return "<separator>"
        try:
            text = tokenizer.decode([token])
        except (UnicodeDecodeError, ValueError):
            text = "\ufffd"
        if text == "\ufffd" and token < 256 and getattr(tokenizer, "name", "") == "byte":
            return f"<0x{token:02x}>"
        return text
    return decode


def layer_banks(config: RunConfig) -> dict[int, list[str]]:
    """Return layer index -> bank (activation names in bank order)."""
    return {index: list(config.ffn_for_layer(index).bank) for index in range(config.model.n_layers)}


def mixing_weights(model) -> dict[int, list[float]]:
    """Return layer index -> learned LA mixing weights (layers of kind la only)."""
    from moa_search.ffn import FeedForward

    result = {}
    for index, block in enumerate(model.blocks):
        if isinstance(block.ffn, FeedForward):
            weights = block.ffn.mixing_weights()
            if weights is not None:
                result[index] = [float(value) for value in weights.detach().float().tolist()]
    return result


@torch.no_grad()
def effective_curves(model, config: RunConfig, preferences: dict[int, dict[str, Any]],
                     la_weights: dict[int, list[float]], low: float = -4.0, high: float = 4.0,
                     points: int = 161) -> dict[int, dict[str, Any]]:
    """Return layer index -> {"u", "curves"}: Σ_k w_k σ_k(u) for typical weight vectors.

    LA layers have one curve (their mixing weights). MoA layers have the curve of the mean gate
    weights over all scanned tokens and one per activation for the mean weights of the tokens it wins.
    """
    u = torch.linspace(low, high, points)
    result = {}
    for index in range(config.model.n_layers):
        ffn = model.blocks[index].ffn
        curves: dict[str, list[float]] = {}
        if index in la_weights:
            curves["LA mixing weights"] = ffn.effective_activation(u, torch.tensor(la_weights[index])).tolist()
        elif index in preferences:
            layer = preferences[index]
            curves["mean over tokens"] = ffn.effective_activation(u, torch.tensor(layer["mean_weights"])).tolist()
            for name, item in layer["per_activation"].items():
                if item["mean_weights"] is not None:
                    curves[f"tokens won by {name}"] = ffn.effective_activation(u, torch.tensor(item["mean_weights"])).tolist()
        if curves:
            result[index] = {"u": u.tolist(), "curves": curves, "activations": layer_banks(config)[index]}
    return result


# ---------------------------------------------------------------------------------------------
# The whole inspection of one trial, as JSON-safe data


def build_inspection(trial, *, study_name: str, results_dir: Path | None = None, with_model: bool = True,
                     scan_tokens: int = DEFAULT_SCAN_TOKENS, top_tokens: int = 10) -> dict[str, Any]:
    """Collect everything `moa-search inspect` shows about one trial, as JSON-safe data.

    Config, metrics, curve and gate usage come from the study storage. Token preferences, mixing
    weights and effective curves need the stored model; without it "model_note" explains why they are
    missing.
    """
    from moa_search.records import trial_record

    record = trial_record(trial)
    inspection: dict[str, Any] = {
        "study": study_name,
        "number": trial.number,
        "state": trial.state.name.lower(),
        "is_baseline": record.is_baseline,
        "baseline": record.baseline,
        "reason": record.fail_reason,
        "config": record.config,
        "metrics": record.metrics,
        "curve": record.curve or [],
        "gate_usage": record.gate_usage or {},
        "artifact_dir": record.artifact_dir,
        "token_preferences": {},
        "mixing_weights": {},
        "effective_curves": {},
        "banks": {},
        "model_note": None,
    }
    if not with_model:
        inspection["model_note"] = "Token preferences and mixing curves skipped (--no-model)."
        return inspection
    path = record.model_path(results_dir)
    if path is None or not path.is_file():
        inspection["model_note"] = (f"No saved model for trial {trial.number} ({path or 'no artifact_dir stored'}), so "
                                    "token preferences and mixing curves are not shown. Completed trials store one; "
                                    "pass --results when the results folder moved.")
        return inspection
    model, config = load_trial_model(trial, results_dir)
    banks = layer_banks(config)
    la_weights = mixing_weights(model)
    preferences: dict[int, dict[str, Any]] = {}
    if any(config.ffn_for_layer(index).kind == "moa" for index in range(config.model.n_layers)):
        tokens, tokenizer = validation_tokens(config, scan_tokens)
        weights = collect_gate_weights(model, tokens, config.model.context_length)
        preferences = token_preferences(weights, tokens, banks, token_decoder(tokenizer), top=top_tokens)
    inspection["token_preferences"] = {str(layer): item for layer, item in preferences.items()}
    inspection["mixing_weights"] = {str(layer): values for layer, values in la_weights.items()}
    inspection["effective_curves"] = {str(layer): item for layer, item in
                                      effective_curves(model, config, preferences, la_weights).items()}
    inspection["banks"] = {str(layer): names for layer, names in banks.items()}
    return inspection


def loss_curve_series(trials, top: int = 5) -> list[dict[str, Any]]:
    """Return validation-loss curves of the `top` best completed trials and of every completed baseline."""
    from moa_search.leaderboard import build_leaderboard
    from moa_search.records import trial_record

    board = build_leaderboard(trials)
    by_number = {trial.number: trial for trial in trials}
    chosen = [row for row in board.ranked if not row["is_baseline"]][:top]
    chosen += [row for row in board.ranked if row["is_baseline"]]
    series = []
    for row in chosen:
        curve = trial_record(by_number[row["number"]]).curve or []
        label = (f"trial {row['number']} baseline {row['baseline']}" if row["is_baseline"]
                 else f"trial {row['number']} {row['kind']} {'+'.join(row['bank'])}")
        series.append({"label": label, "is_baseline": row["is_baseline"],
                       "tokens": [point.get("tokens") for point in curve],
                       "val_loss": [point.get("val_loss") for point in curve]})
    return series


def write_plots(inspection: dict[str, Any], trials, plot_dir: Path) -> list[Path]:
    """Write the PNG figures of an inspection to `plot_dir` and return their paths."""
    from moa_search import plots

    plot_dir = Path(plot_dir)
    prefix = f"trial_{inspection['number']}"
    written = []
    curves = {int(layer): item for layer, item in (inspection.get("effective_curves") or {}).items()}
    if curves:
        written.append(plots.plot_effective_curves(curves, plot_dir / f"{prefix}_effective_activation.png",
                                                   title=f"Trial {inspection['number']}: effective activation per layer"))
    if inspection.get("gate_usage"):
        written.append(plots.plot_gate_usage_heatmap(inspection["gate_usage"], plot_dir / f"{prefix}_gate_usage.png",
                                                     title=f"Trial {inspection['number']}: share of tokens per activation"))
    series = loss_curve_series(trials)
    if series:
        written.append(plots.plot_loss_curves(series, plot_dir / f"{inspection['study']}_loss_curves.png",
                                              title=f"Study {inspection['study']}: top trials and baselines"))
    return written
