"""`omnimill label`: index the corpus, check teachers and checkpoints, create the label store, then the
unit job (job.py: lock, repair, plan, run on Dask with back-pressure and retries, sweep, record, unlock).

What labelling adds to the job: its planning (per unit, the teachers without a marker, and the samples
whose recorded failure is retryable), the worker function (worker.run_unit, whose commits `flush_commits`
waits for), and what it counts afterwards (failed labels, units without a marker).

`--clips scenes` (clip stores): the cut job (engine/cuts.py) runs first into a cut store beside the label
store (or the one `--cuts` names; complete cuts there are used as they are), then the clips are listed
from its cuts once; the label store records which cut store, detector and settings (corpus.listing.cuts).

Everything that can be wrong with the input is checked before anything is written. The exit code says
what the store holds for these teachers, not only what this run did.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from omnimill.engine import cluster
from omnimill.engine.job import (EXIT_OK, EXIT_SAMPLE_ERRORS, EXIT_UNIT_FAILURES, EXIT_USAGE, JobOptions,  # noqa: F401
                                 JobResult, UnitJob, at_least_one, check_options, run_job, with_overrides)
from omnimill.engine.cuts import CutOptions, cut_store_for, detect_scene_cuts
from omnimill.engine.worker import UnitTask, flush_commits, run_unit
from omnimill.errors import UserError
from omnimill.labelers.base import TeacherSpec
from omnimill.labelers.registry import build
from omnimill.corpus.image import DEFAULT_MAX_PIXELS
from omnimill.corpus.kinds import DEFAULT_KIND, kind_of, known
from omnimill.corpus.clip_index import scene_detector
from omnimill.corpus.listing import normalise_uri
from omnimill.store.cuts import CutStore
from omnimill.store.labels import LabelStore, retryable
from omnimill.store.base import is_url, local_path, same_or_inside, same_store

DEFAULT_VIEW_SIZE = 384
DEFAULT_UNIT_SIZE = 128  # samples per unit = per chunk; 128 x 384² x 3 B = 57 MB of rgb per chunk

LabelResult = JobResult  # the name label's callers know


@dataclass
class LabelOptions(JobOptions):
    """The job's settings (workers, scheduler, retries, ...) and labelling's own."""

    batch_size: int = 32
    unit_size: int | None = None  # fixed when the store is created
    view_size: int | None = None  # fixed when the store is created
    sample_kind: str | None = None  # what a sample is (corpus.kinds: image, clip); fixed when created, default image
    clips: str | None = None  # clip stores: how videos are cut (fixed:SECONDS, spans, scenes[:DETECTOR]); used
    #                             when created
    cuts: str | None = None  # --clips scenes: the cut store to read or fill (default: beside STORE, cut_store_for)
    min_clip_seconds: float | None = None  # clip stores: shorter clips are dropped (corpus/clip_index.py)
    max_clip_seconds: float | None = None  # clip stores: longer clips are split
    fetched: str | None = None  # document stores: the fetched store of their URL images; used when created
    doc_filter: str | None = None  # document stores: only the images of the documents this filter kept
    frames: int | None = None  # clip stores: frames per clip (8); fixed when created
    audio_segments: int | None = None  # clip stores: audio segments per clip (3); fixed when created
    audio_seconds: float | None = None  # clip stores: seconds per audio segment (2.0); fixed when created
    device: str = "auto"
    dtype: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_threads: int = 2


def check_store_path(store: str, corpus: str, what: str = "store") -> None:
    """STORE must not be the corpus or lie inside it (a folder corpus would list the store's own files)."""
    if same_store(store, corpus):
        raise UserError(f"{store} is the corpus itself; give a {what} path outside {corpus}")
    if same_or_inside(store, corpus) and (is_url(corpus) or os.path.isdir(local_path(corpus))):
        raise UserError(f"{store} is inside the corpus folder; give a {what} path outside {corpus}")
    if same_or_inside(corpus, store):  # creating the store would write over the corpus's files
        raise UserError(f"the corpus {corpus} is inside {store}; give a {what} path that does not hold it")


def label(corpus: str, store: str, teachers: list[str | TeacherSpec], options: LabelOptions | None = None,
          **overrides) -> JobResult:
    """Label `corpus` into the label store `store` with `teachers` (names or `name=checkpoint`)."""
    opts = with_overrides(options or LabelOptions(), overrides)
    _check_options(opts)
    specs = _parse_specs(teachers)
    check_store_path(store, corpus, "label store")

    state = LabelStore.state(store, opts.storage_options)
    if state.startswith("other"):
        raise UserError(f"{store} is {state.removeprefix('other: ')}; give a new path for the label store")
    exists = state == "store"
    if exists:
        labels = LabelStore.open(store, "r+", opts.storage_options)
        _check_same_corpus(labels, corpus)
        _check_fixed(labels, opts)
        _check_recorded(labels, _listing_options(labels.kind, opts), _kind_settings(labels.kind, opts))
        if "fetched" in labels.kind.index_options:  # the document kind: its samples point into these stores
            recorded = labels.corpus.get("listing") or {}
            labels.kind.check_stores(recorded.get("stores") or {}, **_document_stores(corpus, recorded, opts))
        index, kind = None, labels.kind
    else:
        kind = kind_of(opts.sample_kind or DEFAULT_KIND)
        kind = kind.configured({**kind.settings(), **_kind_settings(kind, opts)})
        listing = {**kind.index_options, **_listing_options(kind, opts)}
    if opts.cuts is not None:
        if exists or scene_detector(listing.get("clips") or "") is None:
            raise UserError("--cuts applies when a clip store is created with --clips scenes; drop --cuts")
        if same_or_inside(opts.cuts, store) or same_or_inside(store, opts.cuts):
            raise UserError(f"--cuts {opts.cuts} and the label store {store} overlap; give the cut store its own path")
    view_size = labels.view_size if exists else (opts.view_size or DEFAULT_VIEW_SIZE)
    built = [build(s, view_size) for s in specs]  # unknown names, bad checkpoints: fail before writing
    _check_sees(built, kind)
    built, specs = _dependency_order(built, specs, labels if exists else None)
    provenance = {t.name: t.provenance() for t in built}
    if opts.scheduler:
        cluster.check_reachable(opts.scheduler)  # before the store is created
    if not exists:
        detector = scene_detector(listing["clips"]) if "clips" in listing else None
        cuts, used = _scene_cuts(corpus, opts.cuts or cut_store_for(store), detector, opts) if detector else ({}, {})
        stores = _document_stores(corpus, listing, opts) if "fetched" in kind.index_options else {}
        index = kind.index(corpus, opts.storage_options, **listing, **({"cuts": cuts} if detector else {}), **stores)
        index.listing = {**index.listing, **listing, **used}  # recorded in the store: later runs are checked
        labels = LabelStore.create(store, index, view_size, opts.unit_size or DEFAULT_UNIT_SIZE,
                                   opts.storage_options, kind)
    return run_job(LabelJob(labels, built, specs, provenance, opts))


def _scene_cuts(corpus: str, where: str, detector: str, opts: LabelOptions) -> tuple[dict, dict]:
    """The videos' scene cuts for `--clips scenes`, from the cut store `where`: used as they are when it
    holds complete cuts of this detector (made by `omnimill cuts`, or by an earlier run whose label store
    was not created), else detected there first (the cut job, on this run's Dask options; never --force:
    cuts are redone only by `omnimill cuts --force`). Returns ({video key: cuts or error}, what the label
    store records of them: {"cuts": {store, uuid, detector, settings}})."""
    if not _has_cuts(where, detector, opts.storage_options):
        shared = {f.name: getattr(opts, f.name) for f in fields(JobOptions)}
        result = detect_scene_cuts(corpus, where, CutOptions(**{**shared, "force": False, "repair": False},
                                                              detector=detector))
        if result.exit_code == EXIT_UNIT_FAILURES:
            units = len(result.units_failed) or result.store_missing
            error = result.units_failed[0]["error"] if result.units_failed else "no commit marker after the run"
            raise UserError(f"scene cut detection into {where} did not finish ({units} units: {error}); run the same "
                            "command again: finished units are kept")
    store = CutStore.open(where, "r", opts.storage_options)
    if store.corpus.get("uri") != normalise_uri(corpus):
        raise UserError(f"{where} holds the cuts of {store.corpus.get('uri')}, not of {normalise_uri(corpus)}; give "
                        "that corpus's cut store, or a new --cuts path")
    uri = where if is_url(where) else os.path.abspath(local_path(where))
    return store.cuts(detector), {"cuts": {"store": uri, "uuid": store.uuid, "detector": detector,
                                           "settings": store.settings(detector)}}


def _document_stores(corpus: str, listing: dict, opts: LabelOptions) -> dict:
    """The stores the document kind lists its images from (corpus/document_kind.py), opened here: corpus/ opens
    no store. CORPUS is the document store; --fetched, the fetched store of its URL images."""
    from omnimill.store.documents import DocumentStore
    from omnimill.store.fetched import FetchedStore

    fetched, so = listing.get("fetched"), opts.storage_options
    return {"documents": DocumentStore.open(normalise_uri(corpus), "r", so),
            "fetched_store": FetchedStore.open(normalise_uri(fetched), "r", so) if fetched else None}


def _has_cuts(where: str, detector: str, storage_options: dict) -> bool:
    """Does the cut store at `where` hold complete cuts of `detector`?"""
    if CutStore.state(where, storage_options) != "store":
        return False
    store = CutStore.open(where, "r", storage_options)
    return detector in store.parts() and store.complete(detector)


class LabelJob(UnitJob):
    VERB, LOCKED_AS, PARTS = "labelling", "labelled", "teachers"
    work = staticmethod(run_unit)
    flush = staticmethod(flush_commits)

    def __init__(self, labels: LabelStore, built: list, specs: list[TeacherSpec], provenance: dict,
                 options: LabelOptions):
        super().__init__(labels, [t.name for t in built], options)
        self.teachers = {t.name: t for t in built}  # in dependency order, as `specs`
        self.specs, self.provenance = specs, provenance

    def prepare(self, part: str, force: bool) -> None:
        self.store.prepare_teacher(part, self.teachers[part].fields(), self.provenance[part], force=force)

    def plan(self, result: JobResult, sweep: bool) -> list[UnitTask]:
        tasks = plan(self.store, self.specs, self.parts, self.options, retry_failed=not sweep, run=self.run)
        if not sweep:
            result.samples_retried = sum(len(rows) for t in tasks for rows in t.retry.values())
        return tasks


def plan(labels: LabelStore, specs: list[TeacherSpec], names: list[str], opts: LabelOptions,
         retry_failed: bool = True, run: str = "") -> list[UnitTask]:
    """One task per unit that some teacher has not committed, carrying just those teachers; with
    `retry_failed`, also the units holding retryable failures, carrying just those samples.

    Reads only the markers the store's unit summary does not settle (`unsettled_markers`: not summarized,
    or holding retryable failures); a unit outside them is committed with nothing to retry."""
    markers = {name: labels.unsettled_markers(name) for name in names}
    tasks = []
    for u in sorted(set().union(*markers.values())):
        todo, retry = [], {}
        for spec, name in zip(specs, names):  # dependency order is kept
            if u not in markers[name]:
                continue  # settled: committed, no retryable failure
            marker = markers[name][u]
            rows = sorted({e["index"] for e in marker.get("errors", []) if retryable(e)}) if marker else []
            if marker is None or (retry_failed and rows):
                todo.append(spec)
                if marker is not None:
                    retry[name] = rows
        if todo:
            unit = labels.unit(u)
            tasks.append(UnitTask(labels.uri, u, unit.start, unit.stop, todo, labels.view_size,
                                  batch_size=opts.batch_size, device=opts.device, dtype=opts.dtype,
                                  torch_threads=opts.torch_threads, decode_threads=opts.decode_threads,
                                  max_pixels=opts.max_pixels, storage_options=opts.storage_options, retry=retry,
                                  run=run))
    return tasks


def _check_sees(built: list, kind) -> None:
    """A teacher that sees whole clips (audio, subtitles) labels clip stores only; a teacher that sees frames
    cannot read per-clip outputs as its input (they have no frame to line up with)."""
    sees = {t.name: t.sees for t in built}
    for t in built:
        if t.sees != "frames" and t.sees != kind.name + "s":
            raise UserError(f"teacher {t.name} labels {t.sees} (their audio, subtitles, all frames), and this store "
                            f"holds {kind.plural}; label videos or audio files with --sample-kind clip")
        for dep in t.requires:
            if t.sees == "frames" and sees.get(dep, "frames") != "frames":
                raise UserError(f"teacher {t.name} labels frames and cannot read {dep}, which labels whole clips")


def _dependency_order(built: list, specs: list[TeacherSpec], labels: LabelStore | None):
    """Order teachers so each runs after the teachers it requires; a requirement must be in this run
    or already complete in the store (pose needs detection's person boxes)."""
    names = {t.name for t in built}
    for t in built:
        for dep in t.requires:
            if dep in names:
                continue
            if (labels is None or dep not in labels.teachers()
                    or labels.tally(dep, max_errors=0)["units_done"] < labels.n_units):  # from the summary
                raise UserError(f"teacher {t.name} needs {dep}: add --teacher {dep} to this run, "
                                f"or finish labelling {dep} first")
    ordered, placed = [], set()
    pending = list(zip(built, specs))
    while pending:
        ready = [(t, s) for t, s in pending if all(d in placed or d not in names for d in t.requires)]
        if not ready:
            raise UserError(f"teachers {', '.join(t.name for t, _ in pending)} require each other in a cycle")
        for t, s in ready:
            ordered.append((t, s))
            placed.add(t.name)
            pending.remove((t, s))
    return [t for t, _ in ordered], [s for _, s in ordered]


def _parse_specs(teachers) -> list[TeacherSpec]:
    specs = [t if isinstance(t, TeacherSpec) else TeacherSpec.parse(t) for t in teachers]
    if not specs:
        raise UserError("give at least one --teacher (e.g. --teacher rgb --teacher dinov2=/models/dinov2-base)")
    names = [s.name for s in specs]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise UserError(f"teacher {', '.join(sorted(duplicates))} given twice; give each teacher once")
    return specs


def _check_options(opts: LabelOptions) -> None:
    at_least_one(opts, {"batch_size": "--batch-size", "unit_size": "--unit-size", "view_size": "--view-size"})
    check_options(opts)
    if opts.device not in ("auto", "cpu") and not opts.device.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda[:N], not {opts.device!r}")
    if opts.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"--dtype must be auto, float32, bfloat16 or float16, not {opts.dtype!r}")


