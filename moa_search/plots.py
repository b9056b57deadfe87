"""PNG figures for `moa-search inspect --plot DIR`, drawn with matplotlib's Agg backend (no display)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: works without a display and in worker threads

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen before pyplot loads


def plot_effective_curves(curves: dict[int, dict[str, Any]], path: Path, title: str = "") -> Path:
    """Draw one panel per layer with its effective activation curves.

    `curves` maps a layer index to {"u": [...], "curves": {label: [...]}}, as returned by
    `inspect_trial.effective_curves`.
    """
    layers = sorted(curves)
    columns = min(4, max(1, len(layers)))
    rows = max(1, math.ceil(len(layers) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for axis in axes.flat[len(layers):]:
        axis.set_visible(False)
    for axis, layer in zip(axes.flat, layers):
        u = curves[layer]["u"]
        for label, values in curves[layer]["curves"].items():
            axis.plot(u, values, label=label, linewidth=1.4)
        axis.axhline(0.0, color="grey", linewidth=0.5)
        axis.axvline(0.0, color="grey", linewidth=0.5)
        axis.set_title(f"layer {layer}", fontsize=9)
        axis.set_xlabel("pre-activation u", fontsize=8)
        axis.legend(fontsize=6)
    figure.suptitle(title or "Effective activation per layer")
    return _save(figure, path)


def plot_gate_usage_heatmap(gate_usage: dict[str, dict], path: Path, title: str = "") -> Path:
    """Draw the share of tokens won by each activation (columns) in each layer (rows)."""
    layers = sorted(gate_usage, key=lambda key: int(key))
    names = list(gate_usage[layers[0]]["activations"])
    shares = [[float(share) for share in gate_usage[layer]["share"]] for layer in layers]
    figure, axis = plt.subplots(figsize=(1.2 * len(names) + 2.0, 0.5 * len(layers) + 1.6))
    image = axis.imshow(shares, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axis.set_yticks(range(len(layers)), [f"layer {layer}" for layer in layers])
    for row, layer_shares in enumerate(shares):
        for column, share in enumerate(layer_shares):
            axis.text(column, row, f"{100 * share:.0f}%", ha="center", va="center",
                      color="white" if share < 0.6 else "black", fontsize=8)
    figure.colorbar(image, ax=axis, label="share of tokens")
    axis.set_title(title or "Gate usage: share of tokens per activation")
    return _save(figure, path)


def plot_loss_curves(curves: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Draw validation loss against tokens; each item has "label", "tokens", "val_loss", "is_baseline".

    Baselines are dashed so they stand apart from the searched trials.
    """
    figure, axis = plt.subplots(figsize=(7.0, 4.2))
    for item in curves:
        points = [(tokens, loss) for tokens, loss in zip(item["tokens"], item["val_loss"])
                  if loss is not None and math.isfinite(loss)]
        if not points:
            continue
        axis.plot([tokens for tokens, _ in points], [loss for _, loss in points], label=item["label"],
                  linestyle="--" if item.get("is_baseline") else "-", marker=".", linewidth=1.3)
    axis.set_xlabel("training tokens")
    axis.set_ylabel("validation loss")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    axis.set_title(title or "Validation loss: top trials and baselines")
    return _save(figure, path)


def _save(figure: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
