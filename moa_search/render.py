"""Pure renderers: leaderboard rows in, Rich tables, CSV or JSON text out. Nothing here prints."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from moa_search.leaderboard import Leaderboard

_BLOCKS = "▁▂▃▄▅▆▇█"

# Columns of the CSV export, in order; nested values are flattened by `_csv_value`.
CSV_COLUMNS = (
    "rank", "number", "state", "val_loss", "delta", "delta_percent", "is_baseline", "baseline",
    "kind", "type", "glu_mixing", "bank", "gate", "temperature", "top_k", "params",
    "tokens_per_second", "duration_seconds", "gate_share", "mixing_weight", "gate_entropy", "collapsed", "reason",
)


def format_number(value: Any, digits: int = 4) -> str:
    """Format a float with `digits` decimals, or "-" for a missing or non-finite value."""
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def format_count(value: Any) -> str:
    """Format a count compactly: 950, 12.3k, 1.25M."""
    if value is None:
        return "-"
    value = float(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}"


def format_duration(seconds: Any) -> str:
    """Format seconds as 42s, 3m05s or 2h04m."""
    if seconds is None:
        return "-"
    seconds = int(round(float(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def sparkline(values: Sequence[float | None]) -> str:
    """Return one block character per value, scaled between the minimum and maximum finite value."""
    finite = [value for value in values if value is not None and math.isfinite(value)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    return "".join(
        " " if value is None or not math.isfinite(value)
        else _BLOCKS[min(len(_BLOCKS) - 1, int((value - low) / span * len(_BLOCKS)))]
        for value in values
    )


def share_bar(share: float) -> str:
    """Return one block character whose height shows a share in [0, 1]."""
    return _BLOCKS[max(0, min(len(_BLOCKS) - 1, int(share * len(_BLOCKS))))]


def gate_usage_cell(row: dict[str, Any]) -> Text:
    """Render the mean gate usage of a row, then the entropy.

    MoA layers show a bar and percent of tokens per activation. LA layers show α, the learned
    mixing weights, because every token gets the same LA weights.
    """
    share = row.get("gate_share")
    mixing = row.get("mixing_weight")
    if not share and not mixing:
        return Text("-")
    text = Text()
    for name, value in (share or {}).items():
        text.append(f"{name} ")
        text.append(share_bar(value), style="cyan")
        text.append(f"{100 * value:.0f} ")
    if mixing:
        text.append("| " if share else "")
        text.append("α ", style="cyan")
        text.append(" ".join(f"{name} {value:.2f}" for name, value in mixing.items()) + " ")
    text.append(f"H {row['gate_entropy']:.2f}", style="dim")
    if row.get("collapsed"):
        text.append(" ⚠ collapse", style="bold yellow")
    return text


def _delta_cell(row: dict[str, Any]) -> Text:
    if row.get("delta") is None:
        return Text("-")
    style = ""
    if row["delta"] < 0:
        style = "green"
    elif row["delta"] > 0:
        style = "red"
    percent = f" ({row['delta_percent']:+.2f}%)" if row.get("delta_percent") is not None else ""
    return Text(f"{row['delta']:+.4f}{percent}", style=style)


def _bank_cell(row: dict[str, Any]) -> str:
    return "+".join(row.get("bank") or []) or "-"


def _kind_cell(row: dict[str, Any]) -> str:
    kind = f"{row.get('kind') or '?'}/{row.get('type') or '?'}"
    return f"{kind}/{row['glu_mixing']}" if row.get("glu_mixing") else kind


def _number_cell(row: dict[str, Any]) -> Text:
    text = Text(str(row["number"]))
    if row.get("is_baseline"):
        text.append(f" ◆{row.get('baseline') or 'baseline'}", style="magenta")
    return text


def _gate_cell(row: dict[str, Any]) -> str:
    if not row.get("gate"):
        return "-"
    top_k = f"top-{row['top_k']}" if row.get("top_k") is not None else "dense"
    return f"{row['gate']} τ={row['temperature']:g} {top_k}"


def leaderboard_table(board: Leaderboard) -> Table:
    """Return the table of ranked (completed) trials."""
    table = Table(title=f"Leaderboard of study {board.study_name}" if board.study_name else "Leaderboard",
                  title_justify="left", header_style="bold", caption_justify="left",
                  caption="gate usage: % of tokens whose largest gate weight is each activation (mean over "
                          "MoA layers), α: learned mixing weights (mean over LA layers), "
                          "H: normalised gate entropy")
    for name, justify in (("rank", "right"), ("trial", "left"), ("val loss", "right"), ("Δ best baseline", "right"),
                          ("kind/type", "left"), ("bank", "left"), ("gate", "left"), ("params", "right"),
                          ("tok/s", "right"), ("time", "right"), ("gate usage", "left")):
        table.add_column(name, justify=justify)
    for row in board.ranked:
        table.add_row(
            str(row["rank"]), _number_cell(row), format_number(row["val_loss"]), _delta_cell(row),
            _kind_cell(row), _bank_cell(row), _gate_cell(row), format_count(row.get("params")),
            format_count(row.get("tokens_per_second")), format_duration(row.get("duration_seconds")),
            gate_usage_cell(row),
        )
    return table


def unranked_table(board: Leaderboard) -> Table:
    """Return the table of failed, pruned and running trials with their reason or progress."""
    table = Table(title="Not ranked (failed, pruned, running)", title_justify="left", header_style="bold")
    for name in ("trial", "state", "kind/type", "bank", "last val loss", "reason or progress"):
        table.add_column(name)
    for row in board.unranked:
        style = {"fail": "red", "pruned": "yellow", "running": "cyan"}.get(row["state"], "")
        table.add_row(_number_cell(row), Text(row["state"], style=style), _kind_cell(row), _bank_cell(row),
                      format_number(row.get("val_loss")), _reason_cell(row))
    return table


def _reason_cell(row: dict[str, Any]) -> str:
    progress = row.get("progress")
    if row["state"] == "running" and progress:
        return f"step {progress.get('step')}/{progress.get('max_steps')}"
    return row.get("reason") or "-"


def leaderboard_renderable(board: Leaderboard) -> RenderableType:
    """Return the ranked table, the best baseline line and the unranked table as one renderable."""
    parts: list[RenderableType] = []
    if board.ranked:
        parts.append(leaderboard_table(board))
    else:
        parts.append(Text("No completed trial to rank yet.", style="dim"))
    if board.best_baseline:
        best = board.best_baseline
        parts.append(Text(f"Best baseline: trial {best['number']} ({best['baseline']}), "
                          f"val loss {best['val_loss']:.4f}. ◆ marks baselines.", style="dim"))
    else:
        parts.append(Text("No completed baseline yet, so Δ best baseline is empty.", style="dim"))
    if board.unranked:
        parts.append(unranked_table(board))
    return Group(*parts)


def rows_to_json(rows: Sequence[dict[str, Any]]) -> str:
    """Return the rows as a JSON array (non-finite floats become null, which JSON requires)."""
    return json_text(list(rows))


def json_text(value: Any) -> str:
    """Return indented JSON; NaN and infinities become null because JSON has no such numbers."""
    return json.dumps(_json_safe(value), indent=2, ensure_ascii=False)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Return the rows as CSV with a header; the bank is joined by "+", gate shares as name=share."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_csv_value(column, row.get(column)) for column in CSV_COLUMNS])
    return buffer.getvalue()


def _csv_value(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column == "bank":
        return "+".join(value)
    if column in ("gate_share", "mixing_weight"):
        return ";".join(f"{name}={share:.4f}" for name, share in value.items())
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
