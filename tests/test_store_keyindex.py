"""Key -> row from the sorted key index (store/keyindex.py), without reading every key."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from omnimill.store import keyindex
from omnimill.store.layout import ROWS_PER_CHUNK


@pytest.fixture
def keys():
    """Three inner chunks of keys in no order, with repeats that cross a chunk boundary once sorted."""
    rng = np.random.default_rng(0)
    keys = np.array([f"dir{rng.integers(50)}/img_{rng.integers(10 ** 6):07d}" for _ in range(2 * ROWS_PER_CHUNK)]
                    + ["zz/repeated"] * (ROWS_PER_CHUNK + 5), dtype=object)
    return keys[rng.permutation(len(keys))]


def test_every_key_finds_its_first_row_and_others_none(keys, tmp_path):
    runs = zarr.open_group(str(tmp_path / "k.zarr"), mode="w").require_group("_runs")
    keyindex.write(runs, keys, unit_size=16)
    index = keyindex.KeyIndex(runs)
    first = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    assert index.problems(keys) == []
    for k in list(first)[::97] + ["zz/repeated", min(first), max(first)]:
        assert index.find(k) == first[k], k
    for missing in ("", "dir1/img_", "zz/repeated0", "zzz"):
        assert index.find(missing) is None


def test_a_damaged_index_is_found(keys, tmp_path):
    runs = zarr.open_group(str(tmp_path / "k.zarr"), mode="w").require_group("_runs")
    keyindex.write(runs, keys, unit_size=16)
    order = runs["_keys/order"]
    swapped = order[:]
    swapped[[0, -1]] = swapped[[-1, 0]]  # the smallest key and a repeat of the largest
    order[:] = swapped
    assert keyindex.KeyIndex(runs).problems(keys) == ["does not sort the store's keys"]
    assert keyindex.KeyIndex(runs).problems(keys[:-1]) == [f"holds {len(keys)} keys, the store {len(keys) - 1}"]
