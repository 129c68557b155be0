"""Worker side: label one work unit. read → decode (thread pool, prefetching) → teachers → write → marker.

Runs inside a Dask worker process but knows nothing of Dask: `run_unit` is a plain function, so the
same code runs in a test, a benchmark, or any other executor. Teachers load once per process and stay
cached; each batch is decoded once and every requested teacher runs on it. Decoding starts before the
teachers load (a fresh worker decodes its first batches while it imports torch), runs `PREFETCH_BATCHES`
ahead on threads, and each unit's commit
(compression, writes, then the markers) runs on a background thread while the next unit is labelled.
A unit's stats say where its time went: teacher load, read + decode, waiting for decode, each teacher,
its commit (the previous unit's, when commits run behind) and waiting for it.

What a sample is belongs to the store's sample kind (corpus/kinds.py): the kind fetches and decodes
each sample, turns decoded samples into the teachers' Batch, and gives the per-sample arrays written at
the top of the store (an image's crop_box). Nothing here names images or clips. A sample may be several
frames (a clip: `kind.frames_per_sample` = T): the Batch then holds B*T frames, teachers label frames,
and their outputs are stored per sample as (T, ...) (`kind.frame_axes`); a frame that fails fails its sample.
A teacher that sees whole clips (`Teacher.sees = "clips"`: audio, speech, captions of the clip) gets a row
per clip instead (`_clip_batch`), and its outputs are stored per clip as declared.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from omnimill.engine.runtime import cached, loaded, torch_threads, undo_dask_malloc_trim, unit_marker, worker_address
from omnimill.errors import SampleError, TeacherLoadError
from omnimill.labelers.base import Batch, Teacher, TeacherSpec
from omnimill.labelers.registry import build
from omnimill.corpus.image import DEFAULT_MAX_PIXELS
from omnimill.corpus.listing import ByteReader
from omnimill.corpus.sample import DecodeSettings
from omnimill.store.base import now
from omnimill.store.labels import LabelStore

PREFETCH_BATCHES = 2  # batches decoded ahead while the teachers run on the current one


@dataclass
class UnitTask:
    store: str
    unit: int
    start: int
    stop: int
    teachers: list[TeacherSpec]
    view_size: int  # the store's; the kind decodes at it and teachers are built for it
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "auto"
    torch_threads: int | None = None  # None: this host's cores / workers_per_host[host]
    workers_per_host: dict = field(default_factory=dict)
    decode_threads: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS
    attempt: int = 0
    storage_options: dict = field(default_factory=dict)
    sync_commit: bool = False  # commit before returning (no overlap); for callers without a flush
    retry: dict = field(default_factory=dict)  # teacher -> sample indices to label again (retryable failures);
    #                                            a teacher not named here labels the whole unit
    run: str = ""  # the run (job.py): a worker keeps one store object, with its write handles, per run


def get_teacher(spec: TeacherSpec, view_size: int, device: str, dtype: str) -> Teacher:
    def make():
        teacher = build(spec, view_size)
        try:
            teacher.load(device, dtype)
        except (TimeoutError, ConnectionError, MemoryError):
            raise  # may pass (a hub timeout, a GPU still busy): the unit is retried as usual
        except Exception as e:  # a wrong checkpoint fails the same way on every attempt: stop the job
            if "out of memory" in str(e):  # torch.cuda.OutOfMemoryError: retried, as above
                raise
            raise TeacherLoadError(f"teacher {spec.name} could not be loaded from {spec.checkpoint or 'its default'}"
                                   f" ({type(e).__name__}: {e}); check the checkpoint") from None
        return teacher

    return cached(("teacher", spec.cache_key, view_size, device, dtype), make)


def loaded_teachers() -> int:
    """How many teachers this process has loaded (tests check "once per worker")."""
    return loaded("teacher")


def run_unit(task: UnitTask) -> dict:
    t0, started = time.perf_counter(), time.time()
    cached(("malloc",), undo_dask_malloc_trim)
    # One store object per run: its write handles (store/base.py `writable`) outlive a unit, not a run, so a
    # teacher a later run remade (--force, on a cluster whose workers stay up) is opened afresh.
    store = cached(("store", task.store, task.run), lambda: LabelStore.open(task.store, "r+", task.storage_options))
    pool = cached(("pool", task.decode_threads), lambda: ThreadPoolExecutor(task.decode_threads, "omnimill-decode"))
    kind = store.kind
    settings = DecodeSettings(task.view_size, task.max_pixels)
    meta = store.samples(task.start, task.stop)
    n = task.stop - task.start
    # The kind's per-sample arrays (an image's crop_box); zeros for a sample that does not decode
    sample_values = {a.name: np.zeros((n, *a.shape), a.dtype) for a in kind.sample_arrays}
    values_intact = all(store.unit_intact(name, task.unit, decode=True)  # small: decoding costs nothing
                        for name in sample_values)
    # A retry labels only a teacher's recorded retryable failures and writes the rest of its chunk back
    # unchanged, so it needs that chunk readable; a damaged one is labelled whole instead.
    retry = {name: {i - task.start for i in indices} for name, indices in task.retry.items()
             if values_intact and store.unit_intact(name, task.unit)}
    # Rows to decode: all of them, unless every teacher of the task only retries some
    rows_needed = (sorted(set().union(*retry.values())) if len(retry) == len(task.teachers) else list(range(n)))

    with ByteReader(task.storage_options) as reader:
        # Decoding starts before the teachers load: on a fresh worker the first batches are decoded while
        # torch and the models are imported (seconds), instead of after.
        decoding = Prefetch(pool, functools.partial(_load, kind, reader, meta, settings),
                            [rows_needed[i:i + task.batch_size] for i in range(0, len(rows_needed), task.batch_size)])
        try:
            stats = _label(task, store, kind, meta, decoding, sample_values, values_intact, retry, rows_needed)
        finally:
            decoding.cancel()  # a teacher that did not load, an exception: queued decodes are dropped
    if "fatal" in stats:
        return stats
    return {**stats, "seconds": time.perf_counter() - t0, "worker": worker_address(), "started": started,
            "ended": time.time()}


def _label(task: UnitTask, store: LabelStore, kind, meta: dict, decoding: "Prefetch", sample_values: dict,
           values_intact: bool, retry: dict, rows_needed: list[int]) -> dict:
    """Load the teachers, run them on every decoded batch, queue the commit; returns the unit's stats."""
    tl = time.perf_counter()
    try:
        teachers = [get_teacher(s, task.view_size, task.device, task.dtype) for s in task.teachers]
    except TeacherLoadError as e:  # returned, not raised: the client stops the job and says it in one line
        return {"unit": task.unit, "fatal": str(e)}
    load_seconds = time.perf_counter() - tl  # imports and weights on a fresh worker; ~0 once cached
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(torch_threads(task.torch_threads, task.workers_per_host))
    n = task.stop - task.start
    span = slice(task.start, task.stop)
    frames = kind.frames_per_sample  # frame-teacher batch rows per sample (1 for an image)
    rows_per = {t.name: frames if t.sees == "frames" else 1 for t in teachers}  # a clip teacher: one per clip
    outputs = {t.name: {f.name: _empty((n, *(kind.frame_axes if t.sees == "frames" else ())), f)
                        for f in t.fields()} for t in teachers}
    ok = {t.name: np.zeros(n, bool) for t in teachers}
    errors: dict[str, list] = {t.name: [] for t in teachers}
    seconds = {t.name: 0.0 for t in teachers}
    # Rows each teacher labels: all of them, or (a retry) only its recorded retryable failures; the rest of
    # its chunk is read back and written again unchanged.
    todo = {t.name: retry.get(t.name, set(range(n))) for t in teachers}
    for name in retry:
        outputs[name] = store.outputs(name, span, list(outputs[name]))
        ok[name] = store.ok(name, span)
        ok[name][sorted(todo[name])] = False
        old = json.loads(store.raw_marker(name, task.unit) or "{}")
        errors[name] = [e for e in old.get("errors", []) if e["index"] - task.start not in todo[name]]
    if values_intact:
        for name, values in store.sample_values(span).items():
            sample_values[name][:] = values  # rows not decoded now keep theirs
    # Outputs of required teachers: this run's (filled batch by batch) or, if not in this run, the store's.
    have = {name: (outputs[name], ok[name]) for name in outputs}
    for t in teachers:
        for dep in t.requires:
            if dep not in have:
                if not store.unit_intact(dep, task.unit):
                    raise RuntimeError(f"unit {task.unit} of {dep}, which {t.name} needs, is damaged: run "
                                       f"`omnimill verify`, then label {dep} with --repair")
                have[dep] = (store.outputs(dep, span), store.ok(dep, span))

    def record(name: str, row: int, err: SampleError):
        # A file that does not decode fails the same way next time; anything else may be transient.
        errors[name].append({"index": task.start + row, "key": str(meta["keys"][row]),
                             "stage": err.stage, "error": err.reason, "retryable": err.stage != "decode"})

    for rows, results in decoding:
        good = [r for r, d in zip(rows, results) if not isinstance(d, SampleError)]
        for r, d in zip(rows, results):
            if isinstance(d, SampleError):
                for t in teachers:
                    if r in todo[t.name]:
                        record(t.name, r, d)
        if not good:
            continue
        decoded = [d for d in results if not isinstance(d, SampleError)]
        for r, d in zip(good, decoded):
            for name, value in kind.sample_values(d).items():
                sample_values[name][r] = value
        keys = [str(meta["keys"][r]) for r in good]
        views = {}  # what teachers see: "frames" (pictures) or "clips" (whole clips), built once per batch
        if any(t.sees == "frames" for t in teachers):
            views["frames"] = Batch(keys=_frame_keys(keys, frames), **kind.batch_fields(decoded))
        if any(t.sees == "clips" for t in teachers):
            views["clips"] = _clip_batch(kind, decoded, keys)
        for t in teachers:  # in dependency order (the client sorted them)
            ts = time.perf_counter()
            per = rows_per[t.name]
            rows_t, batch_t = good, views[t.sees]
            if len(todo[t.name]) < n:
                mine = [i for i, r in enumerate(good) if r in todo[t.name]]
                rows_t, batch_t = [good[i] for i in mine], batch_t.subset(_frame_rows(mine, per))
            if rows_t and t.requires:
                rows_t, batch_t = _with_upstream(t, batch_t, rows_t, have, lambda r, e, n=t.name: record(n, r, e),
                                                 per)
            if rows_t:
                done = _run_teacher(t, batch_t, rows_t, outputs[t.name], lambda r, e, n=t.name: record(n, r, e),
                                    per)
                ok[t.name][done] = True
            seconds[t.name] += time.perf_counter() - ts

    markers = {}
    for t in teachers:
        markers[t.name] = unit_marker(
            task, ok=int(ok[t.name].sum()), failed=n - int(ok[t.name].sum()), seconds=round(seconds[t.name], 4),
            device=_device_name(t), retried=len(todo[t.name]) if len(todo[t.name]) < n else 0,
            errors=sorted(errors[t.name], key=lambda e: e["index"]))

    tw = time.perf_counter()
    write_wait, commit_seconds = _writer.submit(store, task, sample_values, outputs, ok, markers)
    return {"unit": task.unit, "n": len(rows_needed), "load_seconds": load_seconds,
            "decode_seconds": decoding.seconds, "decode_wait": decoding.waited,
            "write_wait": write_wait, "queue_wait": time.perf_counter() - tw - write_wait,
            "commit_seconds": commit_seconds, "teacher_seconds": seconds,
            "ok": {name: int(v[sorted(todo[name])].sum()) for name, v in ok.items()},
            "failed": {name: len(todo[name]) - int(v[sorted(todo[name])].sum()) for name, v in ok.items()}}


