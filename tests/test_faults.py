"""Faults on real processes: a separately started `dask scheduler` + `dask worker` pair, a worker
killed mid-unit, and the CLI killed with SIGKILL mid-job.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import TESTS, write_images

from omnimill.engine.label import label
from omnimill.store.labels import LabelStore

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
       "HF_HUB_OFFLINE": "1", "OMNIMILL_TEST_SLOW": "0.1"}
SLOW = "teachers_for_tests:Slow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 60.0, every: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met in time")


@pytest.fixture(scope="module")
def dask_pair(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1, started as a user would."""
    scratch = tmp_path_factory.mktemp("dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=ENV, cwd=scratch,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for i in range(2):
        procs.append(subprocess.Popen([BIN / "dask", "worker", address, "--nthreads", "1", "--name", f"w{i}",
                                       "--local-directory", str(scratch / f"w{i}")], env=ENV, cwd=scratch,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)
    yield address
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def slow_corpus(root: Path, n: int = 24) -> Path:
    write_images(root, n, size=(40, 30))
    return root


def expected_means(store: str) -> np.ndarray:
    group = zarr.open_group(store, mode="r")
    return group["rgb/image"][:].reshape(group.attrs["n"], -1).mean(1)


def test_existing_scheduler_and_workers(dask_pair, tmp_path):
    corpus = slow_corpus(tmp_path / "c", 12)
    store = tmp_path / "labels.zarr"
    result = label(str(corpus), str(store), ["rgb", "canny"], scheduler=dask_pair, unit_size=4, view_size=32,
                   progress=False)
    assert result.exit_code == 0 and result.units_done == 3
    labels = LabelStore.open(str(store))
    workers = {m["worker"] for m in labels.markers("rgb")}
    assert workers and all(w.startswith("tcp://127.0.0.1:") for w in workers)
    assert labels.history()[-1]["scheduler"] == dask_pair


def test_worker_killed_mid_unit_is_redone_elsewhere(dask_pair, tmp_path):
    from distributed import Client

    corpus = slow_corpus(tmp_path / "c", 24)
    store = tmp_path / "labels.zarr"
    outcome = {}

    def run():  # 6 units of 4 samples, 0.4 s of teacher time each, on 2 workers
        outcome["result"] = label(str(corpus), str(store), [SLOW, "rgb"], scheduler=dask_pair, unit_size=4,
                                  view_size=32, progress=False, retries=3)

    thread = threading.Thread(target=run)
    thread.start()
    with Client(dask_pair, timeout="30s") as client:
        def busy_worker():
            busy = {w: keys for w, keys in client.processing().items()
                    if any(str(k).startswith("omnimill-unit") for k in keys)}
            return next(iter(busy), None)

        victim = wait_for(busy_worker)
        pid = client.run(os.getpid, workers=[victim])[victim]
        time.sleep(0.15)  # inside the unit's teacher call
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive()

    result = outcome["result"]
    assert result.exit_code == 0 and not result.units_failed
    labels = LabelStore.open(str(store))
    markers = labels.markers("slow")
    assert all(markers) and len(markers) == 6  # every unit exactly once: one marker per unit
    assert pid not in {m["pid"] for m in markers}  # what the killed worker was doing was redone elsewhere
    group = labels.group
    assert group["slow/ok"][:].all()
    np.testing.assert_allclose(group["slow/mean"][:], expected_means(str(store)), rtol=1e-5)


def test_cli_killed_with_sigkill_resumes_without_redoing_finished_units(tmp_path):
    corpus = slow_corpus(tmp_path / "c", 32)
    store = tmp_path / "labels.zarr"
    cmd = [BIN / "omnimill", "label", str(corpus), str(store), "--teacher", SLOW, "--teacher", "rgb",
           "--unit-size", "4", "--view-size", "32", "--workers", "1", "--no-progress"]
    process = subprocess.Popen(cmd, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

    def committed():
        try:
            return LabelStore.open(str(store)).done_units("slow").sum() >= 2
        except Exception:
            return False

    wait_for(committed, timeout=120)
    os.killpg(process.pid, signal.SIGKILL)  # the CLI and its embedded cluster, no chance to clean up
    process.wait()

    labels = LabelStore.open(str(store))
    before = labels.markers("slow")
    before_rgb = labels.markers("rgb")
    finished = {m["unit"]: m for m in before if m}
    assert 2 <= len(finished) < 8
    assert labels.status()["lock"]["pid"] == process.pid  # left behind by the killed run

    rerun = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    after = LabelStore.open(str(store)).markers("slow")
    assert all(after)
    for unit, marker in finished.items():
        assert after[unit] == marker  # finished units were not redone
    redone = [m for m in after if m["unit"] not in finished]
    assert len(redone) == 8 - len(finished)  # only units never committed ran again
    # a unit runs again while any of its teachers is uncommitted: slow's done units may lack rgb's marker
    rgb_done = {m["unit"] for m in before_rgb if m}
    pending_units = 8 - len(set(finished) & rgb_done)
    history = LabelStore.open(str(store)).history()
    assert history[-1]["units_done"] == pending_units, rerun.stdout + rerun.stderr
    np.testing.assert_allclose(zarr.open_group(str(store), mode="r")["slow/mean"][:],
                               expected_means(str(store)), rtol=1e-5)


def test_json_status_of_a_store_in_progress(tmp_path):
    corpus = slow_corpus(tmp_path / "c", 8)
    store = tmp_path / "labels.zarr"
    label(str(corpus), str(store), ["rgb"], workers=1, unit_size=4, view_size=32, progress=False)
    out = subprocess.run([BIN / "omnimill", "status", str(store), "--json"], env=ENV, capture_output=True,
                         text=True, check=True)
    info = json.loads(out.stdout)
    assert info["teachers"]["rgb"]["units_done"] == 2 and info["teachers"]["rgb"]["samples_ok"] == 8
