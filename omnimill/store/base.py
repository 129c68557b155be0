"""What every omnimill Zarr store shares: identity, safe creation, reading (the only way in from outside
store/), the lock, run history, unit markers, verification and repair; and the held-out split by key,
which every store and shard set of one corpus shares. The label store and the token store are this plus
their own arrays.

    STORE/                   attrs: format, uuid (the store's identity), created, n, unit_size, ...
      <index columns>        written once at creation (keys, ...): sharded, 2^20 rows per object (layout.py)
      <part>/<array>         a part is a teacher (label store) or a modality (token store); chunk = one unit
      _runs/
        <part>/units         (n_units,) str: the commit marker of each unit (JSON), "" = not committed
        <part>/summary       (n_units, 6) int32: the markers' counts, written by the lock holder (summary.py)
        _keys/               the keys sorted once, for lookups without reading every key (keyindex.py)
        _lock/               a group whose attrs hold the run that owns the store (created exclusively)
        _history/<run>/      one group per run; its attrs are the run record

Why these choices:
- Creation writes `creating` first and `format` last, so an interrupted create is recognised and
  recreated by the same command; anything that is neither ours nor empty is refused, never deleted.
- Every array keeps empty chunks (`write_empty_chunks`): a committed unit has every chunk on disk, so
  `verify` can tell a deleted chunk (damage) from one that is all zeros (a legitimate label).
- The lock is one object created if-not-exists (exclusive on local disks), then read back.
- Only arrays with one writer share objects (Zarr shards); what the workers write stays one object per
  unit, since a sharded write rewrites the whole shard (layout.py has the reasoning and the arithmetic).
- Zarr writes each object atomically on local disks (temp + rename), so a kill or a full disk leaves
  the previous object, never a torn one; on object stores a PUT is atomic per object.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import ClassVar

import fsspec
import numpy as np
import zarr

from omnimill import faults
from omnimill.errors import UserError
from omnimill.store import keyindex, summary
from omnimill.store.summary import COMMITTED

RUNS = "_runs"
LOCK = "_lock"
HISTORY = "_history"
WRITE = {"write_empty_chunks": True}  # see the module docstring: every chunk of a committed unit exists


def compressor(dtype: str):
    """Zstd level 1 through Blosc; bit-shuffle for 1-byte types (images, masks), byte-shuffle otherwise.

    Level 1: on photos (rgb) level 3 gains 3% in size for 1.8x the write time (zstd 1: 1.44x, 63 ms per
    14 MB unit; zstd 3: 1.48x, 112 ms). Edge maps compress 44x either way.
    """
    shuffle = "bitshuffle" if np.dtype(dtype).itemsize == 1 else "shuffle"
    return zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle=shuffle)


def create_array(group, name: str, shape: tuple, chunks: tuple, dtype: str, shards: tuple | None = None):
    """`shards`: inner `chunks` packed into objects of this shape; only for arrays one process writes
    (layout.py: a sharded write rewrites the whole shard)."""
    if dtype == "str":
        return group.create_array(name, shape=shape, chunks=chunks, shards=shards, dtype=str, overwrite=True,
                                  config=WRITE)
    return group.create_array(name, shape=shape, chunks=chunks, shards=shards, dtype=dtype,
                              compressors=compressor(dtype), fill_value=0, overwrite=True, config=WRITE)


def is_url(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> str:
    return os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)


def put_bytes(path: str, data: bytes, storage_options: dict | None = None) -> None:
    """Atomic: a local file is written beside and renamed into place; an object store's PUT is atomic."""
    if is_url(path):
        fs, where = fsspec.core.url_to_fs(path, **(storage_options or {}))
        fs.pipe_file(where, data)
        return
    path = local_path(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, path)


def open_group(uri: str, mode: str, storage_options: dict | None = None) -> zarr.Group:
    """zarr.open_group, Zarr v3 only (a v2 store could name a pickle codec); storage options only for URLs."""
    return zarr.open_group(_where(uri, mode == "r"), mode=mode, zarr_format=3,
                           **({"storage_options": storage_options or None} if is_url(uri) else {}))


def _where(uri: str, read_only: bool = False):
    """A URL as it is; a local path as a LocalStore, so `[`, `*` and `::` in it are plain characters."""
    return uri if is_url(uri) else zarr.storage.LocalStore(local_path(uri), read_only=read_only)


def _norm(uri: str) -> str:
    return uri.rstrip("/") if is_url(uri) else os.path.realpath(local_path(uri))