def _load(kind, reader: ByteReader, meta: dict, settings: DecodeSettings, row: int):
    """One sample's bytes -> the kind's decoded sample, or the SampleError that says why not (on a decode thread)."""
    sample = {name: column[row] for name, column in meta.items()}
    try:
        data = kind.fetch(reader, sample)
    except Exception as e:  # missing file, network, permissions: the sample fails, the unit goes on
        return SampleError("read", f"{type(e).__name__}: {e}")
    try:
        return kind.decode(data, sample, settings)
    except SampleError as e:
        return e


class Prefetch:
    """Decodes batches of rows on the pool, `PREFETCH_BATCHES` ahead of the one being labelled.

    Iterating yields (rows, results) in order; `waited` is the time the labelling thread spent waiting for a
    batch (decode not hidden), `seconds` the decode threads' time inside `load` (read + decode).
    """

    def __init__(self, pool: ThreadPoolExecutor, load, batches: list[list[int]]):
        self.pool, self.load, self.batches = pool, load, batches
        self.pending: deque = deque()
        self.queued = 0  # batches submitted so far
        self.waited = self.seconds = 0.0
        self.lock = threading.Lock()
        while self.queued < min(PREFETCH_BATCHES, len(batches)):
            self._queue_next()

    def _queue_next(self) -> None:
        self.pending.append([self.pool.submit(self._timed, r) for r in self.batches[self.queued]])
        self.queued += 1

    def _timed(self, row: int):
        t = time.perf_counter()
        try:
            return self.load(row)
        finally:
            with self.lock:
                self.seconds += time.perf_counter() - t

    def __iter__(self):
        for rows in self.batches:
            t = time.perf_counter()
            results = [f.result() for f in self.pending.popleft()]
            self.waited += time.perf_counter() - t
            if self.queued < len(self.batches):
                self._queue_next()
            yield rows, results

    def cancel(self) -> None:
        """Drop the batches not yet decoding (those already on a thread finish and are discarded)."""
        for futures in self.pending:
            for f in futures:
                f.cancel()
        self.pending.clear()


