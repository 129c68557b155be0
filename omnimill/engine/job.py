"""The one unit job that `label`, `tokenize` and `shards text` are small users of.

    lock the store -> prepare its parts -> [--repair: forget the markers of damaged units]
    -> plan -> run the units on Dask (units.py: back-pressure, retries) -> sweep (plan again: units
    still without a marker run again) -> summarize the new markers into the store's unit summary
    (store/summary.py; `status`, the next plan and the tally read it) -> tally what the store holds
    -> run record -> unlock

A job says only what is its own (a `UnitJob`): the parts it writes (teachers, modalities), how to
prepare one, how to plan tasks from the markers, the function a worker runs on a task, and what it
counts in the store afterwards. Everything else, and the exit code, is here, once.

Exit codes (the CLI's, also in the README) say what the store holds, not only what this run did:
4 a unit failed or has no marker; 3 samples failed, or units wait for an earlier stage; 0 clean.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, ClassVar

from omnimill.engine.units import run_units
from omnimill.errors import UserError
from omnimill.settings import with_overrides
from omnimill.store.base import UnitStore, now

EXIT_OK, EXIT_SAMPLE_ERRORS, EXIT_UNIT_FAILURES, EXIT_USAGE = 0, 3, 4, 2


@dataclass
class JobOptions:
    """Settings every unit job takes: where it runs and how hard it tries."""

    workers: int | None = None  # embedded cluster size; default one per GPU, else cores / 2
    scheduler: str | None = None  # tcp://host:8786 or a scheduler file: join that cluster
    max_in_flight: int | None = None  # default: 2 units per worker (one running, one queued)
    retries: int = 2  # extra attempts for a unit whose task failed or whose worker died
    progress: bool = True
    break_lock: bool = False
    repair: bool = False  # verify the parts' committed units first and redo the damaged ones
    local_directory: str | None = None
    storage_options: dict = field(default_factory=dict)
    torch_threads: int | None = None  # None: this host's cores / its workers
    force: bool = False  # redo the given parts from scratch

    def with_overrides(self, overrides: dict):
        return with_overrides(self, overrides)


def at_least_one(options, names: dict[str, str]) -> None:
    """{attribute: its CLI option}: refuse a count below 1 (None means the default) before anything is written."""
    for name, option in names.items():
        value = getattr(options, name)
        if value is not None and value < 1:
            raise UserError(f"{option} must be at least 1, not {value}")


def check_options(options: JobOptions) -> None:
    at_least_one(options, {"workers": "--workers", "max_in_flight": "--max-in-flight"})


@dataclass
class JobResult:
    """What a unit job did and what its store holds afterwards; `exit_code` says it in one number."""

    store: str
    parts: list[str]  # teachers (label), modalities (tokenize, text shards)
    units_planned: int = 0
    units_failed: list[dict] = field(default_factory=list)  # {unit, error}: failed after every retry
    units_pending: int = 0  # units waiting for an earlier stage (token units for uncommitted label units)
    units_repaired: int = 0  # damaged units (found by verify) whose markers --repair removed
    seconds: float = 0.0
    stats: dict[int, dict] = field(default_factory=dict)  # unit -> worker stats of its last completed run
    samples_retried: int = 0  # recorded retryable failures planned again
    store_failed: int = 0  # failed samples the store holds for these parts after the run
    store_final: int = 0  # ... of which not retryable (a file that does not decode)
    store_missing: int = 0  # units of these parts without a commit marker after the run

    @property
    def unit_stats(self) -> list[dict]:
        return list(self.stats.values())

    @property
    def units_done(self) -> int:
        return len(self.stats)

    @property
    def samples(self) -> int:
        return sum(s["n"] for s in self.stats.values())

    @property
    def samples_ok(self) -> int:  # sample x part
        return sum(sum(s.get("ok", {}).values()) for s in self.stats.values())

    @property
    def samples_failed(self) -> int:  # sample x part, each recorded in its unit's marker
        return sum(sum(s["failed"].values()) for s in self.stats.values())

    @property
    def exit_code(self) -> int:
        """4 while a unit failed or lacks its marker; 3 while a failure is recorded or units wait; else 0."""
        if self.units_failed or self.store_missing:
            return EXIT_UNIT_FAILURES
        return EXIT_SAMPLE_ERRORS if self.store_failed or self.units_pending else EXIT_OK


class UnitJob:
    """What one command adds to the runner. Subclasses set the class names and override the methods."""

    VERB: ClassVar[str]  # the progress bar's word: "labelling"
    LOCKED_AS: ClassVar[str]  # what the lock says the store is being: "labelled"
    PARTS: ClassVar[str]  # the run record's name for the parts: "teachers"
    # Module-level functions, set with staticmethod() so Dask pickles them by name:
    work: ClassVar[Callable[[object], dict]]  # runs one task on a worker
    flush: ClassVar[Callable[[], list[str]] | None] = None  # runs on every worker after the tasks returned
    PROCESSES: ClassVar[bool] = True  # the embedded cluster's workers are processes (False: threads here)
    run: str = ""  # this run's lock nonce, set by run_job: tasks carry it (a worker's store object per run)

    def __init__(self, store: UnitStore | None, parts: list[str], options: JobOptions):
        self.store, self.parts, self.options = store, parts, options

    def prepare(self, part: str, force: bool) -> None:
        """Create the part's arrays, or check that the store's fit this run; `force`: start it over."""

    def plan(self, result: JobResult, sweep: bool) -> list:
        """Tasks for the units still to do (`sweep`: after the tasks returned, from the markers alone)."""
        raise NotImplementedError

    def tally(self, result: JobResult) -> None:
        """Count what the store holds for these parts after the run (failed samples, missing units, failures
        no rerun retries): from the unit summary (run_planned has just brought it up to date) and the few
        markers it does not settle, not every marker of every part."""
        for part in self.parts:
            held = self.store.tally(part, max_errors=0)
            result.store_missing += self.store.n_units - held["units_done"]
            result.store_failed += held["failed"]
            result.store_final += held["errors"] - held["retryable"]  # e.g. a file that does not decode


def run_job(job: UnitJob) -> JobResult:
    """Lock, prepare, repair, run, tally, record, unlock. The lock goes also when the record cannot be
    written (a full disk)."""
    opts, store = job.options, job.store
    token = store.acquire_lock(opts.break_lock, job.LOCKED_AS)
    job.run = token["nonce"]
    result = JobResult(store.uri, list(job.parts))
    started, clock = now(), time.time()
    try:
        for part in job.parts:
            job.prepare(part, opts.force)
        if opts.repair:
            result.units_repaired = repair(job)
        run_planned(job, result)
    finally:
        result.seconds = time.time() - clock
        try:
            store.append_run(run_record(job, result, started))
        finally:
            store.release_lock(token)
    return result


def repair(job: UnitJob) -> int:
    """Forget the markers of damaged units (the plan then does them again); a part whose arrays themselves
    are damaged starts over. Returns how many units will be redone."""
    store, repaired = job.store, 0
    for part, units in store.damaged_units(job.parts).items():
        if units is None:
            job.prepare(part, True)
            repaired += store.n_units
        else:
            store.clear_markers(part, sorted(units))
            repaired += len(units)
    return repaired


def run_planned(job: UnitJob, result: JobResult) -> None:
    """Plan, run the tasks on the cluster, sweep, summarize, tally. A sweep reruns only units without a
    marker: a failure that stays is retried by the next command. Only the lock holder comes here with a
    store (run_job; text shards have none), so it may write the store's unit summary."""
    opts = job.options

    def sweep() -> list:
        summarize(job)  # the sweep's plan then reads only the markers still unsettled, not all of them
        return job.plan(result, sweep=True)

    tasks = job.plan(result, sweep=False)
    result.units_planned = len(tasks)
    if tasks:
        result.units_failed = run_units(
            tasks, job.work, sweep, result.stats, scheduler=opts.scheduler,
            workers=opts.workers, local_directory=opts.local_directory, max_in_flight=opts.max_in_flight,
            retries=opts.retries, progress=opts.progress, flush=job.flush, verb=job.VERB,
            processes=job.PROCESSES)
    summarize(job)
    job.tally(result)


def summarize(job: UnitJob) -> None:
    """Bring the store's unit summary up to date with the markers the workers wrote (store/summary.py):
    reads only the units it did not settle yet. Only the lock holder (run_job) comes here with a store."""
    if job.store is not None:
        job.store.summarize(job.parts)


def run_record(job: UnitJob, result: JobResult, started: str) -> dict:
    """The run's entry in the store's history: when, where, what it did, and with which settings."""
    return {
        "started": started, "seconds": round(result.seconds, 2), "host": socket.gethostname(), "pid": os.getpid(),
        job.PARTS: result.parts, "units_planned": result.units_planned, "units_done": result.units_done,
        "units_failed": result.units_failed, "units_pending": result.units_pending,
        "units_repaired": result.units_repaired, "samples_ok": result.samples_ok,
        "samples_failed": result.samples_failed, "samples_retried": result.samples_retried,
        "store_failed": result.store_failed, "store_missing": result.store_missing,
        "scheduler": job.options.scheduler or "embedded",
        "options": {k: v for k, v in asdict(job.options).items() if k not in ("storage_options", "progress")},
    }
