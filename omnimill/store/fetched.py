"""The fetched store: every URL of a URL list with its status, and the bytes of the good images as one tar
per unit; written by the fetch job (engine/fetch.py), listed as an image corpus by `image_corpus()`.

    fetched.zarr/            attrs: format, omnimill version, uuid, created, source {uri, n_lines,
                                    duplicates}, n (URLs), unit_size (URLs per unit)
      keys     (N,) str      each image's key (given in the list, else sha1(url)[:16]); WebDataset-safe
      url      (N,) str      the URL as listed
      caption  (N,) str      alt text given in the list ("" when none)
                             (keys, url, caption: written once at creation, sharded: layout.py)
      fetch/                 attrs: created
        ok           (N,) bool    the image is in its unit's tar
        stage        (N,) str     where it failed: url | connect | http | type | size | read | image ("" ok)
        reason       (N,) str     why, in words ("" when ok)
        retryable    (N,) bool    a later run may succeed (timeout, reset, cut short, 408/429/5xx)
        http         (N,) int32   the last HTTP status (0: no response)
        content_type (N,) str     the image's type from its bytes (ok), else the server's header
        sha256       (N,) str     of the bytes (ok)
        width, height (N,) int32  from the image header (ok)
        nbytes       (N,) int64   bytes in the tar (ok)
        offset       (N,) int64   where the image's bytes start in its unit's tar (-1 unless ok)
        attempts     (N,) int32   requests made for it in its last run
      images/<unit:06d>.tar  the unit's good images in row order, members `<key>.<ext>` (ext from the
                             bytes: jpg png webp gif bmp tif) + `<key>.txt` (the caption, when the list
                             gave one); mtime 0; a unit without a good image has an empty tar. A WebDataset
                             shard
      _runs/fetch/units, summary, _keys, _lock, _history   commit markers, their summary (summary.py),
                             the key index, lock and run records (base.py); a marker (JSON): unit,
                             start, stop, ok, failed, errors [{index, key, stage, error, retryable, http}],
                             fetched (URLs requested by that run), bytes, seconds, attempt, worker, host, pid

A unit is committed by its marker, written after its tar and its rows. A marker lists the unit's failures
({index, key, stage, error, retryable, http}); the job's next run fetches only the retryable ones again
(and rewrites the unit: marker cleared, tar, rows, marker), a kill before that marker returns the unit to
"not committed", so it is fetched whole once more. `verify` adds to the Zarr checks: each committed unit's
tar is there and every good image's bytes at its offset hash to the recorded sha256.

Why tars beside the arrays: the images stay byte for byte as served (no re-encoding, no codec of Zarr's
that has no v3 specification yet for variable-length bytes), and the `images/` folder is a WebDataset
corpus as it is: `omnimill label <image_corpus()> labels.zarr` reads it with no copy.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile

import numpy as np
import zarr

from omnimill import __version__
from omnimill.corpus.fetch import Fetched
from omnimill.corpus.listing import url_to_fs
from omnimill.errors import UserError
from omnimill.store import layout
from omnimill.store.base import RUNS, UnitStore, create_array, put_bytes

FORMAT = "omnimill.fetched/1"
PART = "fetch"
IMAGES = "images"
TYPES = {"ok": "bool", "stage": "str", "reason": "str", "retryable": "bool", "http": "int32",
         "content_type": "str", "sha256": "str", "width": "int32", "height": "int32", "nbytes": "int64",
         "offset": "int64", "attempts": "int32"}
DECLARED = {name: () for name in TYPES}


class FetchedStore(UnitStore):
    FORMAT = FORMAT
    WHAT = "fetched store"
    TOP = ("keys", "url", "caption")
    MAKE = "make one with `omnimill fetch URLS_FILE {uri}`"

    def __init__(self, group: zarr.Group, uri: str, storage_options: dict | None = None):
        super().__init__(group, uri, storage_options)
        self.source = dict(group.attrs["source"])

    @classmethod
    def create(cls, uri: str, source: dict, rows: list[tuple[str, str, str]], unit_size: int,
               storage_options: dict | None = None) -> "FetchedStore":
        """A new store for `rows` [(key, url, caption)] of the URL list `source` {uri, ...}."""
        group = cls.new_group(uri, storage_options)
        n, once = len(rows), layout.once(unit_size)  # written here, once, by this process alone: sharded
        for i, name in enumerate(cls.TOP):
            create_array(group, name, (n,), dtype="str", **once)[:] = np.array([r[i] for r in rows], dtype=object)
        cls.index_keys(group, np.array([r[0] for r in rows], dtype=object), unit_size)
        cls.commit_create(group, {"format": FORMAT, "omnimill_version": __version__, "uuid": group.attrs["uuid"],
                                  "source": source, "n": n, "unit_size": unit_size})
        return cls(group, uri, storage_options)

    def rows(self, start: int = 0, stop: int | None = None) -> list[tuple[str, str, str]]:
        """(key, url, caption) of rows start..stop."""
        span = slice(start, self.n if stop is None else stop)
        return [(str(k), str(u), str(c)) for k, u, c in zip(*(self.read(name, span) for name in self.TOP))]

    # ---------------------------------------------------------------- the one part
    def prepare(self, force: bool = False) -> None:
        """Create the fetch arrays once (resume otherwise); `force` starts every unit over."""
        self.prepare_columns(PART, TYPES, force)

    def declared(self, part: str) -> dict[str, tuple]:
        return dict(DECLARED)

    def tar_path(self, unit: int) -> str:
        return f"{self.uri.rstrip('/')}/{IMAGES}/{unit:06d}.tar"

    def write_unit(self, unit: int, results: list, marker: dict) -> None:
        """The unit's tar (its good images), then its rows, then its marker (the commit). `results` are the
        unit's `corpus.fetch.Fetched` in row order. A committed unit written again loses its marker first."""
        span = self.unit(unit)
        if len(results) != span.stop - span.start:
            raise ValueError(f"unit {unit} has {span.stop - span.start} rows, got {len(results)} results")
        if self.raw_marker(PART, unit):
            # Only its marker, not the unit summary: that is the lock holder's (a worker thread writing it
            # would race the others). A committed unit is written again only to retry its retryable
            # failures, and the summary reads such units' markers again anyway (summary.py).
            self.writable(f"{RUNS}/{PART}/units")[unit] = ""
        keys, captions = self.read("keys", slice(span.start, span.stop)), self.read("caption", slice(span.start,
                                                                                                      span.stop))
        blob, offsets = _tar([(str(k), r, str(c)) for k, r, c in zip(keys, results, captions)])
        put_bytes(self.tar_path(unit), blob, self.storage_options)
        columns = {
            "ok": [r.ok for r in results], "stage": [r.stage for r in results], "reason": [r.reason for r in results],
            "retryable": [r.retryable for r in results], "http": [r.http for r in results],
            "content_type": [r.content_type for r in results], "sha256": [r.sha256 for r in results],
            "width": [r.width for r in results], "height": [r.height for r in results],
            "nbytes": [len(r.data) if r.ok else 0 for r in results], "offset": offsets,
            "attempts": [r.attempts for r in results]}
        for name, values in columns.items():
            kind = TYPES[name]
            self.writable(f"{PART}/{name}")[span.start:span.stop] = np.array(values, object if kind == "str" else kind)
        self.write_marker(PART, unit, marker)

    def _get_range(self, path: str, offset: int, size: int) -> bytes:
        fs, where = url_to_fs(path, self.storage_options)
        with fs.open(where, "rb") as f:
            f.seek(offset)
            return f.read(size)

    # ---------------------------------------------------------------- reading
    def column(self, name: str, rows=slice(None)) -> np.ndarray:
        return self.read(f"{PART}/{name}", rows)

    def image_bytes(self, row: int) -> bytes:
        """The stored bytes of a good image (row index over the whole store)."""
        if not bool(self.column("ok", row)):
            raise UserError(f"{self.uri}: row {row} holds no image ({self.column('reason', row)})")
        offset, size = int(self.column("offset", row)), int(self.column("nbytes", row))
        return self._get_range(self.tar_path(row // self.unit_size), offset, size)

    def results(self, start: int, stop: int) -> list[Fetched]:
        """Rows start..stop as the fetch gave them (a good image with its bytes), to keep on a rerun."""
        rows = slice(start, stop)
        cols = {name: self.column(name, rows) for name in TYPES}
        urls = self.read("url", rows)
        out = []
        for i in range(stop - start):
            ok = bool(cols["ok"][i])
            out.append(Fetched(str(urls[i]), ok=ok, stage=str(cols["stage"][i]), reason=str(cols["reason"][i]),
                               retryable=bool(cols["retryable"][i]), http=int(cols["http"][i]),
                               content_type=str(cols["content_type"][i]), sha256=str(cols["sha256"][i]),
                               width=int(cols["width"][i]), height=int(cols["height"][i]),
                               attempts=int(cols["attempts"][i]),
                               data=self.image_bytes(start + i) if ok else b""))
        return out

    def complete(self) -> bool:
        return bool(self.done_units(PART).all())

    def image_corpus(self) -> str:
        """The good images as an image corpus: the WebDataset shard list of the units' tars (a brace range),
        for `omnimill label` / `corpus.listing.index_corpus`. Only a complete store: a missing tar would be
        listed as missing data, not as not-yet-fetched."""
        if not self.complete():
            raise UserError(f"{self.uri}: {int((~self.done_units(PART)).sum())} units are not fetched yet; run "
                            "`omnimill fetch` on it again first")
        last = self.n_units - 1
        names = f"{0:06d}.tar" if last == 0 else f"{{{0:06d}..{last:06d}}}.tar"
        return f"{self.uri.rstrip('/')}/{IMAGES}/{names}"

    def status(self, max_errors: int = 5) -> dict:
        """Units done, images ok, failures by stage (retryable or not), the first failures, bytes kept.
        Counts from the unit summary (`tally`); the failures from the markers of units that hold some;
        the bytes from the `nbytes` column of committed units."""
        if PART not in self.parts():
            done, errors, kept = {"units_done": 0, "ok": 0, "retryable": 0}, [], 0
        else:
            done = self.tally(PART, max_errors=self.n)  # every failure: `failed_by_stage` counts them all
            errors = done["first_errors"]
            committed = np.repeat(done["committed"], self.unit_size)[:self.n]
            kept = int(self.column("nbytes")[committed].sum())
        stages: dict[str, int] = {}
        for e in errors:
            stages[e["stage"]] = stages.get(e["stage"], 0) + 1
        return {"store": self.uri, "source": self.source, "n": self.n, "n_units": self.n_units,
                "units_done": done["units_done"], "ok": done["ok"], "failed": len(errors),
                "retryable": done["retryable"], "failed_by_stage": stages, "bytes": kept,
                "first_errors": errors[:max_errors], "lock": self.live_lock()}

    # ---------------------------------------------------------------- verify: the Zarr arrays, then the tars
    def verify(self, parts: list[str] | None = None) -> list[dict]:
        problems = super().verify(parts)
        if PART not in (parts if parts is not None else self.parts()) or PART not in self.group:
            return problems
        damaged = {p["unit"] for p in problems}
        for u in np.flatnonzero(self.done_units(PART)):
            if u in damaged:
                continue
            span = self.unit(int(u))
            what = self._check_tar(int(u), span.start, span.stop)
            if what:
                problems.append({"part": PART, "unit": int(u), "array": f"{IMAGES}/{u:06d}.tar",
                                 "samples": f"{span.start}..{span.stop - 1}", "problem": what})
        return problems

    def _check_tar(self, unit: int, start: int, stop: int) -> str:
        rows = slice(start, stop)
        ok, offsets, sizes, hashes = (self.column(n, rows) for n in ("ok", "offset", "nbytes", "sha256"))
        try:
            fs, where = url_to_fs(self.tar_path(unit), self.storage_options)
            with fs.open(where, "rb") as f:
                for i in np.flatnonzero(ok):
                    f.seek(int(offsets[i]))
                    if hashlib.sha256(f.read(int(sizes[i]))).hexdigest() != str(hashes[i]):
                        return f"the bytes of row {start + i} do not match their sha256"
        except FileNotFoundError:
            return "tar is missing"
        return ""

    def unit_intact(self, part: str, unit: int, decode: bool = False) -> bool:
        span = self.unit(unit)
        return super().unit_intact(part, unit, decode) and (part != PART or not self._check_tar(unit, span.start,
                                                                                                  span.stop))


def _tar(rows: list[tuple]) -> tuple[bytes, list[int]]:
    """A tar of the good images [(key, Fetched, caption)] and each row's data offset in it (-1: not in it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, result, caption in rows:
            if not result.ok:
                continue
            _add(tar, f"{key}.{result.extension}", result.data)
            if caption:
                _add(tar, f"{key}.txt", caption.encode())
    blob = buf.getvalue()
    where = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:  # offsets as a reader sees them
        for member in tar.getmembers():
            where[member.name] = member.offset_data
    return blob, [where[f"{key}.{result.extension}"] if result.ok else -1 for key, result, _ in rows]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(posixpath.normpath(name))
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: the same images give the same tar
    tar.addfile(info, io.BytesIO(data))
