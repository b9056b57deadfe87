"""The live view of a running study: progress per running trial, the budget and the leaderboard top.

`StudyDisplay` polls the study storage from a background thread, so it shows trials of every worker
that writes to the same storage, not only those of this process. On a terminal it animates a Rich
Live panel on stderr. When stderr is not a terminal or NO_COLOR is set, it writes plain log lines
instead (one per trial start, evaluation and finish). Under --quiet it shows nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from moa_search.leaderboard import Leaderboard, build_leaderboard
from moa_search.logs import is_interactive, stderr_console
from moa_search.render import format_count, format_duration, format_number, leaderboard_table

logger = logging.getLogger(__name__)

QUIET_ENV = "MOA_SEARCH_QUIET"


def display_mode() -> str:
    """Return "quiet" (--quiet), "live" (terminal with colour) or "log" (plain lines)."""
    if os.environ.get(QUIET_ENV):
        return "quiet"
    return "live" if is_interactive() else "log"


# ---------------------------------------------------------------------------------------------
# Pure views: trials in, renderables or log lines out


def budget_line(trials: Sequence[FrozenTrial], n_trials: int | None, elapsed_seconds: float) -> RenderableType:
    """Render the overall budget: finished (complete or pruned) search trials of n_trials.

    Baselines and failed trials do not count toward the budget, the same rule the workers follow.
    """
    from moa_search.study import count_budget

    budget = count_budget(trials)
    counts = _count_states(trials)
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        Text("budget", style="bold"),
        ProgressBar(total=n_trials or max(budget.finished, 1), completed=budget.finished, width=30),
        Text(f"{budget.finished}/{n_trials if n_trials else '?'} search trials finished · {counts['running']} running · "
             f"{counts['complete']} complete · {counts['pruned']} pruned · {counts['fail']} failed · "
             f"{format_duration(elapsed_seconds)} elapsed"),
    )
    return grid


def _count_states(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    counts = {"complete": 0, "running": 0, "pruned": 0, "fail": 0, "waiting": 0}
    for trial in trials:
        counts[trial.state.name.lower()] += 1
    return counts


def running_trials_view(board: Leaderboard) -> RenderableType:
    """Render one progress bar per running trial: step, tokens, losses, tokens/s and ETA."""
    running = [row for row in board.unranked if row["state"] == "running"]
    if not running:
        return Text("No trial running.", style="dim")
    grid = Table.grid(padding=(0, 1))
    for row in running:
        progress = row.get("progress") or {}
        step, max_steps = progress.get("step") or 0, progress.get("max_steps") or 0
        label = Text(f"trial {row['number']}", style="bold cyan")
        label.append(f" {row.get('kind') or '?'}/{row.get('type') or '?'} {'+'.join(row.get('bank') or [])}", style="")
        grid.add_row(label, ProgressBar(total=max(max_steps, 1), completed=step, width=24), Text(progress_text(progress)))
    return grid


def progress_text(progress: dict[str, Any]) -> str:
    """Format a "progress" record: step, tokens, train and val loss, tokens/s and ETA."""
    if not progress:
        return "starting"
    return (f"step {progress.get('step')}/{progress.get('max_steps')} · {format_count(progress.get('tokens'))} tok · "
            f"train {format_number(progress.get('train_loss'), 3)} · val {format_number(progress.get('val_loss'), 3)} · "
            f"{format_count(progress.get('tokens_per_second'))} tok/s · ETA {format_duration(progress.get('eta_seconds'))}")


def live_view(trials: Sequence[FrozenTrial], study_name: str, n_trials: int | None,
              elapsed_seconds: float, top: int = 5) -> RenderableType:
    """Render the whole live panel: budget, running trials and the top of the leaderboard."""
    board = build_leaderboard(trials, study_name=study_name)
    top_board = Leaderboard(study_name=study_name, ranked=board.ranked[:top], best_baseline=board.best_baseline)
    parts: list[RenderableType] = [budget_line(trials, n_trials, elapsed_seconds), running_trials_view(board)]
    if top_board.ranked:
        parts.append(leaderboard_table(top_board))
    return Group(*parts)


@dataclass
class _Seen:
    """Trial states and steps already logged, so each event is logged once."""

    states: dict[int, TrialState] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)


def log_lines(trials: Sequence[FrozenTrial], seen: _Seen) -> list[str]:
    """Return plain lines for what changed since the last call (starts, evaluations, finishes); updates `seen`."""
    board = build_leaderboard(trials)
    rows = {row["number"]: row for row in board.rows()}
    lines = []
    for trial in sorted(trials, key=lambda item: item.number):
        row = rows[trial.number]
        before = seen.states.get(trial.number)
        seen.states[trial.number] = trial.state
        if trial.state == TrialState.RUNNING:
            if before is None:
                lines.append(f"trial {trial.number} started: {row.get('kind')}/{row.get('type')} {'+'.join(row.get('bank') or [])}")
            step = (row.get("progress") or {}).get("step")
            if step is not None and seen.steps.get(trial.number) != step:
                seen.steps[trial.number] = step
                lines.append(f"trial {trial.number}: {progress_text(row['progress'])}")
        elif before != trial.state and trial.state != TrialState.WAITING:
            lines.append(finish_line(row, board))
    return lines


def finish_line(row: dict[str, Any], board: Leaderboard) -> str:
    """Describe a finished trial: loss, rank and difference to the best baseline, or the reason."""
    if row["state"] == "complete":
        delta = f", {row['delta']:+.4f} vs best baseline" if row.get("delta") is not None else ""
        rank = f" (rank {row['rank']} of {len(board.ranked)}{delta})" if row.get("rank") else ""
        return f"trial {row['number']} complete: val loss {format_number(row['val_loss'])}{rank}"
    return f"trial {row['number']} {row['state']}: {row.get('reason') or 'no reason stored'}"


# ---------------------------------------------------------------------------------------------
# The polling display


class StudyDisplay:
    """Context manager that shows a study's progress while the body runs trials.

    Use as `with StudyDisplay(storage_url, study_name, n_trials): run_trials(...)`. A background
    thread reads the storage every `refresh_seconds`. A read error is logged once and the read is
    retried at the next refresh, because the display must not stop the search.
    """

    def __init__(self, storage_url: str, study_name: str, n_trials: int | None, *,
                 refresh_seconds: float = 2.0, top: int = 5, mode: str | None = None,
                 console: Console | None = None) -> None:
        self.storage_url = storage_url
        self.study_name = study_name
        self.n_trials = n_trials
        self.refresh_seconds = refresh_seconds
        self.top = top
        self.mode = mode or display_mode()
        self.console = console or stderr_console()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._seen = _Seen()
        self._started = time.monotonic()
        self._read_failed = False
        self._study = None
        self._last_signature: tuple | None = None

    def __enter__(self) -> StudyDisplay:
        if self.mode == "quiet":
            return self
        self._started = time.monotonic()
        if self.mode == "log":
            # A resumed study already has finished trials; log only what happens from now on.
            for trial in self.read_trials() or []:
                self._seen.states[trial.number] = trial.state
        if self.mode == "live":
            # Redrawn only from refresh(), so rendering costs nothing between polls.
            self._live = Live(Text("Loading the study...", style="dim"), console=self.console,
                              auto_refresh=False, transient=False)
            self._live.start()
        self._thread = threading.Thread(target=self._run, name="moa-search-display", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self.refresh()  # the final state, so the last finished trial always shows
        if self._live is not None:
            self._live.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            self.refresh()

    def read_trials(self) -> list[FrozenTrial] | None:
        """Return the study's trials now, or None when the storage cannot be read at the moment."""
        try:
            if self._study is None:
                from moa_search.reports_source import load_study

                self._study = load_study(self.storage_url, self.study_name)
            trials = self._study.get_trials(deepcopy=False)
        except Exception as error:  # noqa: BLE001 - the display must never end the search
            if not self._read_failed:
                logger.warning("live display cannot read study %s: %s; retrying", self.study_name, error)
                self._read_failed = True
            return None
        self._read_failed = False
        return trials

    def refresh(self) -> None:
        """Read the storage once and update the panel, or log what changed."""
        trials = self.read_trials()
        if trials is None:
            return
        if self.mode == "live" and self._live is not None:
            elapsed = time.monotonic() - self._started
            # Building the view takes tens of milliseconds for hundreds of trials, and the search
            # shares the CPU, so the panel is rebuilt only when a trial changed or every 5 s for the clock.
            signature = (int(elapsed // 5), *_trial_signature(trials))
            if signature != self._last_signature:
                self._last_signature = signature
                self._live.update(live_view(trials, self.study_name, self.n_trials, elapsed, self.top), refresh=True)
        elif self.mode == "log":
            for line in log_lines(trials, self._seen):
                logger.info("%s", line)


def _trial_signature(trials: Sequence[FrozenTrial]) -> tuple:
    """Return what the panel shows that can change: each trial's state and evaluated step."""
    from moa_search.records import PROGRESS

    return tuple((trial.number, trial.state, (trial.user_attrs.get(PROGRESS) or {}).get("step")) for trial in trials)
