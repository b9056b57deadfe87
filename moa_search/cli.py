"""The `moa-search` command line: global options and command registration.

Each command lives in `moa_search/commands/<name>.py` as a thin wrapper over library code and
registers itself through a `register(app)` function listed in `_COMMAND_MODULES`.
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from moa_search import __version__
from moa_search.errors import MoaSearchError
from moa_search.logs import setup_logging, stderr_console

_COMMAND_MODULES = [
    "activations",
    "bench",
    "train",
    "spaces",
    "run",
    "reports",
    "studies",
]


class _Group(TyperGroup):
    """Click group that turns a MoaSearchError into one styled line and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MoaSearchError as error:
            if os.environ.get("MOA_SEARCH_DEBUG"):
                raise
            # Escaped, because messages contain brackets that are not markup, such as 'moa-search[mysql]'.
            stderr_console().print(f"[bold red]Error:[/] {escape(str(error))}", markup=True, highlight=False,
                                   soft_wrap=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    help="Architecture search over activation banks (fixed, LA and MoA feedforward layers) with Optuna.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"moa-search {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output: -v shows debug messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr, no live display."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback for errors caused by input."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    if debug:
        os.environ["MOA_SEARCH_DEBUG"] = "1"
    setup_logging(-1 if quiet else verbose)
    if quiet:
        os.environ["MOA_SEARCH_QUIET"] = "1"


for _name in _COMMAND_MODULES:
    importlib.import_module(f"moa_search.commands.{_name}").register(app)


def main() -> None:
    """Entry point of the `moa-search` console script."""
    app()
