"""`omnimill fetch`: the images of a URL list, as a unit job (job.py) into a fetched store (store/fetched.py).

    read the URL list (corpus/fetch.read_url_list) -> create the fetched store (or open it: the same keys
    and URLs) -> units of `urls_per_unit` URLs -> run and sweep on Dask -> record

A unit fetches its URLs on `threads` threads (corpus/fetch.fetch: limits, backoff, at most `per_host`
requests in flight to one host), writes its tar of good images and its rows, then its commit marker,
which lists every failure with its key, stage and reason. A rerun of the same command fetches the units
without a marker whole, and in committed units only the failures recorded retryable (timeouts, resets,
bodies cut short, 408/429/5xx); a 404 or a page that is not an image is not asked for again. `--force`
starts every unit over; `--repair` fetches again the units whose tar or rows `verify` finds damaged.

The embedded cluster runs threads in this process (`PROCESSES = False`): fetching waits on sockets, not
the CPU, and the per-host slots (corpus/fetch.host_slot) are shared by every unit of a process, so the
per-host limit holds for the whole run. On a cluster of your own (`--scheduler`) it holds per worker
process: N workers may have N x per_host requests to one host in flight.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from omnimill.corpus.fetch import FetchSettings, fetch, read_url_list
from omnimill.engine.job import JobOptions, JobResult, UnitJob, at_least_one, check_options, run_job, with_overrides
from omnimill.errors import UserError
from omnimill.store.fetched import PART, FetchedStore

DEFAULT_URLS_PER_UNIT = 64  # ~13 MB a unit at the ~200 kB of a typical web image; at most 64 x max_bytes
DEFAULT_THREADS = 16  # requests a unit has in flight (each host still capped at per_host)


@dataclass
class FetchOptions(JobOptions):
    """The job's settings (workers, scheduler, `retries` of a failed unit, force, ...) and the fetch limits."""

    timeout: float = FetchSettings.timeout
    url_retries: int = FetchSettings.retries  # extra attempts per URL for a retryable failure, in one run
    backoff: float = FetchSettings.backoff
    max_bytes: int = FetchSettings.max_bytes
    max_pixels: int = FetchSettings.max_pixels
    max_redirects: int = FetchSettings.max_redirects
    max_seconds: float = FetchSettings.max_seconds
    per_host: int = FetchSettings.per_host
    threads: int = DEFAULT_THREADS
    urls_per_unit: int | None = None  # fixed when the store is created

    def settings(self) -> FetchSettings:
        return FetchSettings(timeout=self.timeout, retries=self.url_retries, backoff=self.backoff,
                             max_bytes=self.max_bytes, max_pixels=self.max_pixels, max_redirects=self.max_redirects,
                             max_seconds=self.max_seconds, per_host=self.per_host)


@dataclass
class FetchTask:
    store: str
    unit: int
    start: int
    stop: int
    settings: FetchSettings
    threads: int
    retry: list[int] = field(default_factory=list)  # rows (store indices) to fetch again; empty: the whole unit
    storage_options: dict = field(default_factory=dict)
    attempt: int = 0
    workers_per_host: dict = field(default_factory=dict)


