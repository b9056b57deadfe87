"""`moa-search bench model | compare | overhead`: whole-model throughput, the fair comparison of
FFN variants, and the search overhead per trial. `register_bench(bench_app)` adds them to the
`bench` sub-app."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from moa_search.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_COMPARISON = Path("search_spaces/comparison.yaml")


def _check_format(output_format: str, allowed: tuple[str, ...]) -> None:
    if output_format not in allowed:
        raise ConfigError(f"--format must be one of {', '.join(allowed)}, got {output_format!r}")


def _set_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads; None keeps torch's default (one per core)."""
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads: must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _command_line() -> str:
    """Return the command line of this process as the user typed it (program name shortened)."""
    program = Path(sys.argv[0]).name
    return shlex.join([program, *sys.argv[1:]])


# ---------------------------------------------------------------------------------------------
# bench compare


def _comparison_table(rows: list[dict]) -> Table:
    table = Table(title="Final validation loss at an equal token budget and parameter count")
    for name, justify in (("variant", "left"), ("kind", "left"), ("type", "left"), ("seeds", "right"),
                          ("parameters", "right"), ("d_hidden", "right"), ("val loss", "right"),
                          ("std", "right"), ("tokens/s", "right")):
        table.add_column(name, justify=justify)
    for row in sorted(rows, key=lambda row: row["val_loss_mean"]):
        table.add_row(row["name"], row["kind"], row["type"], str(row["seeds"]), f"{row['params']:,}",
                      str(row["d_hidden"]), f"{row['val_loss_mean']:.4f}", f"{row['val_loss_std']:.4f}",
                      f"{row['tokens_per_second']:,.0f}")
    return table


def compare_command(
    space_path: Path = typer.Argument(DEFAULT_COMPARISON, metavar="[SPACE.yaml]",
                                      help="Comparison file: shared base settings and the variants."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds per variant (default: comparison.seeds of the file, else 3)."),
    output: Path = typer.Option(Path("results/COMPARISON.md"), "--output",
                                help="Markdown report, rewritten after every run; the runs go to the same name with .json."),
    output_format: str = typer.Option("table", "--format", help="Summary on stdout: table or json."),
    note: str = typer.Option("", "--note", help="A remark for the Notes section of the report, such as other load on the machine."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice, one per core)."),
) -> None:
    """Train every variant at an equal token budget and parameter count, once per seed, and write
    the mean and spread of the final validation loss per variant."""
    _check_format(output_format, ("table", "json"))
    _set_threads(threads)
    from moa_search.compare import equalise, load_comparison, run_comparison, summarise
    from moa_search.compare_report import comparison_markdown, environment

    comparison = load_comparison(space_path)
    n_seeds = comparison.seeds if seeds is None else seeds
    if n_seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {n_seeds}")
    for variant in equalise(comparison):
        log.info("%s: d_hidden %d, %s parameters", variant.name, variant.config.model.d_hidden,
                 f"{_parameter_count(variant.config):,}")
    planned = n_seeds * len(comparison.variants)
    space_text = Path(space_path).read_text(encoding="utf-8")
    command, env = _command_line(), environment()
    output.parent.mkdir(parents=True, exist_ok=True)
    records = []

    def write_report(record) -> None:
        # Rewritten after each run, so an interrupted comparison leaves an honest partial report.
        records.append(record)
        log.info("%s seed %d: val loss %.4f, %.0f tokens/s, %.0f s", record.variant, record.seed,
                 record.val_loss, record.tokens_per_second, record.wall_seconds)
        output.write_text(comparison_markdown(records, command=command, space_text=space_text, env=env,
                                              planned_runs=planned, notes=note), encoding="utf-8")
        output.with_suffix(".json").write_text(
            json.dumps({"command": command, **env, "runs": [r.to_dict() for r in records]}, indent=2),
            encoding="utf-8")

    run_comparison(comparison, seeds=n_seeds, on_run=write_report)
    rows = summarise(records)
    if output_format == "json":
        print(json.dumps(rows, indent=2))
    else:
        console = Console()
        if not console.is_terminal:  # piped output: keep the columns unsqueezed
            console = Console(width=160)
        console.print(_comparison_table(rows))
    log.info("wrote %s and %s", output, output.with_suffix(".json"))


def _parameter_count(config) -> int:
    from moa_search.compare import parameter_count

    return parameter_count(config)


def register_bench(bench_app: typer.Typer) -> None:
    """Add `model`, `compare` and `overhead` to the `bench` sub-app."""
    bench_app.command("compare")(compare_command)

