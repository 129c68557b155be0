"""The label store: one Zarr v3 group holding every teacher's labels for one indexed corpus.

    labels.zarr/             attrs: format, omnimill version, corpus {uri, kind}, sample_kind, n, view_size,
                                    unit_size; sample_settings (a kind built with settings, as clip's frames)
      keys      (N,) str     stable sample keys          source  (N,) str   file URL or "tar::member"
      offset    (N,) int64   byte offset in a tar (-1)   size    (N,) int64 bytes (-1 unknown)
      caption   (N,) str     the corpus's own caption / alt-text ("" if none)
      <the sample kind's index columns>, written at creation (clip: video, start, end, cues, error, ...)
                             the index (these rows) is written once: sharded, 2^20 rows per object (layout.py)
      <the sample kind's per-sample arrays>, written by the engine; for `image` (corpus/image.py):
      crop_box  (N, 4) int32 canonical view (x0, y0, x1, y1) in original pixels
      <teacher>/             attrs: provenance
        <field> (N, ...)     chunk = one work unit along N; a kind with frames (clip) adds its frame axes:
                             (N, T, ...), chunk (unit_size, T, ...)
        ok      (N,) bool
      _runs/
        <teacher>/units (n_units,) str   commit marker per unit (JSON with stats and error records);
                                         "" = not done. Written last, so a marker means "all chunks in".
        <teacher>/summary               the markers' counts, one row per unit (summary.py)
        _keys/                          the keys sorted once, for `index_of` (keyindex.py)
        _lock/, _history/<run>/          the run holding the store; one record per run (base.py)

`sample_kind` names the registered kind of sample (corpus/kinds.py) that the engine decodes through
and whose per-sample arrays the store holds; a store made before kinds has no such attribute and holds
images. `sample_settings` is written only for a kind that has settings (an image store has none).

A work unit is `unit_size` consecutive samples: exactly one chunk of every array it writes, so
workers never share a chunk (nor an object: what they write is never sharded) and need no locks.
Everything is plain Zarr: `zarr.open_group` reads it.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import zarr

from omnimill import __version__
from omnimill.errors import UserError
from omnimill.corpus.kinds import DEFAULT_KIND, all_index_columns, all_sample_arrays, kind_of
from omnimill.corpus.listing import CorpusIndex
from omnimill.corpus.sample import SampleKind
from omnimill.store import layout
from omnimill.store.base import (RUNS, UnitPlan, UnitStore, compressor, create_array, now, open_group,
                                       short)
from omnimill.store.summary import retryable

__all__ = ["FORMAT", "RUNS", "RESERVED", "LabelStore", "UnitPlan", "compressor", "open_group", "retryable"]

FORMAT = "omnimill.labels/1"
SAMPLES = ("keys", "source", "offset", "size", "caption")  # the corpus index, written at creation
# Top-level arrays any label store may hold: the index (with every registered kind's index columns) and every
# registered kind's per-sample arrays. An open store narrows TOP and REDO_TOP to its own kind's (__init__).
TOP = (*SAMPLES, *all_index_columns(), *all_sample_arrays())
RESERVED = (*TOP, RUNS)  # top-level names of the store


class LabelStore(UnitStore):
    FORMAT = FORMAT
    WHAT = "label store"
    TOP = TOP
    MAKE = "create one with `omnimill label CORPUS {uri} --teacher ...`"
    REDO_TOP = tuple(name for name in TOP if name not in SAMPLES)  # the worker writes each unit's again

    def __init__(self, group: zarr.Group, uri: str, storage_options: dict | None = None):
        super().__init__(group, uri, storage_options)
        attrs = group.attrs
        self.view_size = int(attrs["view_size"])
        self.corpus = dict(attrs["corpus"])
        self.sample_kind = str(attrs.get("sample_kind", DEFAULT_KIND))
        self.kind: SampleKind = kind_of(self.sample_kind).configured(dict(attrs.get("sample_settings") or {}))
        self.SAMPLES = (*SAMPLES, *(c.name for c in self.kind.index_columns))
        self.REDO_TOP = tuple(a.name for a in self.kind.sample_arrays)
        self.TOP = (*self.SAMPLES, *self.REDO_TOP)

    @classmethod
    def create(cls, uri: str, index: CorpusIndex, view_size: int, unit_size: int,
               storage_options: dict | None = None, kind: SampleKind | None = None) -> "LabelStore":
        """A new store for the index's samples, with the index columns of its kind (from `index.extras`) and
        its per-sample arrays (all zeros). `kind`: the kind object with its settings (default: the registered
        kind the index names)."""
        kind = kind or kind_of(index.sample_kind)
        n = len(index)
        group = cls.new_group(uri, storage_options)
        once = layout.once(unit_size)  # the index: written here, once, by this process alone (layout.py)
        keys = np.array(index.keys, dtype=object)
        create_array(group, "keys", (n,), dtype="str", **once)[:] = keys
        create_array(group, "source", (n,), dtype="str", **once)[:] = np.array(index.sources, dtype=object)
        create_array(group, "offset", (n,), dtype="int64", **once)[:] = np.array(index.offsets, np.int64)
        create_array(group, "size", (n,), dtype="int64", **once)[:] = np.array(index.sizes, np.int64)
        create_array(group, "caption", (n,), dtype="str", **once)[:] = np.array(index.captions, dtype=object)
        for c in kind.index_columns:
            create_array(group, c.name, (n,), dtype=c.dtype, **once)[:] = _column(index.extras, c)
        cls.index_keys(group, keys, unit_size)
        for a in kind.sample_arrays:  # the workers write these again, one unit each: one chunk per unit
            create_array(group, a.name, (n, *a.shape), (unit_size, *a.shape), a.dtype)[:] = 0
        settings = {"sample_settings": kind.settings()} if kind.settings() else {}
        cls.commit_create(group, {
            "format": FORMAT, "omnimill_version": __version__, "uuid": group.attrs["uuid"],
            "corpus": {"uri": index.uri, "kind": index.kind, **({"listing": index.listing} if index.listing else {})},
            "sample_kind": kind.name, "n": n,
            "view_size": view_size, "unit_size": unit_size, **settings,
        })
        return cls(group, uri, storage_options)

    # ---------------------------------------------------------------- samples
    def samples(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The corpus index's rows start..stop: keys, source, offset, size, caption and the kind's index
        columns (clip: video, start, end, cues, ...)."""
        return {name: self.read(name, slice(start, stop)) for name in self.SAMPLES}

    def sample_values(self, rows=slice(None)) -> dict[str, np.ndarray]:
        """The kind's per-sample arrays (image: crop_box) at `rows`."""
        return {a.name: self.read(a.name, rows) for a in self.kind.sample_arrays}

    def crop_boxes(self, rows=slice(None)) -> np.ndarray:
        """(x0, y0, x1, y1) of each canonical view in original pixels (image stores)."""
        return self.read("crop_box", rows)

    def verify(self, parts: list[str] | None = None) -> list[dict]:
        """The base checks (every chunk of every committed unit), then the kind's own on the stored values of
        every sample some teacher labelled (a clip's span, frame and audio-segment times)."""
        problems = super().verify(parts)
        if type(self.kind).value_problems is SampleKind.value_problems:
            return problems
        labelled = np.zeros(self.n, bool)
        for teacher in self.teachers():
            try:
                labelled |= self.ok(teacher)
            except Exception:
                continue  # an unreadable ok chunk: already reported above
        try:
            values = self.sample_values()
        except Exception:
            return problems  # an unreadable chunk: already reported above
        keys = self.keys()
        for i in np.flatnonzero(labelled):
            for array, what in self.kind.value_problems({name: column[i] for name, column in values.items()}):
                problems.append({"part": "", "unit": int(i) // self.unit_size, "array": array,
                                 "samples": str(i), "problem": f"{keys[i]}: {what}"})
        return problems

    # ---------------------------------------------------------------- teachers
    def teachers(self) -> list[str]:
        return self.parts()

    def provenance(self, teacher: str) -> dict:
        return self.attrs(teacher)

    def ok(self, teacher: str, rows=slice(None)) -> np.ndarray:
        """Which samples at `rows` the teacher labelled (bool)."""
        return self.read(f"{teacher}/ok", rows)

    def outputs(self, teacher: str, rows=slice(None), fields=None) -> dict[str, np.ndarray]:
        """The teacher's fields at `rows`: those named, or every array it holds but `ok`."""
        names = fields if fields is not None else [f for f in self.group[teacher].array_keys() if f != "ok"]
        return {f: self.read(f"{teacher}/{f}", rows) for f in names}

    def teacher_id(self, teacher: str) -> str:
        """Changes whenever the teacher's labels are started over (--force): later stages compare it."""
        attrs = self.group[teacher].attrs
        return str(attrs.get("labels_id") or attrs.get("created"))

    def prepare_teacher(self, name: str, fields, provenance: dict, force: bool = False) -> None:
        """Create the teacher's arrays, or check that existing labels came from the same teacher.

        Same checkpoint hash and config: resume. Different: refuse unless `force`, which starts over.
        """
        if name in RESERVED or name.startswith("_"):
            raise UserError(f"a teacher cannot be called {name!r}: the store uses that name itself")
        if provenance.get("sees", "frames") != "frames" and provenance["sees"] != self.sample_kind + "s":
            raise UserError(f"teacher {name} labels {provenance['sees']} (their audio, subtitles, all frames), and "
                            f"{self.uri} holds {self.kind.plural}; label a corpus of videos or audio files with "
                            f"--sample-kind clip")
        complete = name in self.teachers() and name in self.group and "fields" in self.group[name].attrs
        if complete and not force:
            old = self.provenance(name)
            for what in ("config", "checkpoint_sha256", "fields"):
                if _comparable(old, what) != _comparable(provenance, what, like=old):
                    raise UserError(
                        f"teacher {name} in {self.uri} was labelled with another {what.replace('_', ' ')} "
                        f"({short(old.get(what))} vs {short(provenance.get(what))}); pass --force to relabel it")
            return
        group = self.new_part(name)
        chunks = (self.unit_size,)
        frames = self.kind.frame_axes if provenance.get("sees", "frames") == "frames" else ()
        for f in fields:  # per frame: a clip's fields gain its frame axes (N, T, ...); per clip: (N, ...)
            shape = (*frames, *f.shape)
            create_array(group, f.name, (self.n, *shape), chunks + shape, f.dtype)
        create_array(group, "ok", (self.n,), chunks, "bool")
        group.attrs.update({**provenance, "created": now(), "labels_id": uuid.uuid4().hex})
        self.commit_part(name)

    def declared(self, part: str) -> dict[str, tuple]:
        provenance = self.provenance(part)
        fields = provenance.get("fields") or {}
        frames = self.kind.frame_axes if provenance.get("sees", "frames") == "frames" else ()
        return {**{name: (*frames, *f["shape"]) for name, f in fields.items()}, "ok": ()}

    # ---------------------------------------------------------------- worker side
    def write_sample_values(self, start: int, values: dict[str, np.ndarray]) -> None:
        """The kind's per-sample arrays for rows start.. (the engine writes each unit's again)."""
        for name, array in values.items():
            self.writable(name)[start:start + len(array)] = array

    def write_crop_boxes(self, start: int, boxes: np.ndarray) -> None:
        self.write_sample_values(start, {"crop_box": boxes})

    def write_unit(self, teacher: str, unit: UnitPlan, outputs: dict[str, np.ndarray], ok: np.ndarray,
                   marker: dict) -> None:
        """Every chunk of the unit, then the marker. Re-running rewrites the same chunks."""
        for name, values in outputs.items():
            self.writable(f"{teacher}/{name}")[unit.start:unit.stop] = values
        self.writable(f"{teacher}/ok")[unit.start:unit.stop] = ok
        self.write_marker(teacher, unit.unit, marker)

    # ---------------------------------------------------------------- status
    def status(self, max_errors: int = 5) -> dict:
        teachers = {}
        for name in self.teachers():
            done = self.tally(name, max_errors)  # the summary and the markers it does not hold (summary.py)
            teachers[name] = {
                "units_done": done["units_done"], "units_total": self.n_units,
                "samples_ok": done["ok"], "samples_failed": done["failed"], "retryable": done["retryable"],
                "first_errors": done["first_errors"], "provenance": self.provenance(name),
            }
        return {"store": self.uri, "uuid": self.uuid, "corpus": self.corpus, "sample_kind": self.sample_kind,
                "n": self.n,
                "view_size": self.view_size, "unit_size": self.unit_size, "n_units": self.n_units,
                "teachers": teachers, "lock": self.lock(), "runs": self.history()}


def _column(extras: list[dict], column) -> np.ndarray:
    """One index column from the listing's extras: text ("" when absent; lists as JSON) or numbers (0)."""
    if column.dtype == "str":
        values = (e.get(column.name, "") for e in extras)
        return np.array([v if isinstance(v, str) else json.dumps(v) for v in values], dtype=object)
    return np.array([e.get(column.name, 0) for e in extras], dtype=column.dtype)


# What a field entry said before fields had kinds: stores labelled then resume unchanged.
_SINCE_KINDS = ("kind", "relative", "time")


def _comparable(provenance: dict, what: str, like: dict | None = None):
    """The part of a provenance entry that must match on resume; `fields` written before kinds existed are
    compared without what kinds added (a store labelled by an older omnimill resumes, it is not refused)."""
    value = provenance.get(what)
    old_fields = (like or provenance).get("fields") or {}
    if what != "fields" or not value or any("kind" in f for f in old_fields.values()):
        return value
    return {name: {k: v for k, v in f.items() if k not in _SINCE_KINDS} for name, f in value.items()}
