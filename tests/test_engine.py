"""The labelling engine on a real embedded Dask LocalCluster writing real Zarr stores."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr
from conftest import write_images
from PIL import Image

from omnimill.engine.label import EXIT_OK, EXIT_SAMPLE_ERRORS, label
from omnimill.errors import UserError
from omnimill.corpus.image import decode_view
from omnimill.corpus.listing import index_corpus
from omnimill.store.labels import LabelStore

FAST = dict(workers=1, unit_size=8, view_size=64, progress=False)


def markers(store, teacher):
    return LabelStore.open(str(store)).markers(teacher)


def test_labels_every_sample_aligned_with_the_index(corpus, tmp_path):
    store = tmp_path / "labels.zarr"
    result = label(str(corpus), str(store), ["rgb", "metadata"], **FAST)
    assert result.exit_code == EXIT_OK and result.units_failed == []

    labels = LabelStore.open(str(store))
    index = index_corpus(str(corpus))
    assert list(labels.keys()) == index.keys
    assert labels.n_units == 3  # 20 samples / 8 per unit, rounded up
    for teacher in ("rgb", "metadata"):
        assert labels.done_units(teacher).all()
        assert labels.group[teacher]["ok"][:].all()

    # what the store holds is what decoding the source gives, sample by sample
    for i in (0, 7, 8, 19):
        expected = decode_view(open(index.sources[i], "rb").read(), 64)
        np.testing.assert_array_equal(labels.group["rgb/image"][i], expected.view)
        assert tuple(labels.group["crop_box"][i]) == expected.info.crop_box
        assert labels.group["metadata/orig_width"][i] == 96
    captions = dict(zip(labels.keys(), labels.group["caption"][:]))
    assert captions["a/img0001"] == "a red ball on grass" and captions["b/img0013"] == "two cats"


def test_rerun_skips_committed_units_and_new_teacher_labels_only_itself(corpus, tmp_path):
    store = tmp_path / "labels.zarr"
    label(str(corpus), str(store), ["rgb"], **FAST)
    before = markers(store, "rgb")

    again = label(str(corpus), str(store), ["rgb"], **FAST)
    assert again.units_planned == 0 and again.units_done == 0
    assert markers(store, "rgb") == before  # nothing rewritten

    added = label(str(corpus), str(store), ["rgb", "canny"], **FAST)
    assert added.units_planned == 3
    assert all(set(s["ok"]) == {"canny"} for s in added.unit_stats)  # rgb did not run again
    assert markers(store, "rgb") == before
    assert LabelStore.open(str(store)).done_units("canny").all()


def test_force_relabels(corpus, tmp_path):
    store = tmp_path / "labels.zarr"
    label(str(corpus), str(store), ["palette"], **FAST)
    before = markers(store, "palette")
    forced = label(str(corpus), str(store), ["palette"], force=True, **FAST)
    assert forced.units_done == 3
    after = markers(store, "palette")
    assert all(a["finished"] >= b["finished"] for a, b in zip(after, before))
    assert [a["ok"] for a in after] == [b["ok"] for b in before]


def test_teachers_load_once_per_worker(corpus, tmp_path):
    store = tmp_path / "labels.zarr"
    label(str(corpus), str(store), ["teachers_for_tests:LoadCounter"], workers=2, unit_size=2, view_size=32,
          progress=False)
    group = zarr.open_group(str(store), mode="r")
    pids, loads = group["loadcounter/pid"][:], group["loadcounter/loads"][:]
    assert 1 <= len(set(pids)) <= 2  # 10 units spread over the 2 worker processes
    assert set(loads) == {1}  # every unit saw its process's first and only load


def test_bad_files_are_recorded_and_the_job_completes(bad_corpus, tmp_path):
    store = tmp_path / "labels.zarr"
    result = label(str(bad_corpus), str(store), ["rgb", "metadata"], **FAST)
    assert result.exit_code == EXIT_SAMPLE_ERRORS and not result.units_failed

    labels = LabelStore.open(str(store))
    keys = list(labels.keys())
    ok = labels.group["rgb/ok"][:]
    bad = {k for k in keys if k.startswith("bad_")}
    assert bad == {"bad_truncated", "bad_empty", "bad_text", "bad_bomb"}
    assert {k for k, good in zip(keys, ok) if not good} == bad  # odd-but-valid files are labelled

    status = labels.status(max_errors=10)
    errors = {e["key"]: e for e in status["teachers"]["rgb"]["first_errors"]}
    assert set(errors) == bad
    assert "truncated" in errors["bad_truncated"]["error"]
    assert "empty" in errors["bad_empty"]["error"]
    assert "not an image" in errors["bad_text"]["error"]
    assert "decompression bomb" in errors["bad_bomb"]["error"]
    assert status["teachers"]["metadata"]["samples_failed"] == 4
    modes = dict(zip(keys, labels.group["metadata/mode"][:]))
    assert modes["odd_cmyk"] == "CMYK" and modes["odd_16bit"].startswith("I")


def test_a_teacher_failure_fails_only_its_sample(tmp_path):
    root = tmp_path / "c"
    write_images(root, 5)
    Image.new("RGB", (50, 40)).save(root / "dark.png")  # black: FailsOnDark raises on any batch with it
    store = tmp_path / "labels.zarr"
    result = label(str(root), str(store), ["teachers_for_tests:FailsOnDark", "rgb"], **FAST)
    assert result.exit_code == EXIT_SAMPLE_ERRORS
    status = LabelStore.open(str(store)).status()
    teacher = status["teachers"]["failsondark"]
    assert teacher["samples_ok"] == 5 and teacher["samples_failed"] == 1
    assert teacher["first_errors"][0]["key"] == "dark"
    assert teacher["first_errors"][0]["stage"] == "failsondark"
    assert status["teachers"]["rgb"]["samples_failed"] == 0  # other teachers are unaffected


def test_changed_checkpoint_is_refused_unless_forced(corpus, tmp_path, tiny_dinov2):
    from transformers import Dinov2Model

    store = tmp_path / "labels.zarr"
    label(str(corpus), str(store), [f"dinov2={tiny_dinov2}"], **FAST)
    other = tmp_path / "other-dinov2"
    Dinov2Model(Dinov2Model.from_pretrained(tiny_dinov2).config).save_pretrained(other)  # new random weights
    with pytest.raises(UserError, match="--force"):
        label(str(corpus), str(store), [f"dinov2={other}"], **FAST)
    result = label(str(corpus), str(store), [f"dinov2={other}"], force=True, **FAST)
    assert result.units_done == 3
    provenance = LabelStore.open(str(store)).provenance("dinov2")
    assert provenance["checkpoint"] == str(other)


def test_a_live_lock_refuses_a_second_run_and_a_dead_one_is_taken_over(corpus, tmp_path):
    store = tmp_path / "labels.zarr"
    label(str(corpus), str(store), ["rgb"], **FAST)
    labels = LabelStore.open(str(store), "r+")
    labels.acquire_lock()  # held by this (live) process, as a concurrent run would hold it
    with pytest.raises(UserError, match="being labelled by pid"):
        label(str(corpus), str(store), ["canny"], **FAST)
    assert not LabelStore.open(str(store)).done_units("canny").any()

    dead = {"host": os.uname().nodename, "pid": _dead_pid(), "since": "earlier", "nonce": "x"}
    lock = store / "_runs" / "_lock" / "zarr.json"  # a run killed with SIGKILL leaves its lock behind
    lock.write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"lock": dead}}))
    assert label(str(corpus), str(store), ["canny"], **FAST).units_done == 3
    assert LabelStore.open(str(store)).status()["lock"] is None


def test_store_is_plain_zarr(corpus, tmp_path):
    store = tmp_path / "labels.zarr"
    label(str(corpus), str(store), ["rgb", "palette"], **FAST)
    group = zarr.open_group(str(store), mode="r")  # no omnimill needed from here on
    assert group.attrs["format"] == "omnimill.labels/1" and group.attrs["n"] == 20
    assert group["palette/colors"].shape == (20, 7, 3) and group["palette/colors"].chunks == (8, 7, 3)
    assert group["palette"].attrs["teacher"] == "palette"
    marker = json.loads(group["_runs/palette/units"][:][0])
    assert marker["ok"] == 8 and marker["failed"] == 0 and marker["errors"] == []
    runs = sorted(group["_runs/_history"].groups())
    assert len(runs) == 1 and runs[-1][1].attrs["units_done"] == 3


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_teacher_runs_after_the_teacher_it_requires(tmp_path):
    root = tmp_path / "c"
    write_images(root, 7)
    Image.new("RGB", (50, 40)).save(root / "dark.png")
    store = tmp_path / "labels.zarr"
    twice, base = "teachers_for_tests:TwiceBrightness", "teachers_for_tests:FailsOnDark"
    with pytest.raises(UserError, match="needs failsondark"):
        label(str(root), str(store), [twice], **FAST)

    label(str(root), str(store), [twice, base], **FAST)  # given in the wrong order: the engine sorts them
    group = zarr.open_group(str(store), mode="r")
    ok = group["twice/ok"][:]
    np.testing.assert_allclose(group["twice/value"][:][ok], 2 * group["failsondark/brightness"][:][ok])
    keys = list(group["keys"][:])
    assert not ok[keys.index("dark")] and ok.sum() == 7
    errors = LabelStore.open(str(store)).status()["teachers"]["twice"]["first_errors"]
    assert errors[0]["key"] == "dark" and errors[0]["stage"] == "failsondark"

    # later, alone: the required labels are read back from the store
    label(str(root), str(store), [twice], force=True, **FAST)
    np.testing.assert_allclose(zarr.open_group(str(store), mode="r")["twice/value"][:][ok],
                               2 * group["failsondark/brightness"][:][ok])


# ---------------------------------------------------------------- the one unit job (engine/job.py)
def test_every_job_refuses_a_misspelt_setting_before_anything_is_written(tmp_path):
    from omnimill.engine.text import write_text_shards
    from omnimill.engine.tokenize import tokenize

    for run, typo in [(lambda: label(str(tmp_path), str(tmp_path / "l.zarr"), ["rgb"], wokers=1), "wokers"),
                      (lambda: tokenize(str(tmp_path), str(tmp_path / "t.zarr"), ["x"], n_crop=2), "n_crop"),
                      (lambda: write_text_shards(["a"], ["k"], str(tmp_path), str(tmp_path / "s"), shard_size=2),
                       "shard_size")]:
        with pytest.raises(UserError, match=f"unknown setting {typo}; known: .*break_lock"):
            run()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("counts, code", [
    ({}, 0),
    ({"units_pending": 1}, 3),  # waits for an earlier stage
    ({"store_failed": 2}, 3),  # samples failed (recorded)
    ({"store_missing": 1, "store_failed": 2}, 4),  # a unit without its marker outweighs failed samples
    ({"units_failed": [{"unit": 0, "error": "x"}], "units_pending": 1}, 4),
])
def test_one_exit_code_rule_for_every_job(counts, code):
    from omnimill.engine.job import JobResult

    assert JobResult("store", ["part"], **counts).exit_code == code


def test_the_run_record_says_what_the_run_did_and_with_which_settings(corpus, tmp_path):
    store = tmp_path / "labels.zarr"
    label(str(corpus), str(store), ["rgb"], **FAST)
    record = LabelStore.open(str(store)).history()[-1]
    assert record["teachers"] == ["rgb"] and record["units_done"] == record["units_planned"] == 3
    assert record["started"].endswith("Z") and record["scheduler"] == "embedded"
    assert record["options"]["unit_size"] == 8 and "storage_options" not in record["options"]


def test_the_client_counts_gpus_without_importing_torch(tmp_path):
    """torch took 12.3 s to import in the client under load; the driver's list says as much."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    code = ("import sys; from omnimill.engine import cluster; n = cluster._cuda_devices(); "
            "print(n, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == "False", out
    env["CUDA_VISIBLE_DEVICES"] = "0,1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2", "False"]


def test_an_embedded_cluster_starts_on_a_host_that_shows_gpus(tmp_path):
    """A GPU host without dask-cuda gets a plain LocalCluster (the check once named a function that was gone)."""
    import subprocess
    import sys

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    code = ("from omnimill.engine import cluster\n"
            f"with cluster.connect(workers=1, local_directory={str(tmp_path)!r}) as client:\n"
            "    print(len(client.scheduler_info()['workers']), cluster._has_dask_cuda())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "False"]


def test_a_scheduler_is_knocked_on_not_joined_before_the_run(tmp_path):
    import socket

    from omnimill.engine import cluster

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    cluster.check_reachable(f"tcp://127.0.0.1:{port}")  # something listens: reachable, no Dask handshake
    (tmp_path / "scheduler.json").write_text(json.dumps({"address": f"tcp://127.0.0.1:{port}"}))
    cluster.check_reachable(str(tmp_path / "scheduler.json"))
    listener.close()
    with pytest.raises(UserError, match="cannot reach Dask scheduler"):
        cluster.check_reachable(f"tcp://127.0.0.1:{port}")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="scheduler file"):
        cluster.check_reachable(str(tmp_path / "bad.json"))
