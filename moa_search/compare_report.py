"""Markdown for a comparison: the per-variant table with per-seed losses, the gate usage and how
the comparison was made (command, date, machine, versions, settings)."""

from __future__ import annotations

import datetime
import platform
import subprocess
from typing import Any

from moa_search.compare import RunRecord, mean_gate_usage, summarise


def machine_description() -> str:
    """Return the CPU model and core count from lscpu, or platform facts where lscpu is missing."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return f"{platform.machine()}, {platform.processor() or 'unknown CPU'}"
    fields = dict(line.split(":", 1) for line in output.splitlines() if ":" in line)
    model = fields.get("Model name", "unknown CPU").strip()
    cpus = fields.get("CPU(s)", "?").strip()
    return f"{model}, {cpus} CPUs ({platform.machine()}, {platform.system()})"


def environment() -> dict[str, str]:
    """Return the date (UTC), machine, and Python and torch versions of this process."""
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
    }


def _variant_label(row: dict[str, Any]) -> str:
    kind = {"fixed": "fixed", "la": "LA", "moa": "MoA"}[row["kind"]]
    if row["type"] == "mlp":
        return f"{kind}, Type-I"
    if row["glu_mixing"]:
        return f"{kind}, Type-II ({row['glu_mixing']}-sided)"
    return f"{kind}, Type-II"


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Return the per-variant Markdown table, sorted by mean final validation loss."""
    lines = [
        "| variant | FFN | seeds | parameters | d_hidden | final val loss (mean ± std) | per seed | tokens/s |",
        "|---|---|---:|---:|---:|---|---|---:|",
    ]
    for row in sorted(rows, key=lambda row: row["val_loss_mean"]):
        per_seed = ", ".join(f"{loss:.4f}" for loss in row["val_losses"])
        lines.append(
            f"| {row['name']} | {_variant_label(row)} | {row['seeds']} | {row['params']:,} | {row['d_hidden']} "
            f"| {row['val_loss_mean']:.4f} ± {row['val_loss_std']:.4f} | {per_seed} | {row['tokens_per_second']:,.0f} |"
        )
    return "\n".join(lines)


def gate_usage_table(records: list[RunRecord]) -> str:
    """Return the mean gate usage of every LA and MoA variant (over layers and seeds) as Markdown;
    an empty string when no variant has gates."""
    sections = []
    for name in dict.fromkeys(record.variant for record in records):
        for branch, label in ((None, "σ(W1 x)"), ("second", "σ(W2 x)")):
            usage = mean_gate_usage(records, name, branch)
            if usage is None:
                continue
            if not sections:
                header = "| variant | branch | " + " | ".join(usage["activations"]) + " | entropy |"
                sections += [header, "|---|---|" + "---:|" * (len(usage["activations"]) + 1)]
            cells = [f"{share:.0%} / {weight:.2f}" for share, weight in zip(usage["share"], usage["mean_weight"])]
            sections.append(f"| {name} | {label} | " + " | ".join(cells) + f" | {usage['entropy']:.2f} |")
    return "\n".join(sections)


def comparison_markdown(records: list[RunRecord], *, command: str, space_text: str, env: dict[str, str],
                        planned_runs: int, notes: str = "") -> str:
    """Return the whole COMPARISON.md: the table, the gate usage, the runs and the settings used."""
    rows = summarise(records)
    done = len(records)
    status = "complete" if done == planned_runs else f"partial: {done} of {planned_runs} planned runs finished"
    parts = [
        "# MoA against fixed and learnable activations",
        "",
        f"- Command: `{command}`",
        f"- Date: {env['date']}",
        f"- Machine: {env['machine']}",
        f"- Python {env['python']}, torch {env['torch']}, torch CPU threads: {env['threads']}",
        f"- Status: {status}",
        "",
        "Every variant trained the same token budget on the built-in corpus with the settings below, "
        "and its d_hidden was chosen so that its total parameter count is within the stated tolerance "
        "of the reference variant. The final validation loss is the loss on the same fixed validation "
        "batches after the last step; the standard deviation is the sample standard deviation over seeds.",
        "",
        "## Final validation loss",
        "",
        summary_table(rows),
    ]
    usage = gate_usage_table(records)
    if usage:
        parts += [
            "",
            "## Gate usage",
            "",
            "Share of validation tokens whose largest weight is that activation / mean weight, averaged "
            "over layers and seeds. LA weights are the same for every token, so their share is 100% "
            "for one activation.",
            "",
            usage,
        ]
    if notes:
        parts += ["", "## Notes", "", notes]
    parts += ["", "## Settings", "", "```yaml", space_text.rstrip(), "```", ""]
    return "\n".join(parts)
