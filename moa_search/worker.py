"""The trial loop of one worker process: claim a trial, train it, store its record, repeat.

Any number of workers, on one machine or many, can run this loop against one study. Before each
trial a worker fails the trials whose heartbeat stopped and queues a retry of each with the same
parameters. It stops when the study has its budget of finished search trials, and waits while
other workers' running trials could still fill the budget. The queued trials (baselines and
retries of stale trials) run first. See `study.claim_decision` for how two workers that ask at the
same moment never both take the last place in the budget.

The loop writes everything to the storage and nothing to the screen, so any display (or none) can
follow a study by reading it; the PROGRESS attribute is rewritten at each evaluation for that.

`python -m moa_search.worker ARGS` runs the moa-search command line, like the `moa-search` script;
`run --workers N` starts its workers as `python -m moa_search.worker worker --study NAME ...`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

import optuna
from optuna.trial import TrialState

from moa_search import records
from moa_search.errors import StudyError
from moa_search.storage import check_results_folder, open_storage, with_retries
from moa_search.study import SearchStudy, claim_decision, count_budget, load_search_study
from moa_search.trial_run import CorpusCache, TrialOutcome, run_trial

logger = logging.getLogger(__name__)

# Seconds between looks at the study while other workers' trials may still fill the budget.
POLL_SECONDS = 2.0
# A worker stops after this many failed trials in a row: something is wrong with every config.
MAX_FAILURES_IN_ROW = 10
# Pid of the `run --workers N` process that started this worker. The worker ends when that process
# is gone, so a killed run leaves no workers training behind it.
PARENT_PID_ENV = "MOA_SEARCH_PARENT_PID"
# Seconds between checks that the parent process still runs, while a trial trains.
PARENT_CHECK_SECONDS = 1.0

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerOptions:
    """Settings of one worker process; None keeps the value stored with the study."""

    study_name: str
    storage_url: str
    n_trials: int | None = None
    timeout_seconds: float | None = None
    sampler: str | None = None
    pruner: str | None = None
    seed: int | None = None
    device: str | None = None


@dataclass
class WorkerSummary:
    """Counts of one worker's search trials by final state, its baselines, and why it stopped."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    baselines: int = 0
    stop_reason: str = ""
    trial_numbers: list[int] = field(default_factory=list)
    too_many_failures: bool = False  # stopped after MAX_FAILURES_IN_ROW failed trials in a row


def stop_message(summary: WorkerSummary) -> str:
    """Return why a worker stopped and what it trained, keeping the study's totals apart from this worker's."""
    reason = summary.stop_reason[:1].upper() + summary.stop_reason[1:]
    ran = summary.complete + summary.pruned + summary.failed + summary.baselines
    if ran == 0:
        return f"{reason}; this worker trained none"
    return (f"{reason}; this worker trained {ran}: {summary.complete} complete, {summary.pruned} pruned, "
            f"{summary.failed} failed, {summary.baselines} baselines")


