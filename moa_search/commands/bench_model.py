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

DEFAULT_COMPARISON = Path("search_spaces/comparisons/moa_vs_baselines.yaml")


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
    """Train FFN variants at an equal token budget and parameter count and report their losses.

    Every variant trains once per seed; the report has the mean and spread of the final validation
    loss per variant, the parameter counts and the gate usage of the LA and MoA runs.
    """
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


# ---------------------------------------------------------------------------------------------
# bench model


MODEL_TABLE_FIELDS = ["name", "compiled", "params", "tokens_per_second", "throughput_ratio",
                      "peak_memory_bytes", "memory_ratio"]


def model_command(
    output_format: str = typer.Option("table", "--format", help="Output format: table, json or csv."),
    compile_: bool = typer.Option(True, "--compile/--no-compile", help="Also measure every variant under torch.compile."),
    steps: int = typer.Option(5, "--steps", min=1, help="Training steps per variant in each timed window."),
    windows: int = typer.Option(5, "--windows", min=1, help="Timed windows; tokens/s is the median over them."),
    warmup: int = typer.Option(3, "--warmup", min=1, help="Untimed steps per variant before timing (these also compile)."),
    d_model: int = typer.Option(128, "--d-model", min=8, help="Model width; d_hidden is the default of each FFN type."),
    n_layers: int = typer.Option(4, "--n-layers", min=1, help="Transformer blocks."),
    n_heads: int = typer.Option(4, "--n-heads", min=1, help="Attention heads."),
    context_length: int = typer.Option(128, "--context-length", min=2, help="Tokens per sequence."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Sequences per training step."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice, one per core)."),
) -> None:
    """Measure tokens/s and peak memory of training steps for each FFN kind, as ratios to GELU.

    One small GPT with GELU, SwiGLU, LA and MoA (K = 4) FFNs, eager and compiled, interleaved in one
    process; tokens/s is the median over timed windows.
    """
    from moa_search.bench_model import ModelBenchSettings, ROW_FIELDS, run_model_bench
    from moa_search.commands.bench import check_format, print_rows
    from moa_search.compare_report import environment

    check_format(output_format)
    _set_threads(threads)
    settings = ModelBenchSettings(d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                                  context_length=context_length, batch_size=batch_size, steps=steps,
                                  windows=windows, warmup=warmup, device=device)
    env = environment()
    log.info("machine: %s, %s torch threads, torch %s", env["machine"], env["threads"], env["torch"])
    rows = run_model_bench(settings, compiled_modes=(False, True) if compile_ else (False,))
    print_rows(rows, list(ROW_FIELDS) if output_format != "table" else MODEL_TABLE_FIELDS, output_format,
               title=f"Training steps of a GPT (d_model {d_model}, {n_layers} layers, "
                     f"{batch_size}x{context_length} tokens per step); ratios to GELU in the same mode")


# ---------------------------------------------------------------------------------------------
# bench overhead


def overhead_command(
    space_path: Path = typer.Argument(Path("search_spaces/quick.yaml"), metavar="[SPACE.yaml]",
                                      help="Search space of the measured study."),
    n_trials: int = typer.Option(4, "--n-trials", min=1, help="Search trials to finish; the two baselines run on top."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Storage URL of the measured study (default: an SQLite file in a temporary folder)."),
    output_format: str = typer.Option("table", "--format", help="Output format: table or json."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice, one per core)."),
) -> None:
    """Run a real small study and measure the share of its time spent outside training.

    Outside training means sampling, storage writes, reporting and saving models.
    """
    import datetime
    import os
    import tempfile

    from moa_search.bench_overhead import measure_search_overhead
    from moa_search.paths import RESULTS_ENV

    _check_format(output_format, ("table", "json"))
    _set_threads(threads)
    study_name = "bench-overhead-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="moa-search-overhead-") as folder:
        # The measured study's model.pt files go to the temporary folder, not the results folder.
        previous = os.environ.get(RESULTS_ENV)
        os.environ[RESULTS_ENV] = folder
        try:
            url = storage or f"sqlite:///{Path(folder, 'overhead.db').as_posix()}"
            result = measure_search_overhead(space_path, url, n_trials=n_trials, study_name=study_name)
        finally:
            if previous is None:
                os.environ.pop(RESULTS_ENV, None)
            else:
                os.environ[RESULTS_ENV] = previous
    if output_format == "json":
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"Search overhead of study {result['study']} ({result['trials']} trials)")
    for name in ("trial", "state", "trial s", "training s", "on_eval s", "outside s", "overhead"):
        table.add_column(name, justify="left" if name in ("trial", "state") else "right")
    for row in result["per_trial"]:
        table.add_row(str(row["number"]), row["state"], f"{row['trial_seconds']:.2f}", f"{row['train_seconds']:.2f}",
                      f"{row['on_eval_seconds']:.3f}", f"{row['outside_seconds']:.3f}", f"{row['overhead_share']:.2%}")
    table.add_row("all", "", f"{result['loop_seconds']:.2f}", f"{result['train_seconds']:.2f}",
                  f"{result['on_eval_seconds']:.3f}", f"{result['outside_seconds']:.3f}", f"{result['overhead_share']:.2%}")
    Console(width=160).print(table)
    print(f"overhead without the one-time corpus load ({result['corpus_seconds']:.2f} s): "
          f"{result['overhead_share_without_corpus_load']:.2%}")


def register_bench(bench_app: typer.Typer) -> None:
    """Add `model`, `compare` and `overhead` to the `bench` sub-app."""
    bench_app.command("model")(model_command)
    bench_app.command("compare")(compare_command)
    bench_app.command("overhead")(overhead_command)

