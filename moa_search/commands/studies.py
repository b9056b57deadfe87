"""`moa-search studies`: list the studies in a storage, or delete one after confirmation."""

from __future__ import annotations

import csv
import sys
from typing import Optional

import typer
from rich.table import Table

from moa_search import paths
from moa_search.commands.reports import STORAGE_HELP, stdout_console
from moa_search.errors import ConfigError

studies_app = typer.Typer(help="List the studies in a storage, or delete one.")

_STATES = ("complete", "pruned", "fail", "running", "waiting")


def _list(storage: Optional[str], output_format: str) -> None:
    from moa_search.render import format_number, json_text
    from moa_search.reports_source import list_studies

    if output_format not in ("table", "json", "csv"):
        raise ConfigError(f"--format: must be one of table, json, csv, got {output_format!r}")
    url = storage or paths.default_storage_url()
    listings = list_studies(url)
    if output_format == "json":
        print(json_text([listing.to_dict() for listing in listings]))
        return
    if output_format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["name", *_STATES, "best_val_loss", "best_trial", "created"])
        for item in listings:
            data = item.to_dict()
            writer.writerow([item.name, *(item.counts[state] for state in _STATES),
                             "" if item.best_val_loss is None else item.best_val_loss,
                             "" if item.best_trial is None else item.best_trial, data["created"] or ""])
        return
    if not listings:
        print(f"No studies in {url}.", file=sys.stderr)
        return
    table = Table(title="Studies", title_justify="left", header_style="bold")
    for name in ("name", *_STATES, "best val loss", "best trial", "created"):
        table.add_column(name, justify="left" if name in ("name", "created") else "right")
    for item in listings:
        table.add_row(item.name, *(str(item.counts[state]) for state in _STATES), format_number(item.best_val_loss),
                      "-" if item.best_trial is None else str(item.best_trial),
                      item.created.strftime("%Y-%m-%d %H:%M") if item.created else "-")
    stdout_console().print(table)


@studies_app.callback(invoke_without_command=True)
def studies(
    ctx: typer.Context,
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    output_format: str = typer.Option("table", "--format", help="Output format: table, json or csv."),
) -> None:
    """List the studies in a storage: name, trials by state, best val loss, created."""
    if ctx.invoked_subcommand is None:
        _list(storage, output_format)


@studies_app.command("list")
def list_command(
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    output_format: str = typer.Option("table", "--format", help="Output format: table, json or csv."),
) -> None:
    """List the studies in a storage (the same as `moa-search studies`)."""
    _list(storage, output_format)


@studies_app.command("delete")
def delete(
    name: str = typer.Argument(..., help="Name of the study to delete."),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking for confirmation."),
) -> None:
    """Delete a study and all its trials from the storage (trial artifacts on disk are kept)."""
    from moa_search.reports_source import delete_study, load_study

    url = storage or paths.default_storage_url()
    study = load_study(url, name)  # an unknown name fails here, before any question
    n_trials = len(study.get_trials(deepcopy=False))
    if not yes:
        # When stdin has no reply, click aborts with exit code 1, so nothing is deleted.
        if not typer.confirm(f"Delete study {name!r} with {n_trials} trials from {url}?", default=False, err=True):
            print("Nothing deleted.", file=sys.stderr)
            raise typer.Exit(1)
    delete_study(url, name)
    print(f"Deleted study {name!r} ({n_trials} trials).", file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Add the `studies` command group to the main app."""
    app.add_typer(studies_app, name="studies")
