"""What trust costs: `verify`, `status`, the lock and the run record on label stores of growing size, and
what keeping empty chunks (so that a deleted chunk is found) costs in files and write time.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/trust.py            # make bench

Stores are written through the real LabelStore API (no cluster, no teacher: the point is the store's own
costs): one teacher with a 64x64x3 uint8 field of noise (incompressible, like photo pixels after zstd
gains little) and a 64x64 bool field that is all zeros (a sparse edge map), units of 128 samples.
Writes benchmarks/results/trust.json; docs/BENCHMARKS.md's table is rendered from it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from omnimill.labelers.base import Field
from omnimill.corpus.listing import CorpusIndex
from omnimill.store.labels import LabelStore

RESULTS = Path(__file__).resolve().parent / "results" / "trust.json"
UNIT = 128
FIELDS = [Field("image", (64, 64, 3), "uint8"), Field("edges", (64, 64), "bool")]


def make_store(path: Path, n: int) -> LabelStore:
    keys = [f"k{i:07d}" for i in range(n)]
    index = CorpusIndex(uri=str(path.parent), kind="folder", keys=keys, sources=keys, offsets=[-1] * n,
                        sizes=[-1] * n, captions=[""] * n)
    store = LabelStore.create(str(path), index, 64, UNIT)
    fields = {f.name: {"shape": list(f.shape), "dtype": f.dtype} for f in FIELDS}
    store.prepare_teacher("noise", FIELDS, {"teacher": "noise", "fields": fields, "config": {}})
    rng = np.random.default_rng(0)
    for u in range(store.n_units):
        unit = store.unit(u)
        m = unit.stop - unit.start
        outputs = {"image": rng.integers(0, 256, (m, 64, 64, 3), np.uint8), "edges": np.zeros((m, 64, 64), bool)}
        store.write_unit("noise", unit, outputs, np.ones(m, bool), {"unit": u, "ok": m, "failed": 0, "errors": []})
    return store


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def files_and_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def empty_chunks(root: Path, n: int) -> dict:
    """An all-zero field written with and without keeping empty chunks: files and seconds."""
    out = {}
    for keep in (True, False):
        path = root / f"empty-{keep}.zarr"
        array = zarr.create_array(str(path), shape=(n, 64, 64), chunks=(UNIT, 64, 64), dtype=bool, fill_value=False,
                                  config={"write_empty_chunks": keep})
        t = time.perf_counter()
        for start in range(0, n, UNIT):
            array[start:start + UNIT] = np.zeros((min(UNIT, n - start), 64, 64), bool)
        out["kept" if keep else "skipped"] = {"seconds": time.perf_counter() - t, "files": files_and_bytes(path)[0]}
    return out


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="omnimill-trust-"))
    rows = []
    try:
        for n in (1024, 8192):
            path = root / f"labels-{n}.zarr"
            t = time.perf_counter()
            store = make_store(path, n)
            write = time.perf_counter() - t
            files, size = files_and_bytes(path)
            verify = timed(lambda: store.verify(), repeat=2)
            assert store.verify() == []
            status = timed(lambda: LabelStore.open(str(path)).status())
            lock = timed(lambda: store.release_lock(store.acquire_lock()))
            record = timed(lambda: store.append_run({"bench": True}))
            rows.append({"samples": n, "units": store.n_units, "files": files, "mb": size / 1e6,
                         "write_seconds": write, "verify_seconds": verify, "verify_mb_per_s": size / 1e6 / verify,
                         "verify_ms_per_unit": 1e3 * verify / store.n_units, "status_seconds": status,
                         "lock_ms": 1e3 * lock, "run_record_ms": 1e3 * record})
            print(f"{n:6d} samples: verify {verify:.2f} s ({size / 1e6 / verify:.0f} MB/s, "
                  f"{1e3 * verify / store.n_units:.1f} ms/unit), status {status:.3f} s, lock+unlock {1e3 * lock:.1f} ms, "
                  f"run record {1e3 * record:.1f} ms", flush=True)
        empty = empty_chunks(root, 8192)
        print(f"all-zero field, 64 units: kept {empty['kept']['files']} files in {empty['kept']['seconds']:.3f} s, "
              f"skipped {empty['skipped']['files']} files in {empty['skipped']['seconds']:.3f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                                               "zarr": zarr.__version__, "load": os.getloadavg()[0]},
                                   "unit_size": UNIT, "rows": rows, "empty_chunks": empty}, indent=1))
    scale = rows[-1]["verify_ms_per_unit"] / rows[0]["verify_ms_per_unit"]
    print(f"verify per unit at {rows[-1]['samples']} / at {rows[0]['samples']} samples: {scale:.2f}x; wrote {RESULTS}")


if __name__ == "__main__":
    main()
