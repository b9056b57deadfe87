"""`moa-search run` (create or resume a study and search) and `moa-search worker` (join a study)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer

from moa_search.errors import ConfigError, StudyError
from moa_search.paths import STORAGE_ENV, default_storage_url

logger = logging.getLogger(__name__)

# More local workers than this on one SQLite file spend much of their time waiting for its lock.
SQLITE_WORKER_LIMIT = 4
# prctl option from <linux/prctl.h>: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1

_STORAGE_HELP = f"Optuna storage URL (SQLAlchemy form). Default: ${STORAGE_ENV}, else sqlite:///results/moa_search.db."
_N_TRIALS_HELP = ("Budget: finished (complete or pruned) search trials in the whole study, across workers and "
                  "resumes; baselines come on top. Default: the space's study.n_trials, else 20.")
_TIMEOUT_HELP = "Start no new trial after this many seconds of this invocation (running trials finish)."
_SAMPLER_HELP = "Sampler: tpe (multivariate, default), random, grid, cmaes or nsga2."
_PRUNER_HELP = "Pruner: hyperband (default for one objective), median or none (default for several objectives)."
_SEED_HELP = "Seed of the sampler, for repeatable searches in one process."
_DEVICE_HELP = "Device for every trial of this process: auto, cpu, cuda, cuda:N or mps (overrides train.device)."


def _storage_url(storage: Optional[str]) -> str:
    return storage or default_storage_url()


def _child_log_flags() -> list[str]:
    """Global flags for worker subprocesses: quiet under a live panel or --quiet, verbose under -v."""
    from moa_search.display import display_mode

    level = logging.getLogger("moa_search").level
    if level != logging.NOTSET and level <= logging.DEBUG:
        return ["-v"]
    return ["-q"] if display_mode() in ("live", "quiet") else []


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_devices(workers: int, device: Optional[str], gpu_count: int) -> list[Optional[str]]:
    """Pick each worker's device: the --device given, else the GPUs in turn when there are several.

    None leaves the device to train.device. With more workers than GPUs, GPUs take several workers.
    """
    if device is not None:
        return [device] * workers
    if gpu_count > 1:
        return [f"cuda:{index % gpu_count}" for index in range(workers)]
    return [None] * workers


def check_device(device: Optional[str], gpu_count: int) -> None:
    """Raise ConfigError when --device is not a device name, or names a device this machine does not have."""
    if device is None or device in ("auto", "cpu"):
        return
    index_text = device.partition(":")[2]
    if device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError("--device 'mps' requested but Apple's MPS backend is not available on this machine; "
                              "use --device cpu (or auto)")
        return
    if device != "cuda" and not (device.startswith("cuda:") and index_text.isdigit()):
        raise ConfigError(f"--device {device!r} is not a device name; use auto, cpu, cuda, cuda:N or mps")
    if gpu_count == 0:
        raise ConfigError(f"--device {device!r} requested but CUDA is not available on this machine; "
                          "use --device cpu (or auto), or run this worker on a machine with a GPU")
    if index_text and int(index_text) >= gpu_count:
        raise ConfigError(f"--device {device!r} requested but this machine has {gpu_count} GPU(s), "
                          f"cuda:0 to cuda:{gpu_count - 1}")


def sqlite_worker_warning(storage_url: str, workers: int) -> Optional[str]:
    """Return the warning for more local workers than one SQLite file serves well, else None."""
    from moa_search.storage import is_sqlite

    if workers <= SQLITE_WORKER_LIMIT or not is_sqlite(storage_url):
        return None
    return (f"{workers} workers share one SQLite file; above {SQLITE_WORKER_LIMIT} they mostly wait for its lock. "
            "Use a PostgreSQL storage (--storage postgresql://...) for many workers or several machines")


def _end_with_parent_hook() -> Optional[Callable[[], None]]:
    """Return a preexec_fn that makes Linux send SIGTERM to the worker when this process dies, or None
    elsewhere (there the worker's own parent pid check ends it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Resolved here, before the fork, so the child only makes one C call.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        # The parent may have died before prctl ran, and then no signal would come.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return set_death_signal


def _start_workers(study_name: str, storage_url: str, workers: int, *, seed: Optional[int],
                   timeout: Optional[float], device: Optional[str]) -> list[subprocess.Popen]:
    from moa_search.worker import PARENT_PID_ENV

    # The URL goes through the environment, so a password never shows in the process list.
    env = {**os.environ, STORAGE_ENV: storage_url, PARENT_PID_ENV: str(os.getpid())}
    end_with_parent = _end_with_parent_hook()
    processes = []
    for index, worker_device in enumerate(worker_devices(workers, device, _gpu_count())):
        command = [sys.executable, "-m", "moa_search.worker", *_child_log_flags(), "worker", "--study", study_name]
        if seed is not None:
            # Each worker gets its own seed, or all of them would propose the same parameters.
            command += ["--seed", str(seed + index)]
        if timeout is not None:
            command += ["--timeout", str(timeout)]
        if worker_device is not None:
            command += ["--device", worker_device]
        processes.append(subprocess.Popen(command, env=env, preexec_fn=end_with_parent))
        logger.info("Started worker %d of %d (pid %d%s)", index + 1, workers, processes[-1].pid,
                    f", {worker_device}" if worker_device else "")
    return processes


def _wait_for_workers(processes: list[subprocess.Popen]) -> list[int]:
    try:
        return [process.wait() for process in processes]
    except KeyboardInterrupt:
        # Ctrl-C reaches the workers too (same process group); wait for them to stop.
        return [process.wait() for process in processes]


def _log_study_summary(study_name: str, storage_url: str, n_trials: int) -> None:
    from optuna.trial import TrialState

    from moa_search import records
    from moa_search.storage import open_storage
    from moa_search.study import count_budget

    import optuna

    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url, heartbeat=False))
    trials = study.get_trials(deepcopy=False)
    count = count_budget(trials)
    failed = sum(trial.state == TrialState.FAIL and not records.is_baseline(trial) for trial in trials)
    logger.info("Study %r: %d of %d finished search trials, %d failed, %d baselines done", study_name,
                count.finished, n_trials, failed,
                sum(records.is_baseline(trial) and trial.state.is_finished() for trial in trials))
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE and not records.is_baseline(trial)]
    if complete and len(study.directions) == 1:
        best = min(complete, key=lambda trial: trial.value) if study.direction.name == "MINIMIZE" else \
            max(complete, key=lambda trial: trial.value)
        logger.info("Best search trial: %d with val_loss %.4f; see `moa-search leaderboard --study %s`",
                    best.number, best.value, study_name)


