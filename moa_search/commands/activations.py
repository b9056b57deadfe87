"""`moa-search activations list`: show the activation dictionary."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from moa_search.activations import ACTIVATIONS
from moa_search.errors import ConfigError

activations_app = typer.Typer(help="The activation dictionary that banks draw from.", no_args_is_help=True)

FORMATS = ("table", "json", "csv")


def dictionary_rows() -> list[dict[str, str]]:
    """Return one row (name, formula, source) per dictionary entry, in dictionary order."""
    return [{"name": entry.name, "formula": entry.formula, "source": entry.source}
            for entry in ACTIVATIONS.values()]


def _table(rows: list[dict[str, str]]) -> Table:
    table = Table(title="Activation dictionary")
    for column in ("name", "formula", "source"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["formula"], row["source"])
    return table


@activations_app.command("list")
def list_activations(
    output_format: str = typer.Option("table", "--format", help="Output format: table, json or csv."),
) -> None:
    """List every activation a bank may name, with its formula and source."""
    if output_format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    rows = dictionary_rows()
    if output_format == "json":
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    elif output_format == "csv":
        import csv
        import sys

        writer = csv.DictWriter(sys.stdout, fieldnames=["name", "formula", "source"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        Console(soft_wrap=True).print(_table(rows))


def register(app: typer.Typer) -> None:
    """Add the `activations` command group to the main app."""
    app.add_typer(activations_app, name="activations")