def worker_id() -> str:
    """Return "host:pid", the name a worker writes into the trials it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def parent_pid() -> int | None:
    """Return the pid of the `run` process that started this worker, or None for a worker started by hand."""
    text = os.environ.get(PARENT_PID_ENV, "")
    return int(text) if text.isdigit() else None


def parent_ended() -> bool:
    """Return True when this worker was started by `run --workers N` and that process has ended.

    An orphan is adopted by another process, so its parent pid changes.
    """
    expected = parent_pid()
    return expected is not None and os.getppid() != expected


def _exit_orphan(trial_id: int) -> None:
    # The trial stays RUNNING, so its heartbeat stops and the next worker retries it.
    logger.warning("The run process (pid %s) that started this worker ended; stopping in the middle of "
                   "trial id %d, which is retried once its heartbeat is stale", parent_pid(), trial_id)
    os._exit(1)


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every interval from a thread while the body runs.

    Training keeps the main thread busy for minutes, so the heartbeat needs its own thread. That
    thread gets to run because torch releases the GIL in its kernels. The same thread ends the
    process when the `run` process that started it is gone (see PARENT_PID_ENV).
    """
    interval = storage.get_heartbeat_interval() if isinstance(storage, optuna.storages.RDBStorage) else None
    if not interval:
        yield
        return
    stop = threading.Event()
    wake_seconds = min(interval, PARENT_CHECK_SECONDS) if parent_pid() is not None else interval

    def beat() -> None:
        failures = 0
        next_beat = time.monotonic()
        while True:
            if parent_ended():
                _exit_orphan(trial_id)
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + interval
                try:
                    storage.record_heartbeat(trial_id)
                    if failures:
                        logger.info("Recorded the heartbeat of trial id %d again after %d failed attempts",
                                    trial_id, failures)
                    failures = 0
                except Exception as error:  # noqa: BLE001 - a missed beat must not end the trial
                    failures += 1
                    # Log the first failure of a run only, since a lost database fails every beat.
                    # Optuna's StorageInternalError hides the driver's reason in __cause__.
                    if failures == 1:
                        reason = str(error.__cause__ or error).strip().splitlines()[0]
                        logger.warning("Failed to record the heartbeat of trial id %d (%s); retrying every %d s",
                                       trial_id, reason, interval)
            if stop.wait(wake_seconds):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[tuple[int, int]]:
    """Fail the running trials whose heartbeat stopped and queue a retry of each with the same parameters.

    Returns (stale trial number, retry trial number) pairs. This replaces Optuna's
    `fail_stale_trials`, because a finished trial takes no more attributes, so the fail reason has
    to be written while the trial still runs. The state change to FAIL succeeds in one process
    only, so when several workers check at once, each stale trial is retried once.
    """
    if not isinstance(storage, optuna.storages.RDBStorage) or not storage.get_heartbeat_interval():
        return []
    interval = storage.get_heartbeat_interval()
    grace = storage.grace_period or 2 * interval  # Optuna's default when no grace period is set
    # A finished trial takes no attributes, and the retry number is known only after the state change,
    # so the reason cannot name the retry. The log line and the retry's RETRIED_FROM link the two.
    reason = f"stale: no heartbeat for over {grace} s (worker died or was killed); retried with the same parameters"
    retried = []
    # NOTE: _get_stale_trial_ids is private in Optuna 5.1; fail_stale_trials uses it the same way.
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            storage.set_trial_user_attr(trial_id, records.FAIL_REASON, reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first
        # NOTE: a process killed between the state change and the next line leaves the trial unretried.
        stale = storage.get_trial(trial_id)
        retry_number = _queue_retry(study, storage, stale)
        retried.append((stale.number, retry_number))
        logger.warning("Trial %d failed as stale (no heartbeat for over %d s; its worker died or was killed); "
                       "retried as trial %d with the same parameters", stale.number, grace, retry_number)
    return retried


def _queue_retry(study: optuna.Study, storage: optuna.storages.BaseStorage, stale: optuna.trial.FrozenTrial) -> int:
    """Queue a copy of the stale trial, marked as its retry the way Optuna's retry callback marks it."""
    history = [*stale.system_attrs.get("retry_history", []), stale.number]
    first = stale.system_attrs.get(records.RETRIED_FROM, stale.number)
    system_attrs = {**stale.system_attrs, records.RETRIED_FROM: first, "retry_history": history}
    # The retry starts clean: no fail reason or progress of the stale run.
    user_attrs = {key: value for key, value in stale.user_attrs.items()
                  if key not in (records.FAIL_REASON, records.PROGRESS)}
    template = optuna.trial.create_trial(state=TrialState.WAITING, params=stale.params,
                                         distributions=stale.distributions, user_attrs=user_attrs,
                                         system_attrs=system_attrs)
    retry_id = storage.create_new_trial(study._study_id, template_trial=template)
    return storage.get_trial(retry_id).number


class _Worker:
    """The loop over trials of one process, for one study."""

    def __init__(self, search: SearchStudy, storage_url: str, *, timeout_seconds: float | None,
                 device: str | None, should_stop: Callable[[], bool] | None = None) -> None:
        self.search = search
        self.study = search.study
        self.storage_url = storage_url
        self.timeout_seconds = timeout_seconds
        self.device = device
        self.should_stop = should_stop or (lambda: False)
        self.corpora = CorpusCache()
        self.summary = WorkerSummary()
        self.started = time.monotonic()
        self.failures_in_row = 0

    def _storage_call(self, action: Callable[[], T], what: str) -> T:
        return with_retries(action, what, self.storage_url)

    def _timed_out(self) -> bool:
        return self.timeout_seconds is not None and time.monotonic() - self.started >= self.timeout_seconds

    def _fail_stale_trials(self) -> None:
        self._storage_call(lambda: fail_stale_trials(self.study, self.search.storage), "check for stale trials")

    def _trials(self) -> list[optuna.trial.FrozenTrial]:
        return self._storage_call(lambda: self.study.get_trials(deepcopy=False), "read the trials")

    def _stop_reason(self) -> str | None:
        """Return why the loop should stop now, None to go on, or "" to wait and look again."""
        if self.should_stop():
            return "stopped"
        if parent_ended():
            return f"the run process (pid {parent_pid()}) that started this worker ended"
        if self.search.sampler.exhausted:
            return "every grid point has run"
        if self._timed_out():
            return f"the time budget of {self.timeout_seconds:g} s is used up"
        if self.failures_in_row >= MAX_FAILURES_IN_ROW:
            return f"{self.failures_in_row} trials failed in a row; see their fail_reason"
        self._fail_stale_trials()
        count = count_budget(self._trials())
        if count.waiting_baselines:
            return None
        if count.finished >= self.search.n_trials:
            budget = "" if count.finished == self.search.n_trials else f" (budget {self.search.n_trials})"
            return f"budget met: the study has {count.finished} finished search trials{budget}"
        if count.waiting:
            # A queued retry of a stale trial goes next, because ask() takes queued trials first.
            return None
        if count.finished + count.running >= self.search.n_trials:
            return ""
        return None

    def run(self) -> WorkerSummary:
        while True:
            reason = self._stop_reason()
            if reason == "":
                time.sleep(POLL_SECONDS)
                continue
            if reason is not None:
                self.summary.stop_reason = reason
                self.summary.too_many_failures = self.failures_in_row >= MAX_FAILURES_IN_ROW
                break
            with warnings.catch_warnings():
                # Optuna warns that heartbeats are meant for Study.optimize; this loop sends its own.
                warnings.simplefilter("ignore", UserWarning)
                trial = self._storage_call(self.study.ask, "create a trial")
            with heartbeat(self.search.storage, trial._trial_id):
                outcome = self._claim_and_run(trial)
            self._count(trial.number, outcome)
        logger.info("Worker %s stopped. %s", worker_id(), stop_message(self.summary))
        return self.summary

    def _claim_and_run(self, trial: optuna.Trial) -> TrialOutcome | None:
        """Run the trial once the budget has room for it; discard it (None) when it has none."""
        user_attrs = self._storage_call(lambda: trial.user_attrs, "read the trial")
        baseline = user_attrs.get(records.BASELINE) if user_attrs.get(records.IS_BASELINE) else None
        if baseline is None:
            while True:
                decision = claim_decision(self._trials(), trial.number, self.search.n_trials)
                if decision == "run":
                    break
                if decision == "over" or self._timed_out() or self.should_stop():
                    self._discard(trial)
                    return None
                time.sleep(POLL_SECONDS)
                self._fail_stale_trials()
        return run_trial(self.search, trial, baseline=baseline, device=self.device, corpora=self.corpora,
                         storage_call=self._storage_call, worker=worker_id())

    def _discard(self, trial: optuna.Trial) -> None:
        # NOTE: a discarded trial ends as FAIL, because that is the only state outside the budget.
        # With the grid sampler its grid point then counts as visited.
        reason = (f"not run: the budget of {self.search.n_trials} finished search trials was taken by "
                  "trials of other workers, or this worker's time ran out")
        logger.info("Trial %d discarded: %s", trial.number, reason)
        self._storage_call(lambda: trial.set_user_attr(records.FAIL_REASON, reason), "store the trial record")
        self._storage_call(lambda: self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True),
                           "finish the trial")

    def _count(self, number: int, outcome: TrialOutcome | None) -> None:
        if outcome is None:
            return
        self.summary.trial_numbers.append(number)
        if outcome.baseline is not None:
            self.summary.baselines += 1
        elif outcome.state == TrialState.COMPLETE:
            self.summary.complete += 1
            self.failures_in_row = 0
        elif outcome.state == TrialState.PRUNED:
            self.summary.pruned += 1
            self.failures_in_row = 0
        else:
            self.summary.failed += 1
            self.failures_in_row += 1


