"""The unit summary (store/summary.py): status from a few objects, and never more than the markers say."""

from __future__ import annotations

import json
import shutil

import pytest
import zarr

from conftest import write_images
from omnimill.engine.label import label
from omnimill.errors import UserError
from omnimill.store.labels import LabelStore

FAST = dict(workers=1, unit_size=4, view_size=32, progress=False)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """18 images, two of them broken (errors in the markers of units 0 and 3): 5 units of palette labels."""
    root = tmp_path_factory.mktemp("summary")
    write_images(root / "c", 16)
    (root / "c" / "img0001x.jpg").write_bytes(b"not a jpeg")
    (root / "c" / "img0013x.jpg").write_bytes(b"")
    label(str(root / "c"), str(root / "labels.zarr"), ["palette"], **FAST)
    return root


@pytest.fixture
def store(labelled, tmp_path):
    shutil.copytree(labelled / "labels.zarr", tmp_path / "labels.zarr")
    return tmp_path / "labels.zarr"


def palette(store) -> dict:
    status = LabelStore.open(str(store)).status()["teachers"]["palette"]
    return {k: v for k, v in status.items() if k != "provenance"}


def test_status_is_the_same_from_the_summary_and_from_the_markers(store):
    group = zarr.open_group(str(store), mode="r+")
    if "summary" in group["_runs/palette"]:  # the run summarized its markers: start from the markers alone
        del group["_runs/palette/summary"]
    before = palette(store)
    assert before["units_done"] == 5 and before["samples_failed"] == 2 and len(before["first_errors"]) == 2
    opened = LabelStore.open(str(store), "r+")
    assert opened.summarize() == {"palette": 5}
    assert opened.summarize() == {"palette": 0}  # only markers it does not hold are read
    assert palette(store) == before and opened.verify() == []
    assert opened.raw_marker("palette", 3) == opened.raw_markers("palette")[3] != ""


def test_status_reads_the_summary_and_verify_finds_a_row_that_differs(store):
    LabelStore.open(str(store), "r+").summarize()
    units = zarr.open_group(str(store), mode="r+")["_runs/palette/units"]
    marker = json.loads(str(units[1]))
    units[1] = json.dumps({**marker, "ok": marker["ok"] - 1, "failed": marker["failed"] + 1})
    assert palette(store)["samples_failed"] == 2  # from the summary: the marker is not read
    problems = LabelStore.open(str(store)).verify()
    assert [(p["unit"], p["problem"]) for p in problems] == [(1, "the summary's row differs from the marker"),
                                                             (1, "4 samples ok, the marker says 3")]


def test_cleared_units_leave_the_summary_first(store):
    opened = LabelStore.open(str(store), "r+")
    opened.summarize()
    opened.clear_markers("palette", [2, 4])
    assert palette(store)["units_done"] == 3 and opened.verify() == []


def test_a_kill_between_summary_and_markers_leaves_a_true_status(store):
    """What a kill inside clear_markers leaves: the unit out of the summary, its marker still committed."""
    LabelStore.open(str(store), "r+").summarize()
    zarr.open_group(str(store), mode="r+")["_runs/palette/summary"][3] = 0
    status = palette(store)
    assert status["units_done"] == 5 and status["samples_failed"] == 2  # unit 3's marker is read instead
    assert LabelStore.open(str(store)).verify() == []


def test_a_marker_emptied_by_hand_is_found_and_repaired(store, labelled):
    LabelStore.open(str(store), "r+").summarize()
    zarr.open_group(str(store), mode="r+")["_runs/palette/units"].with_config({"write_empty_chunks": True})[2] = ""
    problems = LabelStore.open(str(store)).verify()
    assert [(p["unit"], p["problem"]) for p in problems] == [(2, "summarized as committed, its marker is not")]
    result = label(str(labelled / "c"), str(store), ["palette"], repair=True, **FAST)
    assert result.units_repaired == 1 and result.units_planned == 1
    assert LabelStore.open(str(store)).verify() == [] and palette(store)["units_done"] == 5


def test_a_retried_unit_is_read_again(store):
    """A retry replaces a committed marker: its row holds a retryable failure, so it is read again."""
    LabelStore.open(str(store), "r+").unsummarize("palette", [1])  # as a marker not summarized yet
    units = zarr.open_group(str(store), mode="r+")["_runs/palette/units"]
    marker = json.loads(str(units[1]))
    failing = {**marker, "ok": marker["ok"] - 1, "failed": marker["failed"] + 1,
               "errors": [{"index": 5, "key": "k", "stage": "palette", "error": "CUDA", "retryable": True}]}
    units[1] = json.dumps(failing)
    opened = LabelStore.open(str(store), "r+")
    opened.summarize()
    assert palette(store)["samples_failed"] == 3 and palette(store)["retryable"] == 1
    units[1] = json.dumps(marker)  # the retry labelled the sample: a new marker
    assert palette(store)["samples_failed"] == 2  # status reads the unit again before any summarize
    assert opened.summarize() == {"palette": 1} and palette(store)["retryable"] == 0
    assert LabelStore.open(str(store)).verify() == []


def test_a_run_leaves_its_summary_and_a_plan_reads_only_unsettled_markers(store):
    """label summarized its markers (run_job): a plan then reads no marker of a clean teacher; without a
    summary (a store of the previous omnimill) it reads them all, and a torn one is refused as before."""
    opened = LabelStore.open(str(store), "r+")
    assert opened.has("_runs/palette/summary") and opened.summarize() == {"palette": 0}
    assert opened.unsettled_markers("palette") == {}  # decode errors are final: nothing to retry
    held = opened.tally("palette", max_errors=0)
    assert (held["units_done"], held["errors"], held["retryable"]) == (5, 2, 0)
    del zarr.open_group(str(store), mode="r+")["_runs/palette/summary"]
    assert sorted(opened.unsettled_markers("palette")) == [0, 1, 2, 3, 4]
    zarr.open_group(str(store), mode="r+")["_runs/palette/units"][2] = '{"unit": 2, "ok": '
    with pytest.raises(UserError, match="unit 2 is damaged.*--repair"):
        opened.unsettled_markers("palette")


def test_write_handles_are_opened_once_and_forgotten_when_a_part_is_made_again(store):
    opened = LabelStore.open(str(store), "r+")
    handle = opened.writable("_runs/palette/units")
    assert opened.writable("_runs/palette/units") is handle and opened.writable("palette/ok") is not handle
    marker = opened.raw_marker("palette", 0)
    opened.new_part("palette")  # as --force does: the marker array is deleted, then made again
    opened.commit_part("palette")
    assert opened.writable("_runs/palette/units") is not handle
    with pytest.raises(KeyError):  # the part's arrays are gone (prepare makes them again): no stale handle
        opened.writable("palette/ok")
    opened.write_marker("palette", 0, json.loads(marker))
    assert LabelStore.open(str(store)).raw_marker("palette", 0) == json.dumps(json.loads(marker))