# Listing options of `label` -> the kind's `index` keywords (SampleKind.index_options) and the flag that gives them
_LISTING = {"clips": ("clips", "--clips"), "min_clip_seconds": ("min_seconds", "--min-clip-seconds"),
            "max_clip_seconds": ("max_seconds", "--max-clip-seconds"), "fetched": ("fetched", "--fetched"),
            "doc_filter": ("filter", "--doc-filter")}


def _listing_options(kind, opts: LabelOptions) -> dict:
    """The listing options given, as the kind's `index` takes them; one the kind does not take is refused
    (--clips for an image store). On an existing store they are checked against the ones it recorded."""
    given = {key: getattr(opts, name) for name, (key, _) in _LISTING.items() if getattr(opts, name) is not None}
    for name, (key, flag) in _LISTING.items():
        if key in given and key not in kind.index_options:
            takes = next(name for name in known() if key in kind_of(name).index_options)
            raise UserError(f"{flag} applies to {takes} stores, and this is a store of {kind.plural} "
                            f"(sample kind {kind.name}); drop {flag} or give --sample-kind {takes}")
    return given


# Settings of `label` -> the kind's settings (SampleKind.settings) and the flag that gives them
_SETTINGS = {"frames": "--frames", "audio_segments": "--audio-segments", "audio_seconds": "--audio-seconds"}


