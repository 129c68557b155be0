"""Objects per store (store/layout.py): what one process writes is sharded, what workers write stays one
object per unit; damage to a shard is still found, and stores made before sharding still work."""

from __future__ import annotations

import os
import shutil

import pytest
import zarr

from conftest import write_images
from omnimill.engine.label import label
from omnimill.errors import UserError
from omnimill.store.labels import LabelStore

FAST = dict(workers=1, unit_size=4, view_size=32, progress=False)
N = 18  # 5 units: 4 + 4 + 4 + 4 + 2


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    write_images(root / "c", N)
    label(str(root / "c"), str(root / "labels.zarr"), ["palette"], **FAST)
    return root


@pytest.fixture
def store(labelled, tmp_path):
    shutil.copytree(labelled / "labels.zarr", tmp_path / "labels.zarr")
    return tmp_path / "labels.zarr"


@pytest.fixture
def corpus(labelled):
    return str(labelled / "c")


def objects(folder) -> int:
    return sum(len(files) for _, _, files in os.walk(folder / "c")) if (folder / "c").exists() else 0


def test_the_index_is_one_object_per_column_and_worker_arrays_one_per_unit(store):
    for column in ("keys", "source", "offset", "size", "caption", "_runs/_keys/sorted", "_runs/_keys/order"):
        assert objects(store / column) == 1, column
    for per_unit in ("crop_box", "palette/ok", "palette/colors", "_runs/palette/units"):
        assert objects(store / per_unit) == 5, per_unit  # never shared by two workers
    group = zarr.open_group(str(store), mode="r")
    assert group["keys"].shards is not None and group["palette/ok"].shards is None
    assert LabelStore.open(str(store)).verify() == []


def test_a_deleted_index_shard_is_found_for_every_unit_and_refused(store, corpus):
    os.remove(store / "source" / "c" / "0")
    problems = LabelStore.open(str(store)).verify()
    assert sorted(p["unit"] for p in problems if p["array"] == "source") == [0, 1, 2, 3, 4]
    assert all("chunk c/0 is missing" in p["problem"] for p in problems if p["array"] == "source")
    with pytest.raises(UserError, match="source is damaged.*make a new label store"):
        label(corpus, str(store), ["palette"], repair=True, **FAST)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_index_shard_is_found(store, damage):
    path = store / "caption" / "c" / "0"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-10] ^= 0xFF  # in the shard's index of inner chunks (checksummed: crc32c)
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))
    problems = LabelStore.open(str(store)).verify()
    assert sorted(p["unit"] for p in problems) == [0, 1, 2, 3, 4]
    assert all(p["array"] == "caption" and "does not decode" in p["problem"] for p in problems)


def as_before_sharding(store) -> None:
    """Make the store look as the omnimill before this layout wrote it: every index column one chunk per unit,
    no key index, no unit summary."""
    group = zarr.open_group(str(store), mode="r+")
    unit = int(group.attrs["unit_size"])
    for name in ("keys", "source", "offset", "size", "caption"):
        values = group[name][:]
        old = group.create_array(name, shape=values.shape, chunks=(unit,), dtype=str if values.dtype == object
                                 else values.dtype, overwrite=True, config={"write_empty_chunks": True})
        old[:] = values
    del group["_runs/_keys"]
    if "summary" in group["_runs/palette"]:
        del group["_runs/palette/summary"]


def test_a_store_made_before_sharding_opens_resumes_looks_up_and_verifies(store, corpus):
    keys = LabelStore.open(str(store)).keys()
    as_before_sharding(store)
    assert objects(store / "keys") == 5 and not (store / "_runs" / "_keys").exists()
    old = LabelStore.open(str(store))
    assert old.index_of(str(keys[9])) == 9 and old.verify() == []
    assert old.status()["teachers"]["palette"]["units_done"] == 5
    again = label(corpus, str(store), ["palette"], **FAST)
    assert again.exit_code == 0 and again.units_planned == 0  # resumed, nothing redone
    os.remove(store / "keys" / "c" / "2")  # damage in the old layout is still named by its unit
    assert [(p["array"], p["unit"]) for p in LabelStore.open(str(store)).verify()] == [("keys", 2)]
