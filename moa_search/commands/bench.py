"""`moa-search bench`: overhead benchmarks. Each benchmark is one command of the `bench` group."""

from __future__ import annotations

import csv
import json
import logging
import sys

import typer
from rich.console import Console
from rich.table import Table

from moa_search.errors import ConfigError

logger = logging.getLogger(__name__)

bench_app = typer.Typer(help="Measure the time and memory overhead of MoA layers.", no_args_is_help=True)

FORMATS = ("table", "json", "csv")


def check_format(output_format: str) -> None:
    """Raise ConfigError unless the --format value is one the bench commands print."""
    if output_format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {output_format!r}")


def print_rows(rows: list[dict], fields: list[str], output_format: str, title: str) -> None:
    """Print benchmark rows to stdout as a Rich table, JSON (a list of rows) or CSV."""
    if output_format == "json":
        print(json.dumps(rows, indent=2))
        return
    if output_format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    table = Table(title=title)
    for field in fields:
        table.add_column(field, justify="right" if field.endswith(("_ms", "_ratio", "_bytes")) else "left")
    for row in rows:
        table.add_row(*(_cell(row.get(field)) for field in fields))
    console = Console()
    if not console.is_terminal:  # piped output: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.1f}"
    return "" if value is None else str(value)


def _parse_bank_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--bank-sizes must be comma-separated integers such as 2,4,6, got {text!r}") from None
    if not sizes or any(not 1 <= size <= 6 for size in sizes):
        raise ConfigError(f"--bank-sizes must be between 1 and 6, got {text!r}")
    return sizes


@bench_app.command("ffn")
def bench_ffn(
    d_model: int = typer.Option(512, "--d-model", min=8, help="Width of the FFN input and output; d_hidden is 4·d_model (Type-I) or 8/3·d_model (Type-II)."),
    tokens: int = typer.Option(2048, "--tokens", min=1, help="Tokens per forward+backward step."),
    iterations: int = typer.Option(10, "--iterations", min=1, help="Timed steps per case; the reported time is their median."),
    warmup: int = typer.Option(3, "--warmup", min=1, help="Untimed steps per case before timing (these also compile)."),
    bank_sizes: str = typer.Option("2,4,6", "--bank-sizes", help="Bank sizes K to measure, comma-separated."),
    compile_: bool = typer.Option(True, "--compile/--no-compile", help="Also measure the torch.compile mixing path."),
    quick: bool = typer.Option(False, "--quick", help="Only K=4 with at most 5 iterations, for a first look."),
    output_format: str = typer.Option("table", "--format", help="Output format: table, json or csv."),
) -> None:
    """Time forward+backward and count saved-activation bytes of fixed, LA and MoA FFN blocks.

    Ratios are to a fixed GELU FFN (Type-I rows) and to SwiGLU (Type-II rows), all measured in
    this process with interleaved iterations.
    """
    from moa_search.bench.ffn import machine_summary, row_fields, run_ffn_bench

    check_format(output_format)
    sizes = _parse_bank_sizes(bank_sizes)
    if quick:
        sizes, iterations = (4,), min(iterations, 5)
    machine = machine_summary()
    logger.info("machine: %s, %s threads, torch %s, Python %s",
                machine["cpu"], machine["threads"], machine["torch"], machine["python"])
    rows = run_ffn_bench(d_model=d_model, tokens=tokens, iterations=iterations, warmup=warmup,
                         bank_sizes=sizes, compiled=compile_)
    fields = ["name", "bank_size", "top_k", "compiled", "time_ms", "time_ratio", "saved_bytes", "saved_ratio"]
    print_rows(rows, row_fields() if output_format != "table" else fields, output_format,
               title=f"FFN block forward+backward, d_model {d_model}, {tokens} tokens")


def register(app: typer.Typer) -> None:
    """Add the `bench` command group to the main app (other benchmarks add commands to bench_app)."""
    from moa_search.commands.bench_model import register_bench  # bench model, compare, overhead

    register_bench(bench_app)
    app.add_typer(bench_app, name="bench")