def commit(store: LabelStore, task: UnitTask, sample_values, outputs, ok, markers) -> float:
    """Write every chunk of the unit, then each teacher's marker: the marker means "all chunks in".
    Returns its seconds (compression and writes)."""
    t = time.perf_counter()
    store.write_sample_values(task.start, sample_values)
    unit = store.unit(task.unit)
    for name, marker in markers.items():
        marker["finished"] = now()
        store.write_unit(name, unit, outputs[name], ok[name], marker)
    return time.perf_counter() - t


class Writer:
    """Commits units on a background thread, so compressing and writing unit u overlaps computing u+1.

    At most one commit is behind: a task waits for the previous commit before queuing its own, so memory
    stays bounded (two units of outputs). A task that returned is therefore not yet committed: the client
    calls `flush()` on every worker at the end and re-plans from the markers (a worker that died in
    between simply leaves its last unit without a marker, and it is labelled again).
    """

    def __init__(self):
        self.pool = ThreadPoolExecutor(1, "omnimill-commit")
        self.pending = None
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def submit(self, store, task, *payload) -> tuple[float, float]:
        """Queue the commit; returns (seconds spent waiting for the previous one, that commit's own seconds;
        with `sync_commit`, this one's)."""
        waited, seconds = self._wait()
        if task.sync_commit:
            seconds = commit(store, task, *payload)
        else:
            with self.lock:
                self.pending = (task.unit, self.pool.submit(commit, store, task, *payload))
        return waited, seconds

    def _wait(self) -> tuple[float, float]:
        with self.lock:
            pending, self.pending = self.pending, None
        if pending is None:
            return 0.0, 0.0
        t = time.perf_counter()
        unit, future = pending
        seconds = 0.0
        try:
            seconds = future.result()
        except Exception as e:  # the unit stays without a marker; the client's sweep relabels it
            self.failures.append(f"unit {unit}: {type(e).__name__}: {e}")
        return time.perf_counter() - t, seconds

    def flush(self) -> list[str]:
        self._wait()
        failures, self.failures = self.failures, []
        return failures


