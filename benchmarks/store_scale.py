"""Store costs as the corpus grows: the previous layout (one object per unit in every array, status and
key lookups reading every marker and every key) against this one (store/layout.py: the index sharded;
store/keyindex.py: a sorted key index; store/summary.py: a unit summary), side by side in one run.

For each size (default 100k and 1M samples, unit_size 128) and each layout, on local disk:
- create: the label store for a synthetic index (keys like `dir17/img_000123456`), seconds;
- write per unit: one teacher with a small field (4 float32 per sample) plus `ok`, written unit by unit
  through `LabelStore.write_unit` with its marker, as a worker does (ms per unit);
- status before any summary (every marker read: the previous cost, also in the new layout until the
  client summarizes); summarize (new layout only): the client bringing the summary up to date after the run;
- objects: files in the store; open: `LabelStore.open`; status: `LabelStore.status()`;
- lookup: `index_of` for 50 random keys (3 in the previous layout, where each reads every key), ms each;
  the first lookup opens the key index.
Open and status times are the fastest of 3 calls (the machine is shared with other work).

The previous layout is made by this same code with `layout.once` swapped for `layout.per_unit` and no key
index written: exactly what the previous `create` wrote. It has no summary, so its status reads every
marker, as before.

    nice python benchmarks/store_scale.py [--sizes 100000,1000000] [--unit-size 128]

Prints a table and writes benchmarks/results/store_scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnimill.corpus.listing import CorpusIndex
from omnimill.store import layout
from omnimill.store.labels import LabelStore

RESULTS = Path(__file__).resolve().parent / "results" / "store_scale.json"
LOOKUPS = 50


@dataclass
class SmallField:  # what prepare_teacher reads of a teacher's field
    name: str
    shape: tuple
    dtype: str


@contextlib.contextmanager
def previous_layout():
    """Create stores as the previous omnimill did: every array one chunk per unit, no key index."""
    once = layout.once
    layout.once = layout.per_unit  # labels.py reads it as layout.once at each create
    LabelStore.index_keys = staticmethod(lambda group, keys, unit_size: None)
    try:
        yield
    finally:
        layout.once = once
        del LabelStore.index_keys  # UnitStore's again


def make_index(n: int) -> CorpusIndex:
    keys = [f"dir{i % 97}/img_{i:09d}" for i in range(n)]
    return CorpusIndex(uri="/bench/corpus", kind="folder", keys=keys, sources=[f"/bench/corpus/{k}.jpg" for k in keys],
                       offsets=[-1] * n, sizes=[50_000] * n, captions=[""] * n, extras=[{}] * n)


def best(call, repeats: int = 3) -> float:
    """The fastest of a few calls, in seconds: the machine is shared, and the other calls only wait more."""
    times = []
    for _ in range(repeats):
        clock = time.perf_counter()
        call()
        times.append(time.perf_counter() - clock)
    return min(times)


def objects(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def measure(uri: str, index: CorpusIndex, unit_size: int, new: bool) -> dict:
    row: dict = {}
    clock = time.perf_counter()
    with contextlib.nullcontext() if new else previous_layout():
        store = LabelStore.create(uri, index, view_size=32, unit_size=unit_size)
    row["create_s"] = time.perf_counter() - clock
    store = LabelStore.open(uri, "r+")
    store.prepare_teacher("small", [SmallField("value", (4,), "float32")],
                          {"fields": {"value": {"shape": [4], "dtype": "float32"}}, "config": {}})
    rng = np.random.default_rng(0)
    clock = time.perf_counter()
    for u in range(store.n_units):
        unit = store.unit(u)
        rows = unit.stop - unit.start
        ok = np.ones(rows, bool)
        store.write_unit("small", unit, {"value": rng.random((rows, 4), np.float32)}, ok,
                         {"unit": u, "start": unit.start, "stop": unit.stop, "ok": rows, "failed": 0, "errors": []})
    row["write_ms_per_unit"] = 1000 * (time.perf_counter() - clock) / store.n_units
    row["status_unsummarized_s"] = best(lambda: LabelStore.open(uri).status())  # every marker read, as before
    if new:
        clock = time.perf_counter()
        store.summarize()
        row["summarize_s"] = time.perf_counter() - clock
    row["objects"] = objects(Path(uri))
    row["objects_index"] = sum(objects(Path(uri) / c) for c in ("keys", "source", "offset", "size", "caption"))
    row["open_s"] = best(lambda: LabelStore.open(uri))
    store = LabelStore.open(uri)
    row["status_s"] = best(store.status)
    status = store.status()
    assert status["teachers"]["small"]["units_done"] == store.n_units
    picks = rng.integers(0, store.n, LOOKUPS if new else 3)  # each previous lookup reads every key
    clock = time.perf_counter()
    found = [store.index_of(index.keys[i]) for i in picks]
    row["lookup_ms"] = 1000 * (time.perf_counter() - clock) / len(picks)
    assert found == [int(i) for i in picks]
    row["bytes"] = sum(f.stat().st_size for f in Path(uri).rglob("*") if f.is_file())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--unit-size", type=int, default=128)
    args = parser.parse_args()
    report = {"args": vars(args), "load_before": os.getloadavg(), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            index = make_index(n)
            report["sizes"][n] = {}
            for name, new in (("previous", False), ("sharded", True)):
                uri = os.path.join(tmp, f"{name}-{n}.zarr")
                report["sizes"][n][name] = measure(uri, index, args.unit_size, new)
                shutil.rmtree(uri)
                print(n, name, json.dumps({k: round(v, 4) for k, v in report["sizes"][n][name].items()}), flush=True)
    report["load_after"] = os.getloadavg()
    report["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"{'samples':>9} {'layout':>9} {'objects':>8} {'index obj':>9} {'create s':>9} {'write ms/unit':>13} "
          f"{'open s':>7} {'status s':>8} {'lookup ms':>9}")
    for n, layouts in report["sizes"].items():
        for name, r in layouts.items():
            print(f"{n:>9} {name:>9} {r['objects']:>8} {r['objects_index']:>9} {r['create_s']:>9.2f} "
                  f"{r['write_ms_per_unit']:>13.2f} {r['open_s']:>7.3f} {r['status_s']:>8.3f} {r['lookup_ms']:>9.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