def run_command(
    space_path: Path = typer.Argument(..., metavar="SPACE.yaml", help="Search space file."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name. Default: the space's study.name, else the file name."),
    storage: Optional[str] = typer.Option(None, "--storage", help=_STORAGE_HELP),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", min=1, help=_N_TRIALS_HELP),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.0, help=_TIMEOUT_HELP),
    sampler: Optional[str] = typer.Option(None, "--sampler", help=_SAMPLER_HELP),
    pruner: Optional[str] = typer.Option(None, "--pruner", help=_PRUNER_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help=_SEED_HELP),
    workers: int = typer.Option(1, "--workers", min=0, help="Worker processes to start on this machine (one per GPU when several GPUs exist). 0 creates or updates the study and trains nothing, for workers started with `moa-search worker`."),
    device: Optional[str] = typer.Option(None, "--device", help=_DEVICE_HELP),
    fork: bool = typer.Option(False, "--fork", help="When the study exists with a different space, start a new study NAME-fork-N from the edited space instead of failing."),
) -> None:
    """Create a study for a search space, or resume it, and run trials until its budget is reached."""
    from moa_search.space import load_space
    from moa_search.storage import check_results_folder, open_storage
    from moa_search.study import create_or_resume
    from moa_search.worker import raise_for_failures, run_trials

    space = load_space(space_path)
    settings = space.settings.with_overrides(name=study, n_trials=n_trials, timeout_seconds=timeout,
                                             sampler=sampler, pruner=pruner, seed=seed)
    study_name = settings.name or space.study_name
    storage_url = _storage_url(storage)
    check_device(device, _gpu_count())
    check_results_folder()
    warning = sqlite_worker_warning(storage_url, workers)
    if warning:
        logger.warning("%s", warning)
    search = create_or_resume(open_storage(storage_url), space, settings, study_name=study_name,
                              source=Path(space_path).read_text(encoding="utf-8"), fork=fork)
    if workers == 0:
        logger.info("Study %r is ready with a budget of %d finished search trials; start workers with "
                    "`moa-search worker --study %s --storage URL`", search.name, search.n_trials, search.name)
        return
    display = _display(storage_url, search.name, search.n_trials)
    with display, _interruptible():
        if workers == 1:
            summary = run_trials(search, storage_url, timeout_seconds=settings.timeout_seconds, device=device)
            exit_codes = [0]
        else:
            processes = _start_workers(search.name, storage_url, workers, seed=settings.seed,
                                       timeout=settings.timeout_seconds, device=device)
            exit_codes = _wait_for_workers(processes)
    _log_study_summary(search.name, storage_url, search.n_trials)
    if workers == 1:
        raise_for_failures(summary)
    failed = [index + 1 for index, code in enumerate(exit_codes) if code != 0]
    if failed:
        raise StudyError(f"worker(s) {', '.join(map(str, failed))} of {workers} exited with an error "
                         f"(exit codes {exit_codes}); see their messages above. Trials they finished are kept; "
                         "run the same command again to resume")


@contextmanager
def _interruptible() -> Iterator[None]:
    """Turn Ctrl-C into one log line and exit code 130 instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        # The running trial stays RUNNING until its heartbeat goes stale; then it is re-queued.
        logger.warning("Interrupted. The next run or any worker retries the unfinished trial with the same "
                       "parameters once its heartbeat is stale")
        raise typer.Exit(130) from None


def _display(storage_url: str, study_name: str, n_trials: int):
    """Return the live panel on terminals. In log mode the workers' own log lines report each trial."""
    from moa_search.display import StudyDisplay, display_mode

    if display_mode() != "live":
        return nullcontext()
    return StudyDisplay(storage_url, study_name, n_trials)


def worker_command(
    study: str = typer.Option(..., "--study", help="Name of an existing study, created by `moa-search run`."),
    storage: Optional[str] = typer.Option(None, "--storage", help=_STORAGE_HELP),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", min=1, help="Budget of the whole study for this worker. Default: the budget stored with the study."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.0, help=_TIMEOUT_HELP),
    sampler: Optional[str] = typer.Option(None, "--sampler", help=_SAMPLER_HELP + " Default: the study's."),
    pruner: Optional[str] = typer.Option(None, "--pruner", help=_PRUNER_HELP + " Default: the study's."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of this worker's sampler. Default: random, so workers propose different trials."),
    device: Optional[str] = typer.Option(None, "--device", help=_DEVICE_HELP),
) -> None:
    """Join an existing study from this process (or another machine) and run its trials."""
    from moa_search.worker import WorkerOptions, raise_for_failures, run_worker

    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {timeout}")
    check_device(device, _gpu_count())
    options = WorkerOptions(study_name=study, storage_url=_storage_url(storage), n_trials=n_trials,
                            timeout_seconds=timeout, sampler=sampler, pruner=pruner, seed=seed, device=device)
    with _interruptible():
        summary = run_worker(options)
    raise_for_failures(summary)


def register(app: typer.Typer) -> None:
    """Add the `run` and `worker` commands to the main app."""
    app.command("run")(run_command)
    app.command("worker")(worker_command)