_writer = Writer()


def flush_commits() -> list[str]:
    """Wait until this process's queued commits are written; returns commit failures since last flush."""
    return _writer.flush()


def _clip_batch(kind, decoded: list, keys: list[str]) -> Batch:
    """A Batch of whole clips for teachers that see clips: a row per clip, its frames as `views` (B, T, S, S, 3),
    its first frame's info, and the kind's clip fields (audio, waveform, times, subtitles) as `clips`."""
    fields = kind.clip_fields(decoded)
    return Batch(fields["frames"], [kind.frame_infos(d)[0] for d in decoded], list(keys), clips=fields)


def _frame_keys(keys: list[str], frames: int) -> list[str]:
    """A Batch's keys: the sample's key per frame, `key#t` when a sample has several frames."""
    return keys if frames == 1 else [f"{key}#{t}" for key in keys for t in range(frames)]


def _frame_rows(samples: list[int], frames: int) -> list[int]:
    """Batch rows (frames) of the samples at these positions of the batch."""
    return samples if frames == 1 else [i * frames + t for i in samples for t in range(frames)]


def _per_frame(array: np.ndarray, frames: int) -> np.ndarray:
    """(B, T, ...) stored per sample -> (B*T, ...) per frame, as teachers see it (an image: unchanged)."""
    return array if frames == 1 else array.reshape(-1, *array.shape[2:])


