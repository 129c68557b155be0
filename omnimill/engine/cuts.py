"""`omnimill cuts`: scene cuts of a corpus's videos, as a unit job (job.py) into a cut store (store/cuts.py).

    list the videos to cut (corpus/clip_index.videos_to_cut) -> create the cut store (or open it: same
    corpus, same videos) -> the detector's part (its settings and package version recorded; other settings
    are refused unless --force) -> units of `videos_per_unit` videos -> run and sweep on Dask -> record

A unit decodes each of its videos whole at low resolution (corpus/scenes.py) and writes their cuts, frame
counts and errors, then its commit marker: a killed run's rerun does only the units without a marker. A
video that does not decode is recorded with its error (the unit still commits); the clip index then lists
it as one clip that fails as a sample.

`omnimill label --clips scenes` runs this job first, on the same Dask options, into the cut store
beside the label store (`cut_store_for`), then lists the clips from the stored cuts once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from omnimill.corpus.clip import open_media_file
from omnimill.corpus.clip_index import videos_to_cut
from omnimill.corpus.scenes import DEFAULT_DETECTOR, CutSettings, detect_cuts
from omnimill.engine.job import JobOptions, JobResult, UnitJob, at_least_one, check_options, run_job, with_overrides
from omnimill.errors import SampleError, UserError
from omnimill.store.cuts import CutStore

DEFAULT_VIDEOS_PER_UNIT = 4  # a unit is a few videos: seconds of decoding each, and a marker per few


@dataclass
class CutOptions(JobOptions):
    """The job's settings (workers, scheduler, retries, force, ...) and the detector's."""

    detector: str = DEFAULT_DETECTOR
    threshold: float | None = None  # None: the detector's default
    videos_per_unit: int | None = None  # fixed when the store is created


@dataclass
class CutTask:
    store: str
    unit: int
    start: int
    stop: int
    settings: CutSettings
    storage_options: dict = field(default_factory=dict)
    torch_threads: int | None = None
    attempt: int = 0
    workers_per_host: dict = field(default_factory=dict)


def cut_store_for(label_store: str) -> str:
    """Where `label --clips scenes` keeps the cuts of a label store: beside it, `labels.zarr` ->
    `labels.cuts.zarr` (not inside: a label store holds only what it creates)."""
    base = label_store.rstrip("/")
    return (base[:-len(".zarr")] if base.endswith(".zarr") else base) + ".cuts.zarr"


def detect_scene_cuts(corpus: str, out: str, options: CutOptions | None = None, **overrides) -> JobResult:
    """Cut every video of `corpus` with the options' detector into the cut store `out` (created or resumed).
    The result's `store_failed` counts the videos that did not decode."""
    opts = with_overrides(options or CutOptions(), overrides)
    at_least_one(opts, {"videos_per_unit": "--videos-per-unit"})
    check_options(opts)
    settings = CutSettings(opts.detector, opts.threshold)
    record = settings.record()  # also: refuses a detector whose package is not installed, before writing
    from omnimill.engine.label import check_store_path  # label imports this module

    check_store_path(out, corpus, "cut store")
    uri, kind, videos = videos_to_cut(corpus, opts.storage_options)
    state = CutStore.state(out, opts.storage_options)
    if state.startswith("other"):
        raise UserError(f"{out} is {state.removeprefix('other: ')}; give a new path for the cut store")
    if state == "store":
        store = CutStore.open(out, "r+", opts.storage_options)
        if store.corpus.get("uri") != uri or store.videos(0, store.n) != videos:
            raise UserError(f"{out} holds the cuts of {store.corpus.get('uri')} ({store.n} videos), not of {uri} as "
                            f"it is now ({len(videos)} videos); give a new cut store path")
    else:  # without videos (audio files, manifest spans only) the store is empty, and so are its cuts
        store = CutStore.create(out, {"uri": uri, "kind": kind}, videos,
                                opts.videos_per_unit or DEFAULT_VIDEOS_PER_UNIT, opts.storage_options)
    return run_job(CutJob(store, settings, record, opts))


def _rows(store: CutStore, u: int) -> tuple[int, int]:
    span = store.unit(u)
    return span.start, span.stop


def cut_unit(task: CutTask) -> dict:
    """Worker side: cut each video of the unit, write the unit's rows, then its marker (the commit)."""
    from omnimill.engine.runtime import torch_threads, unit_marker

    t0 = time.perf_counter()
    if task.settings.detector == "transnetv2":  # Dask starts workers with one OpenMP thread: give torch its share
        import torch

        torch.set_num_threads(torch_threads(task.torch_threads, task.workers_per_host))
    store = CutStore.open(task.store, "r+", task.storage_options)
    name = task.settings.detector
    cuts, frames, errors, failed = [], [], [], []
    for i, (key, source, offset, size) in enumerate(store.videos(task.start, task.stop)):
        found, n, error = [], 0, ""
        try:
            with open_media_file(source, offset, size, task.storage_options) as f:
                found, n = detect_cuts(f, task.settings)
        except SampleError as e:
            error = e.reason
        except OSError as e:  # gone or unreadable since it was listed
            error = f"does not read ({type(e).__name__}: {e})"
        cuts.append(found)
        frames.append(n)
        errors.append(error)
        if error:
            failed.append({"index": task.start + i, "key": key, "stage": "cuts", "error": error,
                           "retryable": False})  # a video that does not decode fails the same way again
    seconds = time.perf_counter() - t0
    marker = unit_marker(task, ok=len(errors) - len(failed), failed=len(failed), errors=failed, frames=sum(frames),
                         seconds=round(seconds, 3))
    store.write_unit(name, task.unit, cuts, frames, errors, marker)
    n = task.stop - task.start
    return {"unit": task.unit, "n": n, "ok": {name: n - len(failed)}, "failed": {name: len(failed)},
            "frames": sum(frames), "seconds": seconds}


class CutJob(UnitJob):
    VERB, LOCKED_AS, PARTS = "cutting", "cut", "detectors"
    work = staticmethod(cut_unit)

    def __init__(self, store: CutStore, settings: CutSettings, record: dict, options: CutOptions):
        super().__init__(store, [settings.detector], options)
        self.settings, self.record = settings, record

    def prepare(self, part: str, force: bool) -> None:
        self.store.prepare_detector(part, self.record, force)

    def plan(self, result: JobResult, sweep: bool) -> list[CutTask]:
        """A task for every unit without a marker (a failed video is recorded, not retried: it fails again)."""
        done = self.store.done_units(self.settings.detector)
        return [CutTask(self.store.uri, u, *_rows(self.store, u), self.settings, self.options.storage_options,
                        self.options.torch_threads) for u in range(self.store.n_units) if not done[u]]