def same_store(a: str, b: str) -> bool:
    """`/abs/x.zarr`, `./x.zarr` and `x.zarr/` are one store."""
    return _norm(a) == _norm(b)


def same_or_inside(a: str, b: str) -> bool:
    """Is `a` the path `b` or inside it?"""
    return _norm(a) == _norm(b) or _norm(a).startswith(_norm(b).rstrip("/") + "/")


@dataclass
class UnitPlan:
    unit: int
    start: int
    stop: int


class UnitStore:
    FORMAT: ClassVar[str]
    WHAT: ClassVar[str]  # "label store" / "token store", for messages
    TOP: ClassVar[tuple[str, ...]]  # the arrays `create` writes at the top level (besides _runs)
    MAKE: ClassVar[str]  # how to make one, for messages: "{uri}" is filled in
    REDO_TOP: ClassVar[tuple[str, ...]] = ()  # top-level arrays that a unit job writes again (repairable)

    def __init__(self, group: zarr.Group, uri: str, storage_options: dict | None = None):
        attrs = group.attrs
        if attrs.get("format") != self.FORMAT:
            raise UserError(f"{uri} is not an omnimill {self.WHAT} (format {attrs.get('format')!r})")
        self.group, self.uri, self.storage_options = group, uri, storage_options or {}
        self.n, self.unit_size = int(attrs["n"]), int(attrs["unit_size"])
        self.uuid = str(attrs.get("uuid") or attrs.get("created"))  # stores made before uuids: their creation time
        self._keys: keyindex.KeyIndex | None = None  # opened at the first lookup
        self._handles: dict[str, zarr.Array] = {}  # writable arrays by path, opened once (`writable`)

    # ---------------------------------------------------------------- what is at a path
    @classmethod
    def state(cls, uri: str, storage_options: dict | None = None) -> str:
        """absent | store | interrupted (our create was cut short) | other (say what it is)."""
        if not is_url(uri):
            path = local_path(uri)
            if not os.path.exists(path):
                return "absent"
            if not os.path.isdir(path):
                return "other: a file, not a store folder"
            entries = set(os.listdir(path))
            if not entries:
                return "absent"
            if "zarr.json" not in entries:
                return "other: a folder that is not an omnimill store (and not empty)"
        else:
            entries = _url_entries(uri, storage_options)
            if entries and "zarr.json" not in entries:
                return "other: a prefix that holds objects but no omnimill store"
        try:
            attrs = dict(open_group(uri, "r", storage_options).attrs)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            return "absent"
        except Exception as e:  # a zarr.json that does not parse, an array where a group should be, a v2 store
            return f"other: not readable as a Zarr v3 group ({type(e).__name__})"
        if attrs.get("format") == cls.FORMAT:
            return "store"
        if attrs.get("creating") == cls.FORMAT:
            # Still being created by a live process on this host: not ours to remove. (On another host we
            # cannot tell; a create is short next to a run, so it counts as interrupted there.)
            creator = attrs.get("creator") or {}
            if creator.get("host") == socket.gethostname() and creator.get("pid") != os.getpid() and _alive(creator):
                return f"other: being created by pid {creator['pid']}; wait for it"
            return "interrupted"
        if not attrs and entries <= {"zarr.json", *cls.TOP, RUNS}:
            return "interrupted"  # killed between the group's creation and its first attributes (older stores)
        return f"other: a store of format {attrs.get('format') or attrs.get('creating')!r}"

    @classmethod
    def exists(cls, uri: str, storage_options: dict | None = None) -> bool:
        return cls.state(uri, storage_options) == "store"

    @classmethod
    def open(cls, uri: str, mode: str = "r", storage_options: dict | None = None):
        state = cls.state(uri, storage_options)
        if state == "absent":
            raise UserError(f"no {cls.WHAT} at {uri}; {cls.MAKE.format(uri=uri)}")
        if state == "interrupted":
            raise UserError(f"{uri} is a {cls.WHAT} whose creation was interrupted; run the command that "
                            "creates it again")
        if state != "store":
            raise UserError(f"{uri} is not an omnimill {cls.WHAT} ({state.removeprefix('other: ')})")
        return cls(open_group(uri, mode, storage_options), uri, storage_options)

    @classmethod
    def new_group(cls, uri: str, storage_options: dict | None = None) -> zarr.Group:
        """The root group of a new store. An interrupted create is removed first (only our own entries)."""
        state = cls.state(uri, storage_options)
        if state == "interrupted":
            _remove_ours(uri, storage_options, ("zarr.json", *cls.TOP, RUNS))
        elif state != "absent":
            raise UserError(f"{uri} is {'an existing ' + cls.WHAT if state == 'store' else state.removeprefix('other: ')}"
                            f"; give a new path for the {cls.WHAT}")
        attributes = {"creating": cls.FORMAT, "uuid": uuid.uuid4().hex,
                      "creator": {"host": socket.gethostname(), "pid": os.getpid(), "nonce": ""}}
        where = _where(uri)
        options = {"storage_options": storage_options or None} if is_url(uri) else {}
        try:
            zarr.create_group(where, attributes=attributes, zarr_format=3, overwrite=False, **options)
        except zarr.errors.ContainsGroupError:
            raise UserError(f"{uri} is being created by another run; wait for it") from None
        time.sleep(0.05)  # two runs racing past the check: the later write wins, the other one backs off
        group = open_group(uri, "r+", storage_options)
        if group.attrs.get("uuid") != attributes["uuid"]:
            raise UserError(f"{uri} is being created by another run; wait for it")
        return group

    @staticmethod
    def commit_create(group: zarr.Group, attrs: dict) -> None:
        """Attributes last: until `format` is set the store is an interrupted create."""
        group.require_group(RUNS)
        faults.point("store.create")
        group.attrs.update({**attrs, "created": now()})

    # ---------------------------------------------------------------- geometry
    @property
    def n_units(self) -> int:
        return -(-self.n // self.unit_size)  # ceil(n / unit_size)

    def unit(self, u: int) -> UnitPlan:
        return UnitPlan(u, u * self.unit_size, min(self.n, (u + 1) * self.unit_size))

    def keys(self) -> np.ndarray:
        return self.group["keys"][:]

    @staticmethod
    def index_keys(group: zarr.Group, keys: np.ndarray, unit_size: int) -> None:
        """Write the sorted key index (keyindex.py) of a store being created."""
        keyindex.write(group.require_group(RUNS), keys, unit_size)

    def index_of(self, key: str) -> int:
        """The row of `key` (the first, if a key repeats): two small reads from the sorted key index; stores
        made before it read every key."""
        if self._keys is None:
            self._keys = keyindex.KeyIndex(self.group[RUNS])
        if self._keys.present:
            found = self._keys.find(key)
        else:
            hits = np.flatnonzero(self.keys() == key)
            found = int(hits[0]) if len(hits) else None
        if found is None:
            raise UserError(f"key {key!r} is not in {self.uri}")
        return found

    # ---------------------------------------------------------------- reading (the only way in from outside)
    def read(self, path: str, rows=slice(None)) -> np.ndarray:
        """Rows of an array, by path ("keys", "dinov2/cls", "rgb/tokens"); `rows` is an index, slice or list."""
        return np.asarray(self.group[path][rows])

    def has(self, path: str) -> bool:
        return path in self.group

    def arrays(self, part: str) -> list[str]:
        """Names of the arrays in a part (a teacher's fields and `ok`; a modality's `tokens` and `ok`)."""
        return sorted(self.group[part].array_keys())

    def array_info(self, path: str) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) of an array, without reading it."""
        array = self.group[path]
        return tuple(array.shape), array.dtype

    def reader(self, path: str):
        """A read-only handle that slices lazily (for loops that read many small pieces of one array)."""
        return self.group[path]

    def attrs(self, part: str | None = None) -> dict:
        """The store's attributes, or a part's (a teacher's provenance, a modality's tokenizer)."""
        return dict((self.group[part] if part else self.group).attrs)

    @property
    def created(self) -> str | None:
        return self.group.attrs.get("created")

    def writable(self, path: str):
        """A handle to write the array at `path`, opened once per store object: opening reads its zarr.json,
        and a label commit writes ~31 arrays (27% of a commit's time when each write opened its array).
        `new_part` and `drop_handles` forget handles of arrays that are made again; a worker keeps one store
        object per run (engine/worker.py), so a part remade by a later run is opened afresh."""
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = self.group[path].with_config(WRITE)
        return handle

    def drop_handles(self, prefix: str) -> None:
        """Forget the write handles of the array `prefix` and of every array under it."""
        for path in [p for p in self._handles if p == prefix or p.startswith(prefix + "/")]:
            del self._handles[path]

    # ---------------------------------------------------------------- parts and markers
    def parts(self) -> list[str]:
        """Teachers (label store) or modalities (token store): every group under _runs but ours."""
        return sorted(name for name, _ in self.group[RUNS].groups() if not name.startswith("_"))

    def new_part(self, name: str) -> zarr.Group:
        """(Re)create a part's data group. Its markers go first: a part exists (is listed by `parts`) only
        once `commit_part` has run, after its arrays and attributes, so a part cut short by a kill or a
        full disk is simply made again, and old markers never describe new, empty arrays."""
        runs = self.group.require_group(RUNS)
        self.drop_handles(name)
        self.drop_handles(f"{RUNS}/{name}")
        if name in runs:
            del runs[name]
        return self.group.create_group(name, overwrite=True)

    def commit_part(self, name: str) -> None:
        self.drop_handles(f"{RUNS}/{name}")
        create_array(self.group.require_group(RUNS).create_group(name, overwrite=True), "units",
                     (self.n_units,), (1,), "str")

    def prepare_columns(self, part: str, types: dict[str, str], force: bool = False) -> None:
        """A part of one (N,) column per name in `types` ({name: dtype}), one chunk per unit: created once (a
        rerun resumes it); `force` makes it again, empty, so every unit starts over."""
        if part in self.parts() and not force:
            return
        group = self.new_part(part)
        for name, dtype in types.items():
            create_array(group, name, (self.n,), (self.unit_size,), dtype)
        group.attrs.update({"created": now()})
        self.commit_part(part)

    def raw_markers(self, part: str) -> np.ndarray:
        return self.group[f"{RUNS}/{part}/units"][:]

    def raw_marker(self, part: str, unit: int) -> str:
        """One unit's marker text ("" = not committed): one object read, where raw_markers reads n_units."""
        return str(self.group[f"{RUNS}/{part}/units"][unit])

    def done_units(self, part: str) -> np.ndarray:
        if part not in self.parts():
            return np.zeros(self.n_units, bool)
        return self.raw_markers(part) != ""

    def markers(self, part: str) -> list[dict | None]:
        try:
            return [json.loads(m) if m else None for m in self.raw_markers(part)]
        except Exception as e:  # a torn or undecodable marker
            raise UserError(f"{self.uri}: the commit markers of {part} are damaged ({type(e).__name__}); run "
                            f"`omnimill verify {self.uri}`, then the same command with --repair") from None

    def write_marker(self, part: str, unit: int, marker: dict) -> None:
        faults.point("unit.chunks")
        self.writable(f"{RUNS}/{part}/units")[unit] = json.dumps(marker)
        faults.point("unit.marker")

    def clear_markers(self, part: str, units) -> None:
        """Uncommit units: out of the summary first, then their markers (a kill between the two leaves a
        summary that claims less than the markers, never more)."""
        self.unsummarize(part, units)
        array = self.writable(f"{RUNS}/{part}/units")
        for u in units:
            array[u] = ""

    # ---------------------------------------------------------------- summary (summary.py)
    def unsummarize(self, part: str, units) -> None:
        """Take units out of the summary, for the lock holder to call BEFORE anything replaces or clears
        their committed markers (repair; a unit made again while committed): the next summarize reads them."""
        units = sorted(units)
        table = self._summary(part)
        if table is not None and units and table[units, COMMITTED].any():
            table[units] = 0
            self._write_summary(part, table, units[0], units[-1] + 1)

    @staticmethod
    def _unsettled(table: np.ndarray) -> np.ndarray:
        """Units whose markers are read again: not summarized, or holding retryable failures (a later run
        retries those samples and replaces the marker)."""
        return np.flatnonzero((table[:, COMMITTED] == 0) | (table[:, summary.RETRYABLE] > 0))

    def _summary(self, part: str) -> np.ndarray | None:
        path = f"{RUNS}/{part}/{summary.NAME}"
        if path not in self.group:
            return None
        table = self.group[path][:]
        return table if table.shape == (self.n_units, len(summary.COLUMNS)) else None

    def _write_summary(self, part: str, table: np.ndarray, start: int, stop: int) -> None:
        path = f"{RUNS}/{part}/{summary.NAME}"
        if path not in self.group:
            from omnimill.store.layout import once

            create_array(self.group[f"{RUNS}/{part}"], summary.NAME, table.shape, dtype="int32",
                         **once(1, (len(summary.COLUMNS),)))
            start, stop = 0, len(table)
        self.writable(path)[start:stop] = table[start:stop]

    def summarize(self, parts: list[str] | None = None) -> dict[str, int]:
        """Bring the unit summary of each part up to date with its markers: reads only the markers of units
        it does not hold yet or that hold retryable failures (`_unsettled`). For the client that holds the
        lock (the summary's only writer): run_job calls it before the sweep's plan and before the tally.
        Returns {part: units whose rows changed}."""
        added = {}
        for part in parts if parts is not None else self.parts():
            table = self._summary(part)
            table = summary.empty(self.n_units) if table is None else table
            todo = self._unsettled(table)
            new = [(u, m) for u, m in zip(todo, self._markers_at(part, todo))
                   if m is not None and list(table[u]) != summary.row(m)]
            for u, m in new:
                table[u] = summary.row(m)
            if new or f"{RUNS}/{part}/{summary.NAME}" not in self.group:
                self._write_summary(part, table, int(new[0][0]) if new else 0, int(new[-1][0]) + 1 if new else 0)
            added[part] = len(new)
        return added

    def unsettled_markers(self, part: str) -> dict[int, dict | None]:
        """{unit: its marker, None if not committed} for the units the summary does not settle: not
        summarized yet, or holding retryable failures (every unit of a store without a summary). Every
        other unit is committed and holds no retryable failure, so a plan needs only these: one object
        read per unit listed, not n_units. A marker that does not decode is refused, as by `markers`."""
        table = self._summary(part)
        units = self._unsettled(summary.empty(self.n_units) if table is None else table)
        out = {}
        for u, text in zip(units, self._raw_at(part, units)):
            try:
                out[int(u)] = json.loads(text) if text else None
                if out[int(u)] is not None:
                    int(out[int(u)]["ok"])
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(f"{self.uri}: the commit marker of {part} unit {u} is damaged ({type(e).__name__}); "
                                f"run `omnimill verify {self.uri}`, then the same command with --repair") from None
        return out

    def _raw_at(self, part: str, units: np.ndarray) -> np.ndarray:
        """Marker texts of these units: one plain read when they are all of them (no summary yet)."""
        if not len(units):
            return np.array([], str)
        array = self.group[f"{RUNS}/{part}/units"]
        if len(units) == self.n_units:
            return array[:]
        return array.get_coordinate_selection(np.asarray(units, np.int64))

    def _markers_at(self, part: str, units: np.ndarray) -> list[dict | None]:
        """Decoded markers of these units; None for an empty or damaged one (verify reports those)."""
        out = []
        for text in self._raw_at(part, units):
            try:
                marker = json.loads(text) if text else None
                out.append(marker if isinstance(marker, dict) and "ok" in marker else None)
            except ValueError:
                out.append(None)
        return out

    def tally(self, part: str, max_errors: int = 5) -> dict:
        """What the committed units of a part hold: {committed (n_units,) bool, units_done, ok, failed,
        skipped, errors (recorded), retryable (of those errors), first_errors}. From the summary plus the
        markers of the units it does not hold (all of them when there is none, as in stores made before it):
        true whatever the summary's age."""
        table = self._summary(part)
        table = summary.empty(self.n_units) if table is None else table.copy()
        todo = self._unsettled(table)
        fresh = {}
        for u, m in zip(todo, self._markers_at(part, todo)):
            table[u] = summary.row(m) if m is not None else 0
            if m is not None:
                fresh[int(u)] = m
        errors = []
        for u in np.flatnonzero(table[:, summary.ERRORS] > 0):  # in unit order: the first errors come first
            if len(errors) >= max_errors:
                break
            marker = fresh.get(int(u)) or (self._markers_at(part, np.array([u])) + [None])[0] or {}
            errors += marker.get("errors", [])
        totals = table.sum(axis=0, dtype=np.int64)
        return {"committed": table[:, COMMITTED] == 1, "units_done": int(totals[COMMITTED]),
                "ok": int(totals[summary.OK]), "failed": int(totals[summary.FAILED]),
                "skipped": int(totals[summary.SKIPPED]), "errors": int(totals[summary.ERRORS]),
                "retryable": int(totals[summary.RETRYABLE]),
                "first_errors": sorted(errors, key=lambda e: e.get("index", 0))[:max_errors]}

    # ---------------------------------------------------------------- lock
    def acquire_lock(self, break_lock: bool = False, verb: str = "labelled") -> dict:
        """Refuse a second run on this store: the lock object is created only if it does not exist.

        A lock left by a killed run on this host (its pid is gone) is taken over. A lock from another
        host cannot be checked from here: `--break-lock` takes it over.
        """
        token = {"host": socket.gethostname(), "pid": os.getpid(), "since": now(), "nonce": os.urandom(6).hex()}
        for _ in range(2):
            old = self.lock()
            if old is not None:
                if _alive(old) and not break_lock:
                    raise UserError(f"{self.uri} is being {old.get('verb', verb)} by pid {old['pid']} on "
                                    f"{old['host']} since {old['since']}; wait for it, or pass --break-lock "
                                    "if that run is dead")
                self._take_over(old)
            self._put_if_absent(f"{RUNS}/{LOCK}/zarr.json", _group_json({"lock": {**token, "verb": verb}}))
            time.sleep(0.02 if not is_url(self.uri) else 0.2)  # object stores: let a racing writer land first
            if (self.lock() or {}).get("nonce") == token["nonce"]:
                return token
        raise UserError(f"{self.uri} was locked by another run at the same moment; try again")

    def live_lock(self) -> dict | None:
        """The lock of a run that is (or may be, on another host) still going; None if free or dead."""
        lock = self.lock()
        return lock if lock is not None and _alive(lock) else None

    def _take_over(self, old: dict) -> None:
        """Remove a dead lock, but only that one: two runs taking over the same dead lock must not delete
        each other's new one. Locally the lock is renamed away (atomic) and put back if it turns out to
        be a lock made since we looked; on object stores it is deleted (see the module docstring)."""
        key = f"{RUNS}/{LOCK}/zarr.json"
        if is_url(self.uri):
            self._delete(key)
            return
        path = os.path.join(local_path(self.uri), self._key(key))
        tomb = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.dead"
        try:
            os.rename(path, tomb)
        except FileNotFoundError:
            return  # gone already (another run took it over), or an older omnimill's lock in the attributes
        try:
            with open(tomb) as f:
                taken = json.load(f)["attributes"]["lock"]
        except (ValueError, KeyError, TypeError):
            taken = {"nonce": "damaged"}
        if taken.get("nonce") != old.get("nonce"):
            with contextlib.suppress(FileExistsError):
                os.link(tomb, path)  # a live lock, made since we looked: put it back
        os.remove(tomb)

    def lock(self) -> dict | None:
        raw = self._get(f"{RUNS}/{LOCK}/zarr.json")
        if raw is None:
            return self.group[RUNS].attrs.get("lock")  # stores locked by an older omnimill
        try:
            return json.loads(raw)["attributes"]["lock"]
        except (ValueError, KeyError, TypeError):
            return {"host": "?", "pid": -1, "since": "?", "nonce": "damaged"}  # a torn lock: dead by definition

    def release_lock(self, token: dict | None = None) -> None:
        held = self.lock()
        if held is not None and (token is None or held.get("nonce") == token.get("nonce")):
            self._delete(f"{RUNS}/{LOCK}/zarr.json")
        if "lock" in self.group[RUNS].attrs:
            del self.group[RUNS].attrs["lock"]

    # ---------------------------------------------------------------- run history
    def append_run(self, record: dict) -> None:
        """One group per run, written in one object: appending never rewrites earlier records."""
        faults.point("run.record")
        # microseconds in the name: `history` sorts by name, and two runs often end within one second
        name = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}_{os.getpid()}_{os.urandom(3).hex()}"
        self.group.require_group(f"{RUNS}/{HISTORY}").create_group(name, attributes=record)

    def history(self) -> list[dict]:
        old = list(self.group[RUNS].attrs.get("history", []))  # records of an older omnimill
        if HISTORY not in self.group[RUNS]:
            return old
        runs = self.group[f"{RUNS}/{HISTORY}"]
        return old + [dict(g.attrs) for _, g in sorted(runs.groups())]

    # ---------------------------------------------------------------- verify
    def declared(self, part: str) -> dict[str, tuple]:
        """{array name: per-sample shape} a complete part holds (ok included)."""
        raise NotImplementedError

    def verify(self, parts: list[str] | None = None) -> list[dict]:
        """Every problem found: {part, unit, array, samples, problem}. Reads every chunk of every committed unit."""
        problems = []

        def problem(part, unit, array, what):
            span = self.unit(unit) if unit is not None else None
            problems.append({"part": part, "unit": unit, "array": array,
                             "samples": f"{span.start}..{span.stop - 1}" if span else "", "problem": what})

        for name in self.TOP:
            if name not in self.group:
                problem("", None, name, "array missing")
                continue
            for u, what in self._check_chunks(name, range(self.n_units)):
                problem("", u, name, what)
        if keyindex.GROUP in self.group[RUNS] and "keys" in self.group:
            try:
                keys = self.keys()
            except Exception:
                keys = None  # an unreadable keys chunk: reported above
            for what in keyindex.KeyIndex(self.group[RUNS]).problems(keys) if keys is not None else []:
                problem("", None, f"{RUNS}/{keyindex.GROUP}", f"the key index {what}")
        for part in parts if parts is not None else self.parts():
            if f"{RUNS}/{part}/units" not in self.group:
                problem(part, None, f"{RUNS}/{part}/units", "marker array missing")
                continue
            raw = []
            for u in range(self.n_units):  # one chunk per marker: a damaged one is found by its unit
                try:
                    raw.append(str(self.group[f"{RUNS}/{part}/units"][u:u + 1][0]))
                except Exception as e:
                    problem(part, u, f"{RUNS}/{part}/units", f"marker does not decode: {type(e).__name__}: {e}")
                    raw.append("")
            committed = []
            markers = {}
            for u, text in enumerate(raw):
                if not text:
                    continue
                try:
                    markers[u] = json.loads(text)
                    int(markers[u]["ok"])
                    committed.append(u)
                except (ValueError, KeyError, TypeError) as e:
                    problem(part, u, f"{RUNS}/{part}/units", f"marker is not valid JSON ({type(e).__name__})")
            try:
                table = self._summary(part)
            except Exception as e:
                table = None
                problem(part, None, f"{RUNS}/{part}/{summary.NAME}", f"does not decode: {type(e).__name__}: {e}")
            for u in np.flatnonzero(table[:, COMMITTED]) if table is not None else []:
                if u not in markers or list(table[u]) != summary.row(markers[u]):
                    problem(part, int(u), f"{RUNS}/{part}/{summary.NAME}",
                            "summarized as committed, its marker is not" if u not in markers
                            else "the summary's row differs from the marker")
            if part not in self.group:
                problem(part, None, part, "the part's group is missing")
                continue
            for array, shape in self.declared(part).items():
                if array not in self.group[part]:
                    problem(part, None, f"{part}/{array}", "array missing")
                    continue
                got = self.group[f"{part}/{array}"].shape
                if tuple(got) != (self.n, *shape):
                    problem(part, None, f"{part}/{array}", f"shape {tuple(got)}, declared {(self.n, *shape)}")
                    continue
                for u, what in self._check_chunks(f"{part}/{array}", committed):
                    problem(part, u, f"{part}/{array}", what)
            if "ok" in self.group[part]:
                for u in committed:
                    span = self.unit(u)
                    try:
                        count = int(self.group[f"{part}/ok"][span.start:span.stop].sum())
                    except Exception:
                        continue  # already reported as an unreadable chunk
                    if count != int(markers[u]["ok"]):
                        problem(part, u, f"{part}/ok", f"{count} samples ok, the marker says {markers[u]['ok']}")
        return problems

    def _check_chunks(self, path: str, units, decode: bool = True):
        """(unit, problem) for every unit whose chunks along N are missing or (with `decode`) do not decode.
        Presence is an existence check (no download); decoding reads the unit's rows once."""
        array = self.group[path]
        grid = array.shards or array.chunks  # a sharded array's objects are its shards (layout.py)
        rows = grid[0]
        other = [-(-s // c) for s, c in zip(array.shape[1:], grid[1:])]
        seen: dict[str, bool] = {}  # a shard holds many units: checked once
        for u in units:
            span = self.unit(u)
            keys = [array.metadata.encode_chunk_key((c, *rest))
                    for c in range(span.start // rows, (span.stop - 1) // rows + 1) for rest in np.ndindex(*other)]
            missing = next((k for k in keys if not seen.setdefault(k, self._exists(f"{array.path}/{k}"))), None)
            if missing is not None:
                yield u, f"chunk {missing} is missing"
                continue
            if decode:
                try:
                    array[span.start:span.stop]
                except Exception as e:
                    yield u, f"does not decode: {type(e).__name__}: {e}"

    def unit_intact(self, part: str, unit: int, decode: bool = False) -> bool:
        """Every array of `part` (or the top-level array `part`) has the unit's chunks on disk: safe to read
        back (Zarr gives fill values for a missing chunk, and a job would write them back as labels).
        Without `decode`, a chunk that is there but does not decode raises when the job reads it."""
        paths = [part] if part in self.TOP else [f"{part}/{array}" for array in self.declared(part)]
        return all(not list(self._check_chunks(path, [unit], decode)) for path in paths)

    def damaged_units(self, parts: list[str]) -> dict[str, set[int] | None]:
        """{part: units to redo}, from `verify`; None: the part's arrays themselves are damaged (missing,
        wrong shape), so it starts over. Damage that no job can redo (the corpus index, the crops) is
        refused: relabelling over it would turn good labels into failures."""
        damaged: dict[str, set[int] | None] = {p: set() for p in parts}
        for p in self.verify(parts):
            if p["array"] == f"{RUNS}/{keyindex.GROUP}":  # derived from the keys: written again
                self.index_keys(self.group, self.keys(), self.unit_size)
                continue
            if p["array"].endswith(f"/{summary.NAME}") and p["unit"] is None:  # the next summarize rewrites it
                self.drop_handles(p["array"])
                del self.group[p["array"]]
                continue
            if not p["part"]:
                if p["array"] not in self.REDO_TOP:
                    raise UserError(f"{self.uri}: {p['array']} is damaged ({p['problem']}, samples {p['samples']}); "
                                    f"it was written when the store was created and no run can redo it: make a "
                                    f"new {self.WHAT}")
                for part in parts:
                    if damaged[part] is not None:
                        damaged[part].add(p["unit"])
            elif p["unit"] is None:
                damaged[p["part"]] = None
            elif damaged.get(p["part"]) is not None:
                damaged[p["part"]].add(p["unit"])
        return damaged

    # ---------------------------------------------------------------- raw objects (lock, verify)
    def _key(self, key: str) -> str:
        return f"{self.group.path}/{key}" if self.group.path else key

    def _get(self, key: str) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = sync(self.group.store.get(self._key(key), prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def _exists(self, key: str) -> bool:
        from zarr.core.sync import sync

        return sync(self.group.store.exists(self._key(key)))

    def _put_if_absent(self, key: str, data: bytes) -> None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        sync(self.group.store.set_if_not_exists(self._key(key), default_buffer_prototype().buffer.from_bytes(data)))

    def _delete(self, key: str) -> None:
        from zarr.core.sync import sync

        sync(self.group.store.delete(self._key(key)))
        if not is_url(self.uri):  # a local folder left empty would make zarr warn about a stray object
            folder = os.path.dirname(os.path.join(local_path(self.uri), self._key(key)))
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _url_entries(uri: str, storage_options: dict | None) -> set[str]:
    """Names directly under an object-store prefix (empty when there is nothing there)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    try:
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
    except FileNotFoundError:
        return set()


def _group_json(attributes: dict) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes}).encode()


def _remove_ours(uri: str, storage_options: dict | None, names: tuple[str, ...]) -> None:
    """Remove an interrupted create: only the entries a create writes, and only if nothing else is there."""
    if is_url(uri):
        import fsspec

        fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        entries = {p.rstrip("/").rsplit("/", 1)[-1]: p for p in fs.ls(root, detail=False)}
        remove = lambda p: fs.rm(p, recursive=True)  # noqa: E731
    else:
        root = local_path(uri)
        entries = {name: os.path.join(root, name) for name in os.listdir(root)}
        remove = lambda p: shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)  # noqa: E731
    strangers = sorted(e for e in set(entries) - set(names) if not e.endswith(".partial"))  # zarr's temp files
    if strangers:
        raise UserError(f"{uri} looks like an interrupted create but also holds {', '.join(strangers[:3])}; "
                        "move those away or give a new path")
    for name in entries:
        if name != "zarr.json":
            remove(entries[name])
    if "zarr.json" in entries:
        remove(entries["zarr.json"])  # last: until it goes, the folder is still recognised as ours


def _alive(lock: dict) -> bool:
    if lock.get("nonce") == "damaged":
        return False  # a torn lock object: no run can be holding it
    if lock.get("host") != socket.gethostname():
        return True  # cannot tell from here
    try:
        os.kill(int(lock["pid"]), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return int(lock["pid"]) > 0


def held_out(keys, holdout: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of held-out samples, decided per key: sha256(seed:key) in the first `holdout` fraction of
    the hash space. Stable across runs, machines and corpus growth, and the same for every store and shard
    set made from one corpus (tokenizer training and the trainer's loader split the same way)."""
    limit = int(holdout * 2 ** 32)
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{k}".encode()).digest()[:4], "little") < limit
                     for k in keys], bool)


def short(value) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