def _per_sample(array, frames: int):
    """(B*T, ...) from a teacher -> (B, T, ...) as stored (an image: unchanged)."""
    return array if frames == 1 else np.asarray(array).reshape(-1, frames, *np.shape(array)[1:])


def _with_upstream(teacher: Teacher, batch: Batch, rows: list[int], have: dict, record, frames: int = 1):
    """Attach required teachers' outputs (per frame); a sample they failed on fails here too, saying which."""
    usable = []
    for i, r in enumerate(rows):
        missing = [dep for dep in teacher.requires if not have[dep][1][r]]
        if missing:
            record(r, SampleError(missing[0], f"no {missing[0]} label for this sample, which {teacher.name} needs"))
        else:
            usable.append(i)
    sub = batch.subset(_frame_rows(usable, frames)) if len(usable) < len(rows) else batch
    sub_rows = [rows[i] for i in usable]
    sub.upstream = {dep: {f: _per_frame(a[sub_rows], frames) for f, a in have[dep][0].items()}
                    for dep in teacher.requires}
    return sub_rows, sub


def _run_teacher(teacher: Teacher, batch: Batch, rows: list[int], out: dict, record, frames: int = 1) -> list[int]:
    """Run on the whole batch; if that raises, sample by sample (all its frames) so one bad input fails alone."""
    try:
        _place(out, rows, _check(teacher, teacher(batch), len(batch)), frames)
        return rows
    except Exception as e:
        if len(rows) == 1:
            record(rows[0], SampleError(teacher.name, f"{type(e).__name__}: {e}"))
            return []
    done = []
    for i, r in enumerate(rows):
        try:
            _place(out, [r], _check(teacher, teacher(batch.subset(_frame_rows([i], frames))), frames), frames)
            done.append(r)
        except Exception as e:
            record(r, SampleError(teacher.name, f"{type(e).__name__}: {e}"))
    return done


def _check(teacher: Teacher, result: dict, n: int) -> dict:
    for f in teacher.fields():
        value = result.get(f.name)
        if value is None or len(value) != n or tuple(np.shape(value)[1:]) != f.shape:
            got = None if value is None else np.shape(value)
            raise ValueError(f"teacher {teacher.name} returned {f.name} of shape {got}, declared {(n, *f.shape)}")
    return result


def _place(out: dict, rows: list[int], result: dict, frames: int = 1) -> None:
    for name, array in out.items():
        array[rows] = _per_sample(result[name], frames)


def _empty(lead: tuple[int, ...], f) -> np.ndarray:
    """A field's outputs for the unit: `lead` = (n,) for images, (n, T) for samples of T frames."""
    if f.dtype == "str":
        return np.full((*lead, *f.shape), "", dtype=object)
    return np.zeros((*lead, *f.shape), dtype=f.dtype)


def _device_name(teacher: Teacher) -> str:
    device = getattr(teacher, "device", None)
    if device is None:
        return "cpu"
    from omnimill.labelers.torch_device import device_name

    return device_name(device)