def _kind_settings(kind, opts: LabelOptions) -> dict:
    """The kind settings given; one the kind does not have is refused (--frames for an image store)."""
    given = {name: getattr(opts, name) for name in _SETTINGS if getattr(opts, name) is not None}
    for name, value in given.items():
        if name not in kind.settings():
            raise UserError(f"{_SETTINGS[name]} applies to clip stores, and this is a store of {kind.plural} "
                            f"(sample kind {kind.name}); drop {_SETTINGS[name]} or give --sample-kind clip")
        if value <= 0:
            raise UserError(f"{_SETTINGS[name]} must be positive, not {value}")
    return given


def _check_recorded(labels: LabelStore, listing: dict, settings: dict) -> None:
    """Listing options and kind settings are fixed when the store is created: the same values pass, others
    are refused (the clips are already cut; the arrays already have T frames)."""
    recorded = {**labels.kind.index_options, **(labels.corpus.get("listing") or {}), **labels.kind.settings()}
    flags = {**{key: flag for key, flag in _LISTING.values()}, **_SETTINGS}
    for name, value in {**listing, **settings}.items():
        if recorded.get(name) != value:
            raise UserError(f"{labels.uri} was made with {flags[name]} {recorded.get(name)}, fixed when it was "
                            f"created; drop {flags[name]} or label into a new store")


def _check_same_corpus(labels: LabelStore, corpus: str) -> None:
    if normalise_uri(corpus) != labels.corpus["uri"]:
        raise UserError(f"{labels.uri} was built from corpus {labels.corpus['uri']}, not {normalise_uri(corpus)}; "
                        "give that corpus, or a new store path for this one")


def _check_fixed(labels: LabelStore, opts: LabelOptions) -> None:
    for name in ("view_size", "unit_size", "sample_kind"):
        given, fixed = getattr(opts, name), getattr(labels, name)
        if given is not None and given != fixed:
            raise UserError(f"{labels.uri} has {name.replace('_', ' ')} {fixed}, fixed when it was created; "
                            f"drop --{name.replace('_', '-')} or label into a new store")
