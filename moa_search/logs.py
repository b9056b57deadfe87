"""Logging set-up for the command line. Library modules only call `logging.getLogger(__name__)`."""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.logging import RichHandler

_stderr_console: Console | None = None


def stderr_console() -> Console:
    """Return the shared Console for progress and logs (stderr); NO_COLOR turns colour off."""
    global _stderr_console
    if _stderr_console is None:
        _stderr_console = Console(stderr=True, no_color="NO_COLOR" in os.environ or None)
    return _stderr_console


def is_interactive() -> bool:
    """True when animated output is wanted: stderr is a terminal and NO_COLOR is unset."""
    return sys.stderr.isatty() and "NO_COLOR" not in os.environ


def setup_logging(verbosity: int = 0) -> None:
    """Send moa_search logs to stderr: -1 warnings only (--quiet), 0 info, 1 or more debug (-v).

    On a terminal the lines go through Rich; otherwise (a pipe, a file, NO_COLOR) each record is one
    plain, unwrapped line, so logs stay greppable.
    """
    if verbosity < 0:
        level = logging.WARNING
    elif verbosity == 0:
        level = logging.INFO
    else:
        level = logging.DEBUG
    handler: logging.Handler
    if is_interactive():
        handler = RichHandler(console=stderr_console(), show_path=verbosity > 0, rich_tracebacks=False,
                              markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("moa_search")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Optuna logs every finished trial at INFO; moa-search reports trials itself.
    import optuna

    optuna.logging.set_verbosity(logging.WARNING if verbosity <= 0 else logging.INFO)
