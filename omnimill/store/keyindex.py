"""Key -> row without reading every key: a sorted copy of the keys, written once by the client.

    _runs/_keys/
      sorted (N,) str     the keys in code-point order (stable: equal keys keep their row order)
      order  (N,) int64   sorted[i] is keys[order[i]]
      fences (C,) str     the first key of each inner chunk of `sorted` (C = ceil(N / rows per chunk))

A lookup bisects the fences (read once per open store and kept), then reads ONE inner chunk of `sorted`
and the same chunk of `order`: at a billion keys, 1e9 / 8192 = 122k fences (~5 MB of keys, read once) and
then 2 ranged GETs of ~320 kB and 64 kB, where `keys()` would read ~40 GB. `sorted` and `order` are sharded
(layout.once): one writer, written at creation. Stores made before this index have none: lookups read
every key, as they always did (`KeyIndex.present` tells).
"""

from __future__ import annotations

import bisect

import numpy as np
import zarr

from omnimill.store import layout

GROUP = "_keys"  # under _runs: the store's own bookkeeping, never a part (parts() skips "_" names)


def write(runs: zarr.Group, keys: np.ndarray, unit_size: int) -> None:
    """Sort once and write the three arrays (at creation, or again by repair: it derives from `keys`)."""
    from omnimill.store.base import create_array  # base reads through this module: imported when used

    keys = np.asarray(keys, dtype=object)
    order = np.argsort(keys, kind="stable").astype(np.int64)
    ordered = keys[order]
    group = runs.require_group(GROUP)
    chunking = layout.once(unit_size)
    create_array(group, "sorted", (len(keys),), dtype="str", **chunking)[:] = ordered
    create_array(group, "order", (len(keys),), dtype="int64", **chunking)[:] = order
    fences = ordered[::chunking["chunks"][0]]
    create_array(group, "fences", (len(fences),), (max(1, len(fences)),), "str")[:] = fences


class KeyIndex:
    def __init__(self, runs: zarr.Group):
        self.group = runs[GROUP] if GROUP in runs else None
        self._fences: list[str] | None = None

    @property
    def present(self) -> bool:
        return self.group is not None

    def find(self, key: str) -> int | None:
        """The first row holding `key`, or None."""
        if self._fences is None:  # once per open store; the arrays' handles too (each open reads metadata)
            self._fences = [str(k) for k in self.group["fences"][:]]
            self._sorted, self._order = self.group["sorted"], self.group["order"]
        rows = self._sorted.chunks[0]
        # the last chunk whose first key is < key: with equal keys spilling over a chunk boundary, the
        # first of them may sit at the end of the chunk before the one whose fence equals the key
        c = max(0, bisect.bisect_left(self._fences, key) - 1)
        start = c * rows
        # this chunk and the next, as Python strings: numpy 2.4.6's searchsorted gave wrong rows on the
        # StringDType arrays zarr returns (measured)
        chunk = self._sorted[start:start + 2 * rows].tolist()
        i = bisect.bisect_left(chunk, key)
        if i == len(chunk) or chunk[i] != key:
            return None
        return int(self._order[start + i])

    def problems(self, keys: np.ndarray) -> list[str]:
        """What does not match the store's keys (verify): the index must sort exactly these keys."""
        try:
            order, ordered = self.group["order"][:], self.group["sorted"][:]
            fences = self.group["fences"][:]
        except Exception as e:
            return [f"does not decode: {type(e).__name__}: {e}"]
        if len(order) != len(keys) or len(ordered) != len(keys):
            return [f"holds {len(order)} keys, the store {len(keys)}"]
        if not np.array_equal(np.sort(order), np.arange(len(keys))) or not np.array_equal(keys[order], ordered):
            return ["does not sort the store's keys"]
        if any(a > b for a, b in zip(ordered[:-1], ordered[1:])):
            return ["is not in order"]
        if not np.array_equal(fences, ordered[::self.group["sorted"].chunks[0]]):
            return ["fences do not match the sorted keys"]
        return []
