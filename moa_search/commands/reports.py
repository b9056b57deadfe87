"""`moa-search leaderboard`, `inspect` and `export`: views of a study read from its storage."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from moa_search import paths
from moa_search.errors import ConfigError

STUDY_HELP = "Study name; may be omitted when the storage holds exactly one study."
STORAGE_HELP = "Optuna storage URL (default: $MOA_SEARCH_STORAGE, else an SQLite file in the results folder)."


def stdout_console() -> Console:
    """Return a Console for data on stdout; tables get 200 columns when stdout is not a terminal."""
    import os

    width = None if sys.stdout.isatty() else 200
    return Console(width=width, no_color="NO_COLOR" in os.environ or None, soft_wrap=False)


def _check_format(value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"--format: must be one of {', '.join(choices)}, got {value!r}")
    return value


def leaderboard(
    study: Optional[str] = typer.Option(None, "--study", "-s", help=STUDY_HELP),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    top: Optional[int] = typer.Option(None, "--top", "-n", help="Show only the N best ranked trials (and N of the others)."),
    states: Optional[str] = typer.Option(None, "--states", help="Comma-separated states to show: complete, pruned, fail, running, waiting (default: all)."),
    sort: str = typer.Option("val_loss", "--sort", help="Order of ranked rows: val_loss, number, params, tokens_per_second or duration_seconds."),
    output_format: str = typer.Option("table", "--format", help="Output format: table, json or csv."),
) -> None:
    """Rank the completed trials of a study by validation loss, with gate usage; failed and pruned apart."""
    from moa_search.leaderboard import build_leaderboard, parse_states
    from moa_search.render import leaderboard_renderable, rows_to_csv, rows_to_json
    from moa_search.reports_source import load_study, require_trials

    _check_format(output_format, ("table", "json", "csv"))
    loaded = load_study(storage or paths.default_storage_url(), study)
    board = build_leaderboard(require_trials(loaded), study_name=loaded.study_name,
                              states=parse_states(states), sort=sort, top=top)
    if output_format == "json":
        print(rows_to_json(board.rows()))
    elif output_format == "csv":
        sys.stdout.write(rows_to_csv(board.rows()))
    else:
        stdout_console().print(leaderboard_renderable(board))


def inspect(
    trial: str = typer.Argument("best", help="Trial number, or 'best' for the completed trial with the lowest val loss."),
    study: Optional[str] = typer.Option(None, "--study", "-s", help=STUDY_HELP),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    results: Optional[Path] = typer.Option(None, "--results", help="Results folder holding trial_N/model.pt (default: $MOA_SEARCH_RESULTS, else ./results)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write PNG figures to this folder and print their paths."),
    scan_tokens: int = typer.Option(16_384, "--scan-tokens", help="Validation tokens run through the model to find each activation's tokens."),
    top_tokens: int = typer.Option(10, "--top-tokens", help="Tokens listed per activation."),
    no_model: bool = typer.Option(False, "--no-model", help="Skip loading the trained model (no token preferences or mixing curves)."),
    output_format: str = typer.Option("table", "--format", help="Output format: table or json."),
) -> None:
    """Show one trial: config and metrics, learning curve, gate usage per layer, tokens per activation."""
    from moa_search.inspect_trial import build_inspection, write_plots
    from moa_search.inspect_view import inspection_renderable
    from moa_search.render import json_text
    from moa_search.reports_source import find_trial, load_study

    _check_format(output_format, ("table", "json"))
    if scan_tokens < 1 or top_tokens < 1:
        raise ConfigError(f"--scan-tokens and --top-tokens: must be >= 1, got {scan_tokens} and {top_tokens}")
    loaded = load_study(storage or paths.default_storage_url(), study)
    chosen = find_trial(loaded, trial)
    inspection = build_inspection(chosen, study_name=loaded.study_name, results_dir=results,
                                  with_model=not no_model, scan_tokens=scan_tokens, top_tokens=top_tokens)
    if plot is not None:
        written = write_plots(inspection, loaded.get_trials(deepcopy=False), plot)
        inspection["plots"] = [str(path) for path in written]
    if output_format == "json":
        print(json_text(inspection))
    else:
        stdout_console().print(inspection_renderable(inspection))


def export(
    trial: str = typer.Argument("best", help="Trial number, or 'best' for the completed trial with the lowest val loss."),
    study: Optional[str] = typer.Option(None, "--study", "-s", help=STUDY_HELP),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    output_format: str = typer.Option("yaml", "--format", help="yaml: the trial's config for `moa-search train`; python: its FFNConfig for the library API; csv or json: the whole leaderboard."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
) -> None:
    """Export the best (or a chosen) trial's config as YAML or Python, or the leaderboard as CSV or JSON."""
    from moa_search.config import run_config_from_dict
    from moa_search.export import export_config_yaml, ffn_python_snippet, write_text
    from moa_search.leaderboard import build_leaderboard
    from moa_search.records import trial_record
    from moa_search.render import rows_to_csv, rows_to_json
    from moa_search.reports_source import find_trial, load_study, require_trials

    _check_format(output_format, ("yaml", "python", "csv", "json"))
    loaded = load_study(storage or paths.default_storage_url(), study)
    if output_format in ("csv", "json"):
        board = build_leaderboard(require_trials(loaded), study_name=loaded.study_name)
        text = rows_to_csv(board.rows()) if output_format == "csv" else rows_to_json(board.rows()) + "\n"
    else:
        chosen = find_trial(loaded, trial)
        record = trial_record(chosen)
        if not record.config:
            raise ConfigError(f"trial {chosen.number} of study {loaded.study_name!r} has no stored config to export "
                              "(it failed before training started); choose another trial")
        config = run_config_from_dict(record.config)
        loss = (record.metrics or {}).get("val_loss")
        header = (f"moa-search export of study {loaded.study_name}, trial {chosen.number} ({chosen.state.name.lower()}"
                  + (f", val loss {loss:.4f}" if isinstance(loss, float) else "") + ")")
        if output_format == "yaml":
            text = export_config_yaml(config, header=header + "\nTrain it with: moa-search train THIS_FILE")
        else:
            text = ffn_python_snippet(config.ffn, config.ffn_per_layer, header=header)
    if output is None:
        sys.stdout.write(text)
    else:
        written = write_text(output, text)
        print(f"wrote {written}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Add `leaderboard`, `inspect` and `export` to the main app."""
    app.command("leaderboard")(leaderboard)
    app.command("inspect")(inspect)
    app.command("export")(export)
