"""Pure renderers for `moa-search inspect`: an inspection dict in, Rich renderables out."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from moa_search.render import format_count, format_duration, format_number, share_bar, sparkline


def config_tree(inspection: dict[str, Any]) -> Tree:
    """Render the trial's state, resolved config and metrics as a tree."""
    label = f"trial {inspection['number']} · {inspection['state']}"
    if inspection.get("is_baseline"):
        label += f" · baseline {inspection.get('baseline')}"
    tree = Tree(Text(label, style="bold"))
    if inspection.get("reason"):
        tree.add(Text(f"reason: {inspection['reason']}", style="red"))
    metrics = tree.add(Text("metrics", style="bold"))
    for key, value in (inspection.get("metrics") or {}).items():
        if isinstance(value, dict):
            branch = metrics.add(key)
            for sub_key, sub_value in value.items():
                branch.add(f"{sub_key}: {_metric_text(sub_key, sub_value)}")
        else:
            metrics.add(f"{key}: {_metric_text(key, value)}")
    # One wrapped line per config section keeps the full resolved config readable at a glance.
    config = tree.add(Text("config", style="bold"))
    for section, values in (inspection.get("config") or {}).items():
        line = Text(f"{section}: ", style="bold")
        line.append(_inline(values) if isinstance(values, dict) else str(values))
        config.add(line)
    return tree