def run_trials(search: SearchStudy, storage_url: str, *, timeout_seconds: float | None = None,
               device: str | None = None, should_stop: Callable[[], bool] | None = None) -> WorkerSummary:
    """Run trials of an opened study until its budget, the time budget or `should_stop` ends the loop."""
    check_results_folder()
    worker = _Worker(search, storage_url, timeout_seconds=timeout_seconds, device=device, should_stop=should_stop)
    return worker.run()


def raise_for_failures(summary: WorkerSummary) -> None:
    """Raise StudyError when the worker stopped because its trials kept failing, so the command exits 1."""
    if summary.too_many_failures:
        raise StudyError(f"the worker stopped because {summary.stop_reason}. The same error most likely hits "
                         "every trial: fix it, then run the same command again to resume")


def run_worker(options: WorkerOptions) -> WorkerSummary:
    """Open the storage, join the existing study `options.study_name` and run its trial loop."""
    check_results_folder()
    storage = open_storage(options.storage_url)
    search = load_search_study(storage, options.study_name, n_trials=options.n_trials, sampler=options.sampler,
                               pruner=options.pruner, seed=options.seed)
    timeout = options.timeout_seconds if options.timeout_seconds is not None else search.settings.timeout_seconds
    logger.info("Worker %s joined study %r (budget %d finished search trials)", worker_id(), search.name,
                search.n_trials)
    return run_trials(search, options.storage_url, timeout_seconds=timeout, device=options.device)


if __name__ == "__main__":
    from moa_search.cli import main

    main()
