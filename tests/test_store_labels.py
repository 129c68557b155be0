"""The label store across omnimill versions: a store labelled before fields had kinds resumes unchanged."""

from __future__ import annotations

import zarr

from conftest import write_images
from omnimill.engine.label import label
from omnimill.errors import UserError
from omnimill.store.labels import LabelStore

FAST = dict(workers=1, unit_size=4, view_size=32, progress=False)


def _forget_kinds(store) -> None:
    """Make the store look as an omnimill before field kinds wrote it: no kind in the fields entry."""
    group = zarr.open_group(str(store), mode="r+")["palette"]
    fields = {name: {k: v for k, v in f.items() if k not in ("kind", "relative", "time")}
              for name, f in group.attrs["fields"].items()}
    group.attrs["fields"] = fields


def test_a_store_labelled_before_field_kinds_resumes(tmp_path):
    write_images(tmp_path / "c", 6)
    store = tmp_path / "labels.zarr"
    label(str(tmp_path / "c"), str(store), ["palette"], **FAST)
    _forget_kinds(store)
    assert all("kind" not in f for f in LabelStore.open(str(store)).provenance("palette")["fields"].values())

    again = label(str(tmp_path / "c"), str(store), ["palette"], **FAST)
    assert again.exit_code == 0 and again.units_planned == 0  # resumed, not refused, nothing redone


def test_other_fields_are_still_refused(tmp_path):
    write_images(tmp_path / "c", 4)
    store = tmp_path / "labels.zarr"
    label(str(tmp_path / "c"), str(store), ["palette"], **FAST)
    group = zarr.open_group(str(store), mode="r+")["palette"]
    fields = dict(group.attrs["fields"])
    name = next(iter(fields))
    fields[name] = {**fields[name], "shape": [99]}
    group.attrs["fields"] = fields
    try:
        label(str(tmp_path / "c"), str(store), ["palette"], **FAST)
    except UserError as e:
        assert "another fields" in str(e) and "--force" in str(e)
    else:
        raise AssertionError("a store whose fields differ was resumed")


def test_compare_stores_script_tells_identical_from_changed(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "compare_stores.py"
    write_images(tmp_path / "c", 5)
    label(str(tmp_path / "c"), str(tmp_path / "a.zarr"), ["palette"], **FAST)
    shutil.copytree(tmp_path / "c", tmp_path / "moved")
    label(str(tmp_path / "moved"), str(tmp_path / "b.zarr"), ["palette"], **FAST)

    def compare(*extra):
        return subprocess.run([sys.executable, str(script), str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"),
                               *extra], capture_output=True, text=True)

    assert compare().returncode == 1 and "source: values differ" in compare().stdout  # another folder
    moved = compare("--moved", f"{tmp_path / 'c'}={tmp_path / 'moved'}")
    assert moved.returncode == 0 and moved.stdout.startswith("identical"), moved.stdout
    group = zarr.open_group(str(tmp_path / "b.zarr"), mode="r+")
    group["palette/ok"][0] = not group["palette/ok"][0]
    changed = compare("--moved", f"{tmp_path / 'c'}={tmp_path / 'moved'}")
    assert changed.returncode == 1 and "palette/ok: values differ" in changed.stdout


def test_run_records_keep_their_order_within_one_second(tmp_path):
    write_images(tmp_path / "c", 2)
    store = tmp_path / "labels.zarr"
    label(str(tmp_path / "c"), str(store), ["palette"], **FAST)
    opened = LabelStore.open(str(store), "r+")
    for i in range(20):  # far more than one per second: the names' random tails must not decide the order
        opened.append_run({"n": i})
    assert [r["n"] for r in opened.history()[-20:]] == list(range(20))