def _inline(values: dict[Any, Any]) -> str:
    parts = []
    for key, value in values.items():
        if isinstance(value, dict):
            parts.append(f"{key}=({_inline(value)})")
        elif isinstance(value, list):
            parts.append(f"{key}={'+'.join(map(str, value))}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def _metric_text(key: str, value: Any) -> str:
    if isinstance(value, float):
        if "seconds" in key:
            return format_duration(value)
        if "loss" in key:
            return format_number(value)
        return format_count(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def learning_curve_view(curve: list[dict[str, Any]]) -> RenderableType:
    """Render the evaluations as a table, with a sparkline of the validation loss above it."""
    if not curve:
        return Text("No evaluation stored for this trial.", style="dim")
    table = Table(title="Learning curve", title_justify="left", header_style="bold")
    for name in ("step", "tokens", "train loss", "val loss", "lr", "elapsed"):
        table.add_column(name, justify="right")
    for point in curve:
        table.add_row(str(point.get("step")), format_count(point.get("tokens")), format_number(point.get("train_loss")),
                      format_number(point.get("val_loss")), f"{point.get('lr', 0.0):.2e}" if point.get("lr") is not None else "-",
                      format_duration(point.get("elapsed_seconds")))
    line = Text("val loss ", style="dim")
    line.append(sparkline([point.get("val_loss") for point in curve]), style="cyan")
    return Group(line, table)


def gate_usage_view(gate_usage: dict[str, dict]) -> RenderableType:
    """Render per-layer gate usage: share of tokens and mean weight per activation, and entropy."""
    if not gate_usage:
        return Text("No gate usage: this model has fixed activations.", style="dim")
    table = Table(title="Gate usage per layer (share of tokens whose largest weight is the activation)",
                  title_justify="left", header_style="bold")
    for name in ("layer", "branch", "activation", "share", "", "mean weight", "entropy"):
        table.add_column(name, justify="left" if name in ("activation", "branch", "") else "right")
    for layer in sorted(gate_usage, key=int):
        branches = [("σ(W1 x)" if "second" in gate_usage[layer] else "", gate_usage[layer])]
        if "second" in gate_usage[layer]:
            branches.append(("σ(W2 x)", gate_usage[layer]["second"]))
        for branch_name, usage in branches:
            for index, name in enumerate(usage["activations"]):
                share = usage["share"][index]
                table.add_row(str(layer) if index == 0 else "", branch_name if index == 0 else "", name,
                              f"{100 * share:.1f}%", Text(share_bar(share) * max(1, round(10 * share)), style="cyan"),
                              format_number(usage["mean_weight"][index], 3),
                              format_number(usage["entropy"], 3) if index == 0 else "")
            table.add_section()
    return table


def token_preferences_view(preferences: dict[int, dict[str, Any]]) -> RenderableType:
    """Render, per layer and activation, the validation tokens it wins most often."""
    if not preferences:
        return Text("No token preferences: no layer has per-token gates.", style="dim")
    table = Table(title="Which tokens prefer which activation (validation tokens won, most frequent first)",
                  title_justify="left", header_style="bold")
    for name in ("layer", "activation", "won", "top tokens (count)"):
        table.add_column(name, justify="right" if name == "won" else "left")
    for layer, item in sorted(preferences.items()):
        for index, (name, entry) in enumerate(item["per_activation"].items()):
            tokens = Text()
            for position, token in enumerate(entry["top_tokens"]):
                if position:
                    tokens.append("  ")
                tokens.append(f"'{token['token']}'", style="green")
                tokens.append(f" {token['count']}", style="dim")
            table.add_row(str(layer) if index == 0 else "", name, f"{100 * entry['share']:.1f}%", tokens or "-")
        table.add_section()
    return table


def mixing_view(inspection: dict[str, Any]) -> RenderableType:
    """Render LA mixing weights and sparklines of the effective activation curves per layer."""
    parts: list[RenderableType] = []
    weights = inspection.get("mixing_weights") or {}
    if weights:
        table = Table(title="LA mixing weights per layer", title_justify="left", header_style="bold")
        names = inspection["banks"][str(min(weights, key=int))]
        table.add_column("layer", justify="right")
        for name in names:
            table.add_column(name, justify="right")
        for layer, values in sorted(weights.items(), key=lambda item: int(item[0])):
            table.add_row(str(layer), *(format_number(value, 3) for value in values))
        parts.append(table)
    curves = inspection.get("effective_curves") or {}
    if curves:
        table = Table(title="Effective activation Σ w_k σ_k(u) for u from "
                            f"{_first_u(curves):g} to {_last_u(curves):g}", title_justify="left", header_style="bold")
        table.add_column("layer")
        table.add_column("weights from")
        table.add_column("curve")
        for u in _SAMPLE_POINTS:
            table.add_column(f"u={u:g}", justify="right")
        for layer, item in sorted(curves.items(), key=lambda entry: int(entry[0])):
            for index, (label, values) in enumerate(item["curves"].items()):
                samples = [format_number(_value_at(item["u"], values, u), 3) for u in _SAMPLE_POINTS]
                table.add_row(str(layer) if index == 0 else "", label, Text(sparkline(values[::4]), style="cyan"), *samples)
        parts.append(table)
    if not parts:
        return Text("No mixing weights: this model has fixed activations.", style="dim")
    return Group(*parts)


# Inputs at which the effective activation is printed as numbers next to its sparkline.
_SAMPLE_POINTS = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)


def _value_at(grid: list[float], values: list[float], u: float) -> float | None:
    """Return the curve value at the grid point nearest to u."""
    if not grid:
        return None
    nearest = min(range(len(grid)), key=lambda index: abs(grid[index] - u))
    return values[nearest]


def _first_u(curves: dict[Any, dict[str, Any]]) -> float:
    return next(iter(curves.values()))["u"][0]


def _last_u(curves: dict[Any, dict[str, Any]]) -> float:
    return next(iter(curves.values()))["u"][-1]


def inspection_renderable(inspection: dict[str, Any]) -> RenderableType:
    """Render every part of an inspection, in reading order."""
    parts: list[RenderableType] = [config_tree(inspection), learning_curve_view(inspection.get("curve") or []),
                                   gate_usage_view(inspection.get("gate_usage") or {})]
    if inspection.get("model_note"):
        parts.append(Text(inspection["model_note"], style="yellow"))
    else:
        parts.append(token_preferences_view(inspection.get("token_preferences") or {}))
        parts.append(mixing_view(inspection))
    for path in inspection.get("plots") or []:
        parts.append(Text(f"wrote {path}"))
    return Group(*parts)