def fetch_images(urls: str, out: str, options: FetchOptions | None = None, **overrides) -> JobResult:
    """Fetch every URL of the list `urls` into the fetched store `out` (created or resumed). The result's
    `store_failed` counts the URLs that failed, `store_final` those no rerun will retry."""
    opts = with_overrides(options or FetchOptions(), overrides)
    at_least_one(opts, {"urls_per_unit": "--urls-per-unit", "threads": "--threads", "per_host": "--per-host",
                        "max_bytes": "--max-bytes", "max_pixels": "--max-pixels"})
    check_options(opts)
    if opts.timeout <= 0 or opts.max_seconds <= 0 or opts.url_retries < 0 or opts.backoff < 0 or opts.max_redirects < 0:
        raise UserError("--timeout and --max-seconds must be above 0; --retries, --backoff and --max-redirects at least 0")
    listed = read_url_list(urls, opts.storage_options)
    state = FetchedStore.state(out, opts.storage_options)
    if state.startswith("other"):
        raise UserError(f"{out} is {state.removeprefix('other: ')}; give a new path for the fetched store")
    if state == "store":
        store = FetchedStore.open(out, "r+", opts.storage_options)
        if [r[:2] for r in store.rows()] != [r[:2] for r in listed.rows]:
            raise UserError(f"{out} holds the images of {store.source.get('uri')} ({store.n} URLs), not of {listed.uri} "
                            f"as it is now ({len(listed.rows)} URLs); give a new fetched store path")
    else:
        source = {"uri": listed.uri, "n_lines": listed.n_lines, "duplicates": listed.duplicates}
        store = FetchedStore.create(out, source, listed.rows, opts.urls_per_unit or DEFAULT_URLS_PER_UNIT,
                                    opts.storage_options)
    return run_job(FetchJob(store, opts))


def fetch_unit(task: FetchTask) -> dict:
    """Worker side: fetch the unit's URLs (or only its retryable failures, keeping the rest as stored), write
    the unit's tar and rows, then its marker (the commit)."""
    from omnimill.engine.runtime import unit_marker

    t0 = time.perf_counter()
    store = FetchedStore.open(task.store, "r+", task.storage_options)
    rows = store.rows(task.start, task.stop)
    todo = list(range(len(rows)))
    results: list = [None] * len(rows)
    if task.retry and store.unit_intact(PART, task.unit):  # keep what is stored; a damaged unit goes whole
        results = store.results(task.start, task.stop)
        todo = [i - task.start for i in task.retry]
    with ThreadPoolExecutor(max(1, min(task.threads, len(todo)))) as pool:
        for i, fetched in zip(todo, pool.map(lambda i: fetch(rows[i][1], task.settings), todo)):
            results[i] = fetched
    failed = [{"index": task.start + i, "key": rows[i][0], "stage": r.stage, "error": r.reason,
               "retryable": r.retryable, "http": r.http} for i, r in enumerate(results) if not r.ok]
    ok = len(rows) - len(failed)
    nbytes = sum(len(r.data) for r in results if r.ok)
    seconds = time.perf_counter() - t0
    marker = unit_marker(task, ok=ok, failed=len(failed), errors=failed, fetched=len(todo), bytes=nbytes,
                         seconds=round(seconds, 3))
    store.write_unit(task.unit, results, marker)
    return {"unit": task.unit, "n": len(rows), "ok": {PART: ok}, "failed": {PART: len(failed)}, "fetched": len(todo),
            "bytes": nbytes, "seconds": seconds}


class FetchJob(UnitJob):
    VERB, LOCKED_AS, PARTS = "fetching", "fetched", "parts"
    work = staticmethod(fetch_unit)
    PROCESSES = False  # see the module docstring

    def __init__(self, store: FetchedStore, options: FetchOptions):
        super().__init__(store, [PART], options)
        self.settings = options.settings()

    def prepare(self, part: str, force: bool) -> None:
        self.store.prepare(force)

    def plan(self, result: JobResult, sweep: bool) -> list[FetchTask]:
        """A task for every unit without a marker; before the run (not in a sweep), also one for every unit
        whose marker records retryable failures, carrying just those rows."""
        tasks = []
        for u, marker in enumerate(self.store.markers(PART)):
            retry = [] if marker is None else sorted(e["index"] for e in marker["errors"] if e["retryable"])
            if marker is None or (retry and not sweep):
                span = self.store.unit(u)
                tasks.append(FetchTask(self.store.uri, u, span.start, span.stop, self.settings, self.options.threads,
                                       retry, self.options.storage_options))
        if not sweep:
            result.samples_retried = sum(len(t.retry) for t in tasks)
        return tasks
