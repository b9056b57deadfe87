"""`moa-search spaces validate|show`: check a search space file and show what it searches."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from moa_search.errors import ConfigError, MoaSearchError
from moa_search.logs import stderr_console
from moa_search.space import SearchSpace, load_space
from moa_search.space_params import BankChoices, Choices

spaces_app = typer.Typer(help="Check and show search space files.", no_args_is_help=True)

FORMATS = ("table", "json", "csv")


def dimension_rows(space: SearchSpace) -> list[dict[str, Any]]:
    """Return one row per search dimension: key, type, values, count (None if continuous), condition."""
    rows = []
    for dimension in space.dimensions:
        values = dimension.grid_values()
        if isinstance(dimension, BankChoices):
            kind = "bank"
        elif isinstance(dimension, Choices):
            kind = "choices"
        else:
            kind = "range"
        rows.append({
            "key": dimension.key,
            "type": kind,
            "values": dimension.describe(),
            "count": None if values is None else len(values),
            "condition": space.condition(dimension.key),
            "definition": dimension.to_dict(),
        })
    return rows


def space_summary(space: SearchSpace) -> dict[str, Any]:
    """Return the resolved space as plain data: dimensions, fixed settings, size, hash and study settings."""
    size = space.size()
    resolved = space.to_dict()
    return {
        "path": space.path,
        "study_name": space.study_name,
        "hash": space.hash(),
        "size": size,
        "distinct_configs": space.distinct_size(),
        "continuous": size is None,
        "dimensions": dimension_rows(space),
        "fixed": resolved["fixed"],
        "study": resolved["study"],
    }


def _size_text(size: int | None, distinct: int | None = None) -> str:
    if size is None:
        return "continuous"
    if distinct is not None and distinct != size:
        return f"{size} grid points ({distinct} distinct run configs)"
    return f"{size} grid points"


def _render(summary: dict[str, Any], written: set[str]) -> Group:
    dimensions = Table(title=f"Search dimensions of {summary['path']}", title_justify="left")
    for column in ("parameter", "type", "values", "count", "searched when"):
        dimensions.add_column(column, overflow="fold")
    for row in summary["dimensions"]:
        count = "continuous" if row["count"] is None else str(row["count"])
        dimensions.add_row(row["key"], row["type"], row["values"], count, row["condition"] or "always")
    fixed = Table(title="Fixed settings", title_justify="left")
    for column in ("setting", "value", "from"):
        fixed.add_column(column, overflow="fold")
    for key, value in summary["fixed"].items():
        fixed.add_row(key, json.dumps(value), "file" if key in written else "default")
    study = ", ".join(f"{key}={value}" for key, value in summary["study"].items() if value is not None)
    footer = Text(
        f"size: {_size_text(summary['size'], summary['distinct_configs'])}\nstudy: {summary['study_name']} ({study})\nhash: {summary['hash']}"
    )
    return Group(dimensions, fixed, footer)


@spaces_app.command("validate")
def validate(
    files: list[Path] = typer.Argument(..., help="Search space YAML files to check."),
) -> None:
    """Check search space files without training; print one line per valid file, errors on stderr."""
    failed = 0
    for file in files:
        try:
            space = load_space(file)
        except MoaSearchError as error:
            stderr_console().print(f"[bold red]Error:[/] {error}", markup=True, highlight=False, soft_wrap=True)
            failed += 1
            continue
        print(f"{file}: valid, {len(space.dimensions)} dimensions, {_size_text(space.size())}")
    if failed:
        raise typer.Exit(1)


@spaces_app.command("show")
def show(
    file: Path = typer.Argument(..., help="Search space YAML file."),
    output_format: str = typer.Option("table", "--format", help="Output format: table, json or csv (csv lists the dimensions)."),
) -> None:
    """Show the resolved space: its dimensions, fixed settings, size (or "continuous") and study settings."""
    if output_format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    space = load_space(file)
    summary = space_summary(space)
    if output_format == "json":
        print(json.dumps(summary, indent=2))
    elif output_format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=["key", "type", "values", "count", "condition"],
                                extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(summary["dimensions"])
    else:
        written = {f"{section}.{name}" for section, values in space.fixed.items() for name in values}
        Console(soft_wrap=True).print(_render(summary, written))


def register(app: typer.Typer) -> None:
    """Add the `spaces` command group to the main app."""
    app.add_typer(spaces_app, name="spaces")
