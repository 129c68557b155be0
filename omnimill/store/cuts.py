"""The cut store: scene cuts of every video of a corpus, per detector, written by the cut job
(engine/cuts.py) and read by the clip index (`--clips scenes`) through `cuts(detector)`.

    cuts.zarr/               attrs: format, omnimill version, uuid, created, corpus {uri, kind}, n (videos),
                                    unit_size (videos per unit)
      keys    (N,) str       the videos' keys (as the clip index names them)
      source  (N,) str       file URL or "tar::member";  offset, size (N,) int64: where in a tar (-1)
      <detector>/            attrs: settings {detector, threshold, ..., package, version}
        cuts    (N,) str     JSON list of cut times, file seconds
        frames  (N,) int64   frames decoded
        error   (N,) str     why the video did not decode ("" when it did)
        ok      (N,) bool    cut (the video decoded to its end)
      _runs/<detector>/units, summary, _keys, _lock, _history   markers, their summary, the key index, lock
                             and run records (base.py); keys, source, offset, size are sharded (layout.py)

Why a store of its own: cuts are made once per corpus and detector, before any label store exists (they
decide its samples), and a second label store of the same corpus may list its clips from them again. It
is a UnitStore, so the cut job resumes from its markers, is locked, recorded and verified like the others.
"""

from __future__ import annotations

import json

import numpy as np
import zarr

from omnimill import __version__
from omnimill.errors import UserError
from omnimill.store import layout
from omnimill.store.base import UnitStore, create_array, now, short

FORMAT = "omnimill.cuts/1"
DECLARED = {"cuts": (), "frames": (), "error": (), "ok": ()}
TYPES = {"cuts": "str", "frames": "int64", "error": "str", "ok": "bool"}


class CutStore(UnitStore):
    FORMAT = FORMAT
    WHAT = "cut store"
    TOP = ("keys", "source", "offset", "size")
    MAKE = "make one with `omnimill cuts CORPUS {uri}` (or `omnimill label ... --clips scenes`)"

    def __init__(self, group: zarr.Group, uri: str, storage_options: dict | None = None):
        super().__init__(group, uri, storage_options)
        self.corpus = dict(group.attrs["corpus"])

    @classmethod
    def create(cls, uri: str, corpus: dict, videos: list[tuple[str, str, int, int]], unit_size: int,
               storage_options: dict | None = None) -> "CutStore":
        """A new store for `videos` [(key, source, offset, size)] of the corpus {uri, kind}."""
        group = cls.new_group(uri, storage_options)
        n, once = len(videos), layout.once(unit_size)  # written here, once, by this process alone
        keys, sources, offsets, sizes = zip(*videos) if videos else ((), (), (), ())
        create_array(group, "keys", (n,), dtype="str", **once)[:] = np.array(keys, dtype=object)
        create_array(group, "source", (n,), dtype="str", **once)[:] = np.array(sources, dtype=object)
        create_array(group, "offset", (n,), dtype="int64", **once)[:] = np.array(offsets, np.int64)
        create_array(group, "size", (n,), dtype="int64", **once)[:] = np.array(sizes, np.int64)
        cls.index_keys(group, np.array(keys, dtype=object), unit_size)
        cls.commit_create(group, {"format": FORMAT, "omnimill_version": __version__, "uuid": group.attrs["uuid"],
                                  "corpus": corpus, "n": n, "unit_size": unit_size})
        return cls(group, uri, storage_options)

    def videos(self, start: int, stop: int) -> list[tuple[str, str, int, int]]:
        """(key, source, offset, size) of videos start..stop."""
        rows = [self.read(name, slice(start, stop)) for name in self.TOP]
        return [(str(k), str(s), int(o), int(z)) for k, s, o, z in zip(*rows)]

    # ---------------------------------------------------------------- detectors (the parts)
    def prepare_detector(self, name: str, settings: dict, force: bool = False) -> None:
        """Create the detector's arrays, or check that its cuts were made with the same settings (the same
        package version too): resume. Other settings: refused unless `force`, which starts it over."""
        if name.startswith("_") or name in self.TOP:
            raise UserError(f"a detector cannot be called {name!r}: the cut store uses that name itself")
        if name in self.parts() and not force:
            old = self.settings(name)
            if old != settings:
                raise UserError(f"{self.uri} holds {name} cuts made with {short(old)}, not {short(settings)}; pass "
                                "--force to cut again, or give another cut store")
            return
        group = self.new_part(name)
        for array, kind in TYPES.items():
            create_array(group, array, (self.n,), (self.unit_size,), kind)
        group.attrs.update({"settings": settings, "created": now()})
        self.commit_part(name)

    def settings(self, name: str) -> dict:
        return dict(self.attrs(name).get("settings") or {})

    def declared(self, part: str) -> dict[str, tuple]:
        return dict(DECLARED)

    def write_unit(self, name: str, unit: int, cuts: list[list[float]], frames: list[int], errors: list[str],
                   marker: dict) -> None:
        """One unit's rows of every array, then its marker (the commit)."""
        span = self.unit(unit)
        self.writable(f"{name}/cuts")[span.start:span.stop] = np.array([json.dumps(c) for c in cuts], dtype=object)
        self.writable(f"{name}/frames")[span.start:span.stop] = np.array(frames, np.int64)
        self.writable(f"{name}/error")[span.start:span.stop] = np.array(errors, dtype=object)
        self.writable(f"{name}/ok")[span.start:span.stop] = np.array([not e for e in errors], bool)
        self.write_marker(name, unit, marker)

    # ---------------------------------------------------------------- reading
    def complete(self, name: str) -> bool:
        return bool(self.done_units(name).all())

    def cuts(self, name: str) -> dict[str, list[float] | str]:
        """{video key: its cut times (file seconds), or why it did not decode} for a complete detector."""
        if not self.complete(name):
            raise UserError(f"{self.uri}: the {name} cuts are not complete; run `omnimill cuts` on it again")
        keys, cuts = self.keys(), self.read(f"{name}/cuts")
        errors, ok = self.read(f"{name}/error"), self.read(f"{name}/ok")
        return {str(k): ([float(t) for t in json.loads(str(c))] if good else str(e))
                for k, c, e, good in zip(keys, cuts, errors, ok)}

    def status(self) -> dict:
        """Per detector: units done, videos cut, videos failed, settings."""
        info = {"store": self.uri, "corpus": self.corpus, "n": self.n, "n_units": self.n_units, "detectors": {}}
        for name in self.parts():
            done = self.tally(name, max_errors=0)  # the summary and the markers it does not hold (summary.py)
            info["detectors"][name] = {"units_done": done["units_done"], "units_total": self.n_units,
                                       "ok": done["ok"], "failed": done["failed"], "settings": self.settings(name)}
        return info
