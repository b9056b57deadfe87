"""`moa-search train`: train one configuration, no search, and print its final metrics."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console, Group
from rich.table import Table

from moa_search.config import load_run_config, run_config_to_dict
from moa_search.errors import ConfigError
from moa_search.logs import is_interactive

FORMATS = ("table", "json")


def metrics_table(metrics: dict[str, Any]) -> Table:
    """Return the final metrics of a run (`TrainResult.to_dict()`) as a two-column table."""
    table = Table(title="Training result", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("val_loss", f"{metrics['val_loss']:.4f}"),
        ("best_val_loss", f"{metrics['best_val_loss']:.4f}"),
        ("train_loss", f"{metrics['train_loss']:.4f}"),
        ("steps", f"{metrics['steps']:,}"),
        ("tokens", f"{metrics['tokens']:,}"),
        ("tokens_per_second", f"{metrics['tokens_per_second']:,.0f}"),
        ("wall_seconds", f"{metrics['wall_seconds']:.1f}"),
        ("device", metrics["device"]),
        ("tokenizer", metrics["tokenizer"]),
    ]
    rows += [(f"params.{part}", f"{count:,}") for part, count in metrics["params"].items()]
    for name, value in rows:
        table.add_row(name, value)
    return table


def gate_usage_table(gate_usage: dict[str, dict]) -> Table | None:
    """Return per-layer gate usage as "share of tokens / mean weight" per activation, or None
    when the model has no gates (fixed activations)."""
    if not gate_usage:
        return None
    table = Table(title="Gate usage on the validation batches (share of tokens / mean weight)")
    table.add_column("layer")
    activations = next(iter(gate_usage.values()))["activations"]
    for name in activations:
        table.add_column(name, justify="right")
    table.add_column("entropy", justify="right")
    for layer, usage in gate_usage.items():
        branches = [("", usage)] + ([(" (W2 x)", usage["second"])] if usage.get("second") else [])
        for suffix, branch in branches:
            cells = [f"{share:.0%} / {weight:.2f}" for share, weight in zip(branch["share"], branch["mean_weight"])]
            table.add_row(f"{layer}{suffix}", *cells, f"{branch['entropy']:.2f}")
    return table


def _render_table(metrics: dict[str, Any]) -> Group:
    parts = [metrics_table(metrics)]
    usage = gate_usage_table(metrics["gate_usage"])
    if usage is not None:
        parts.append(usage)
    return Group(*parts)


def train_command(
    config_path: Optional[Path] = typer.Argument(
        None, metavar="[CONFIG.yaml]", help="Run config (sections model, ffn, data, train); defaults when omitted."),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Override one setting, e.g. --set train.lr=1e-3 (repeatable)."),
    output_format: str = typer.Option("table", "--format", help="Output format of the final metrics: table or json."),
    device: Optional[str] = typer.Option(None, "--device", help="Device to train on: auto, cpu, cuda or cuda:N (sets train.device)."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", metavar="PATH", help="Save a checkpoint to PATH at every evaluation."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint at --checkpoint PATH when it exists."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="torch CPU threads (default: torch's choice, one per core); 1 helps on shared cores."),
) -> None:
    """Train one configuration on its corpus and print validation loss, throughput and gate usage."""
    if output_format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads: must be >= 1, got {threads}")
    if resume and checkpoint is None:
        raise ConfigError("--resume needs --checkpoint PATH, the checkpoint to continue from")
    if checkpoint is not None and checkpoint.exists() and not resume:
        raise ConfigError(f"--checkpoint {checkpoint}: the file exists; add --resume to continue from it, "
                          "or remove it to train from step 0")
    if checkpoint is not None:
        _check_writable_folder(checkpoint)
    settings = list(overrides or [])
    if device is not None:
        settings.append(f"train.device={device}")
    config = load_run_config(config_path, settings)

    from moa_search.trainer import train  # late import: torch loads only when a run starts

    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    show_progress = is_interactive() and not os.environ.get("MOA_SEARCH_QUIET")
    result = train(config, checkpoint_path=checkpoint, resume=resume, show_progress=show_progress)
    metrics = result.to_dict()
    if output_format == "json":
        print(json.dumps({**metrics, "config": run_config_to_dict(config)}, indent=2))
    else:
        Console(soft_wrap=True).print(_render_table(metrics))


def register(app: typer.Typer) -> None:
    """Add the `train` command to the main app."""
    app.command("train")(train_command)


def _check_writable_folder(checkpoint: Path) -> None:
    """Raise ConfigError unless the checkpoint's folder can be created and written, so that a bad
    path fails before training instead of at the first evaluation."""
    folder = checkpoint.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".moa-search-write-check-"):
            pass
    except OSError as error:
        raise ConfigError(f"--checkpoint {checkpoint}: cannot write to the folder {folder} "
                          f"({error.strerror or error}); choose a writable path") from None
