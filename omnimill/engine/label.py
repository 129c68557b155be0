"""Client side of `omnimill label`: index, plan units, submit with back-pressure, retry, resume.

    index corpus (first run only) -> check teachers and checkpoints -> create store -> lock it
    -> [--repair: verify, and forget the markers of damaged units]
    -> plan (unit, teachers without a marker, and samples whose recorded failure is retryable)
    -> at most `max_in_flight` units on the cluster -> retry units lost with a worker
    -> record the run -> unlock

Everything that can be wrong with the input is checked before anything is written. The exit code says
what the store holds for these teachers, not only what this run did.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields

from omnimill.engine import cluster
from omnimill.engine.units import run_units
from omnimill.engine.worker import UnitTask, run_unit
from omnimill.errors import UserError
from omnimill.labelers.base import TeacherSpec
from omnimill.labelers.registry import build
from omnimill.corpus.image import DEFAULT_MAX_PIXELS
from omnimill.corpus.listing import index_corpus, normalise_uri
from omnimill.store.labels import LabelStore, retryable
from omnimill.store.base import is_url, local_path, same_or_inside, same_store

DEFAULT_VIEW_SIZE = 384
DEFAULT_UNIT_SIZE = 128  # samples per unit = per chunk; 128 x 384² x 3 B = 57 MB of rgb per chunk

# Exit codes of `omnimill label` (also in the README).
EXIT_OK, EXIT_SAMPLE_ERRORS, EXIT_UNIT_FAILURES, EXIT_USAGE = 0, 3, 4, 2


@dataclass
class LabelOptions:
    workers: int | None = None  # embedded cluster size; default one per GPU, else cores / 2
    scheduler: str | None = None  # tcp://host:8786 or a scheduler file: join that cluster
    batch_size: int = 32
    unit_size: int | None = None  # fixed when the store is created
    view_size: int | None = None  # fixed when the store is created
    device: str = "auto"
    dtype: str = "auto"
    force: bool = False  # relabel the given teachers from scratch
    max_in_flight: int | None = None  # default: 2 units per worker (one running, one queued)
    retries: int = 2  # extra attempts for a unit whose task failed or whose worker died
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_threads: int = 2
    torch_threads: int | None = None
    break_lock: bool = False
    repair: bool = False  # verify the teachers' units first and label the damaged ones again
    progress: bool = True
    local_directory: str | None = None
    storage_options: dict = field(default_factory=dict)


@dataclass
class LabelResult:
    store: str
    teachers: list[str]
    units_planned: int = 0
    units_failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stats: dict[int, dict] = field(default_factory=dict)  # unit -> worker stats of its last completed run
    units_repaired: int = 0  # damaged units (found by verify) whose markers --repair removed
    samples_retried: int = 0  # recorded retryable failures planned again
    store_failed: int = 0  # failed labels the store holds for these teachers after the run
    store_final: int = 0  # ... of which not retryable (a file that does not decode)
    store_missing: int = 0  # units of these teachers without a commit marker after the run

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
    def samples_ok(self) -> int:  # labels: sample x teacher
        return sum(sum(s["ok"].values()) for s in self.stats.values())

    @property
    def samples_failed(self) -> int:  # failed labels (sample x teacher), each recorded in its unit's marker
        return sum(sum(s["failed"].values()) for s in self.stats.values())

    @property
    def exit_code(self) -> int:
        """What the store holds: 4 while a unit lacks its marker, 3 while any failure is recorded, else 0."""
        if self.units_failed or self.store_missing:
            return EXIT_UNIT_FAILURES
        return EXIT_SAMPLE_ERRORS if self.store_failed else EXIT_OK


def with_overrides(options, overrides: dict):
    """Set typed options by name; an unknown name is refused with the list (a typo never passes silently)."""
    known = {f.name for f in fields(options)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown setting {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for k, v in overrides.items():
        setattr(options, k, v)
    return options


def check_store_path(store: str, corpus: str, what: str = "store") -> None:
    """STORE must not be the corpus or lie inside it (a folder corpus would list the store's own files)."""
    if same_store(store, corpus):
        raise UserError(f"{store} is the corpus itself; give a {what} path outside {corpus}")
    if same_or_inside(store, corpus) and (is_url(corpus) or os.path.isdir(local_path(corpus))):
        raise UserError(f"{store} is inside the corpus folder; give a {what} path outside {corpus}")
    if same_or_inside(corpus, store):  # creating the store would write over the corpus's files
        raise UserError(f"the corpus {corpus} is inside {store}; give a {what} path that does not hold it")


def label(corpus: str, store: str, teachers: list[str | TeacherSpec], options: LabelOptions | None = None,
          **overrides) -> LabelResult:
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
        index = None
    else:
        index = index_corpus(corpus, opts.storage_options)
    view_size = labels.view_size if exists else (opts.view_size or DEFAULT_VIEW_SIZE)
    built = [build(s, view_size) for s in specs]  # unknown names, bad checkpoints: fail before writing
    built, specs = _dependency_order(built, specs, labels if exists else None)
    provenance = {t.name: t.provenance() for t in built}
    if opts.scheduler:
        cluster.check_reachable(opts.scheduler)  # before the store is created
    if not exists:
        labels = LabelStore.create(store, index, view_size, opts.unit_size or DEFAULT_UNIT_SIZE,
                                   opts.storage_options)

    names = [t.name for t in built]
    token = labels.acquire_lock(opts.break_lock, "labelled")
    result = LabelResult(store, names)
    started = time.time()
    try:
        for t in built:
            labels.prepare_teacher(t.name, t.fields(), provenance[t.name], force=opts.force)
        if opts.repair:
            damaged = labels.damaged_units(names)
            for t in built:
                units = damaged[t.name]
                if units is None:  # its arrays are damaged, not just some chunks: the teacher starts over
                    labels.prepare_teacher(t.name, t.fields(), provenance[t.name], force=True)
                    result.units_repaired += labels.n_units
                else:
                    labels.clear_markers(t.name, sorted(units))
                    result.units_repaired += len(units)
        tasks = plan(labels, specs, names, opts)
        result.units_planned = len(tasks)
        result.samples_retried = sum(len(rows) for t in tasks for rows in t.retry.values())
        if tasks:
            _run(tasks, labels, specs, names, opts, result)
        _tally_store(labels, names, result)
    finally:
        result.seconds = time.time() - started
        try:
            labels.append_run(_run_record(result, started, opts))
        finally:
            labels.release_lock(token)  # also when the record cannot be written (disk full)
    return result


def plan(labels: LabelStore, specs: list[TeacherSpec], names: list[str], opts: LabelOptions,
         retry_failed: bool = True) -> list[UnitTask]:
    """One task per unit that some teacher has not committed, carrying just those teachers; with
    `retry_failed`, also the units holding retryable failures, carrying just those samples."""
    markers = {name: labels.markers(name) for name in names}
    tasks = []
    for u in range(labels.n_units):
        todo, retry = [], {}
        for spec, name in zip(specs, names):  # dependency order is kept
            marker = markers[name][u]
            rows = sorted({e["index"] for e in marker.get("errors", []) if retryable(e)}) if marker else []
            if marker is None or (retry_failed and rows):
                todo.append(spec)
                if marker is not None:
                    retry[name] = rows
        if todo:
            unit = labels.unit(u)
            tasks.append(UnitTask(labels.uri, u, unit.start, unit.stop, todo, labels.view_size, opts.batch_size,
                                  opts.device, opts.dtype, opts.torch_threads, {}, opts.decode_threads,
                                  opts.max_pixels, 0, opts.storage_options, retry=retry))
    return tasks


def _tally_store(labels: LabelStore, names: list[str], result: LabelResult) -> None:
    for name in names:
        for marker in labels.markers(name):
            if marker is None:
                result.store_missing += 1
                continue
            result.store_failed += marker["failed"]
            result.store_final += sum(1 for e in marker.get("errors", []) if not retryable(e))


def _run(tasks: list[UnitTask], labels: LabelStore, specs: list[TeacherSpec], names: list[str],
         opts: LabelOptions, result: LabelResult) -> None:
    from omnimill.engine.worker import flush_commits

    # A sweep reruns only units without a marker: a failure that stays is retried by the next command.
    result.units_failed = run_units(
        tasks, run_unit, lambda: plan(labels, specs, names, opts, retry_failed=False), result.stats,
        scheduler=opts.scheduler,
        workers=opts.workers, local_directory=opts.local_directory, max_in_flight=opts.max_in_flight,
        retries=opts.retries, progress=opts.progress, flush=flush_commits)


def _dependency_order(built: list, specs: list[TeacherSpec], labels: LabelStore | None):
    """Order teachers so each runs after the teachers it requires; a requirement must be in this run
    or already complete in the store (pose needs detection's person boxes)."""
    names = {t.name for t in built}
    for t in built:
        for dep in t.requires:
            if dep in names:
                continue
            if labels is None or dep not in labels.teachers() or not labels.done_units(dep).all():
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
    for name in ("batch_size", "unit_size", "view_size", "workers", "max_in_flight"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if opts.device not in ("auto", "cpu") and not opts.device.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda[:N], not {opts.device!r}")
    if opts.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"--dtype must be auto, float32, bfloat16 or float16, not {opts.dtype!r}")


def _check_same_corpus(labels: LabelStore, corpus: str) -> None:
    if normalise_uri(corpus) != labels.corpus["uri"]:
        raise UserError(f"{labels.uri} was built from corpus {labels.corpus['uri']}, not {normalise_uri(corpus)}; "
                        "give that corpus, or a new store path for this one")


def _check_fixed(labels: LabelStore, opts: LabelOptions) -> None:
    for name in ("view_size", "unit_size"):
        given, fixed = getattr(opts, name), getattr(labels, name)
        if given is not None and given != fixed:
            raise UserError(f"{labels.uri} has {name.replace('_', ' ')} {fixed}, fixed when it was created; "
                            f"drop --{name.replace('_', '-')} or label into a new store")


def _run_record(result: LabelResult, started: float, opts: LabelOptions) -> dict:
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(result.seconds, 2), "host": socket.gethostname(), "pid": os.getpid(),
        "teachers": result.teachers, "units_planned": result.units_planned, "units_done": result.units_done,
        "units_failed": result.units_failed, "samples_ok": result.samples_ok,
        "samples_failed": result.samples_failed, "samples_retried": result.samples_retried,
        "units_repaired": result.units_repaired, "store_failed": result.store_failed,
        "store_missing": result.store_missing, "scheduler": opts.scheduler or "embedded",
        "options": {k: v for k, v in asdict(opts).items() if k not in ("storage_options", "progress")},
    }
