"""Engine benchmarks, measured side by side in one run on the same images and the same teachers.

1. engine (1 worker) vs the single-process loop a user would write instead (read -> decode -> every
   teacher -> keep the arrays). Goal: ratio >= 1.0, through overlap. Both start cold, so neither is
   handed the other's imports: the hand loop runs in a fresh Python process (its clock starts before
   `import torch`), the engine on a freshly started cluster whose worker imports torch and loads the
   teachers in its first unit. The engine's `label` call is timed on a started cluster (as with
   --scheduler); the cluster's own start is measured beside it (an embedded cluster adds it).
2. scale-out: 2 workers vs 1, each worker pinned to one core of its own. Goal: >= 1.7.
   (also shown: 2 workers vs 1 at the default settings, where 1 worker already gets both cores)
3. scheduling overhead per unit as a share of unit time: idle gaps between consecutive units on a
   worker while work was queued, divided by the time spent inside units. Goal: < 1%.

    python benchmarks/engine.py [--images 384] [--unit-size 32] [--teachers rgb,metadata,palette,canny,dinov2]
                                [--runs hand,engine1,engine2,pinned1,pinned2]

Where the time goes ("parts" in the JSON, seconds summed over the run): for the hand loop imports,
teacher load, read + decode and each teacher; for the engine the cluster start, the client's time outside
units (listing, store creation, submission, flush, tally, run record), the first unit's teacher load,
read + decode on the decode threads and how long the labelling thread waited for it, each teacher,
compression + writes (on the commit thread) and how long a unit waited for the previous commit.
What the engine does that the hand loop does not: it writes every label compressed to Zarr with a
commit marker per unit (resumable, verifiable); the hand loop keeps its arrays in memory.

DINOv2 is the real ViT-S/14 architecture (22M parameters) with random weights: this machine cannot
download weights, and speed does not depend on their values. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_corpus(root: Path, n: int, size=(640, 480)) -> Path:
    """n JPEGs cut from scikit-image's photos at random offsets (q=90): realistic decode cost."""
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo = Image.fromarray(photos[i % len(photos)])
        scale = rng.uniform(1.3, 2.0)
        big = photo.resize((int(size[0] * scale), int(size[1] * scale)))
        x, y = rng.integers(0, big.width - size[0]), rng.integers(0, big.height - size[1])
        big.crop((x, y, x + size[0], y + size[1])).save(root / f"img{i:05d}.jpg", quality=90)
    return root


def make_dinov2(path: Path) -> Path:
    if not (path / "config.json").exists():  # imported only here: the engine's client stays cold
        from transformers import Dinov2Config, Dinov2Model

        config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                              patch_size=14, image_size=518)
        Dinov2Model(config).save_pretrained(path)
    return path


def hand_loop(corpus: Path, specs: list[str], view_size: int, batch_size: int, warmup: int) -> dict:
    """What a user writes instead of the engine: one process, one batch after another, no overlap.
    Runs in a fresh process (`--hand-loop`), so that its imports count as the engine worker's do."""
    start = time.perf_counter()
    import torch

    from omnimill.labelers.base import Batch, TeacherSpec
    from omnimill.labelers.registry import build
    from omnimill.corpus.image import decode_view

    imported = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    teachers = [build(TeacherSpec.parse(s), view_size) for s in specs]
    for t in teachers:
        t.load("cpu", "float32")
    loaded = time.perf_counter()
    paths = sorted(corpus.glob("*.jpg"))
    kept, steady_from, steady_samples = [], None, 0
    parts = {"decode": 0.0, **{t.name: 0.0 for t in teachers}}
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        t = time.perf_counter()
        decoded = [decode_view(p.read_bytes(), view_size) for p in chunk]
        batch = Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded], [p.stem for p in chunk])
        parts["decode"] += time.perf_counter() - t
        outputs = []
        for teacher in teachers:
            t = time.perf_counter()
            outputs.append(teacher(batch))
            parts[teacher.name] += time.perf_counter() - t
        kept.append(outputs)
        if steady_from is None and i + len(chunk) >= warmup:
            steady_from = time.perf_counter()  # like the engine's first unit: load + warm-up excluded
        elif steady_from is not None:
            steady_samples += len(chunk)
    end = time.perf_counter()
    return {"seconds": end - start, "steady_rate": steady_samples / (end - steady_from),
            "parts": {"imports": imported - start, "teacher load": loaded - imported, **parts}}


def hand_loop_cold(corpus: Path, specs: list[str], view_size: int, batch_size: int, warmup: int) -> dict:
    """The hand loop in a fresh Python process; `seconds` is its wall time seen from here (interpreter start
    included), `parts` its own split."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, __file__, "--hand-loop", json.dumps([str(corpus), specs, view_size,
                                                                               batch_size, warmup])],
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode:
        raise RuntimeError(f"the hand loop failed:\n{run.stderr}")
    row = json.loads(run.stdout.strip().splitlines()[-1])
    row["parts"]["interpreter start and exit"] = seconds - row["seconds"]
    return {**row, "seconds": seconds}


def engine(corpus: Path, store: Path, specs: list[str], view_size: int, batch_size: int, unit_size: int,
           workers: int, pin: bool) -> tuple[dict, list[dict]]:
    """Wall time of a whole `label` call (model load included), where its time went, and its unit stats.

    The cluster is started here and joined with --scheduler, so `pin` can give each worker one core
    (torch and decode threads of a worker then share it); its start is timed apart.
    """
    from distributed import Client, LocalCluster

    from omnimill.engine.label import LabelOptions, label

    shutil.rmtree(store, ignore_errors=True)
    options = LabelOptions(batch_size=batch_size, unit_size=unit_size, view_size=view_size, progress=False,
                           device="cpu", dtype="float32")
    if pin:
        options.torch_threads, options.decode_threads = 1, 1
    t = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0",
                           local_directory=str(store.parent / "dask"))
    try:
        with Client(cluster) as client:
            cluster_start = time.perf_counter() - t
            if pin:
                for core, address in enumerate(sorted(client.scheduler_info(n_workers=-1)["workers"])):
                    client.run(os.sched_setaffinity, 0, {core % (os.cpu_count() or 1)}, workers=[address])
            options.scheduler = cluster.scheduler_address
            start, wall = time.perf_counter(), time.time()
            result = label(str(corpus), str(store), specs, options)
            seconds, ended = time.perf_counter() - start, time.time()
    finally:
        try:
            cluster.close(timeout=60)
        except TimeoutError:  # a worker slow to exit on a loaded machine: the run itself is complete
            print("  (the cluster took over 60 s to close)", flush=True)
    assert not result.units_failed and result.samples_failed == 0, result
    stats = result.unit_stats
    return {"seconds": seconds, "steady_rate": steady_rate(stats),
            "parts": engine_parts(stats, cluster_start, (wall, ended))}, stats


def engine_parts(stats: list[dict], cluster_start: float, call: tuple[float, float]) -> dict:
    """Where an engine run's time went, in seconds summed over its units (see the module docstring).
    "client outside units": the `label` call's wall time while no unit ran on any worker."""
    busy = sorted((s["started"], s["ended"]) for s in stats)
    covered, reach = 0.0, call[0]
    for s, e in busy:  # union of the units' spans
        covered += max(0.0, e - max(s, reach))
        reach = max(reach, e)
    parts = {"cluster start (not in seconds)": cluster_start, "client outside units": call[1] - call[0] - covered,
             "teacher load": sum(s.get("load_seconds", 0.0) for s in stats),
             "read + decode (decode threads)": sum(s.get("decode_seconds", 0.0) for s in stats),
             "waiting for decode": sum(s["decode_wait"] for s in stats)}
    for s in stats:
        for name, value in s["teacher_seconds"].items():
            parts[name] = parts.get(name, 0.0) + value
    parts["compression + writes (commit thread)"] = sum(s.get("commit_seconds", 0.0) for s in stats)
    parts["waiting for the previous commit"] = sum(s["write_wait"] for s in stats)
    return parts


def steady_rate(stats: list[dict]) -> float:
    """Samples/s once every worker has finished its first unit (which carries imports and model load)."""
    first_end: dict[str, float] = {}
    for st in sorted(stats, key=lambda st: st["started"]):
        first_end.setdefault(st["worker"], st["ended"])
    t0 = max(first_end.values())
    later = [st for st in stats if st["started"] >= t0]
    if not later:
        return float("nan")  # too few units to see a steady state
    return sum(st["n"] for st in later) / (max(st["ended"] for st in stats) - t0)


def scheduling_overhead(stats: list[dict]) -> float:
    """Idle time between consecutive units on each worker / time inside units."""
    by_worker: dict[str, list] = {}
    for s in stats:
        by_worker.setdefault(s["worker"], []).append((s["started"], s["ended"]))
    busy = sum(e - s for runs in by_worker.values() for s, e in runs)
    gaps = 0.0
    for runs in by_worker.values():
        runs.sort()
        gaps += sum(max(0.0, nxt[0] - prev[1]) for prev, nxt in zip(runs, runs[1:]))
    return gaps / busy


RUNS = {  # --runs name: (row, workers, pinned)
    "engine1": ("engine, 1 worker (default)", 1, False),
    "engine2": ("engine, 2 workers (default)", 2, False),
    "pinned1": ("engine, 1 worker pinned to 1 core", 1, True),
    "pinned2": ("engine, 2 workers pinned to 1 core each", 2, True),
}
HAND = "hand loop (1 process, all cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--unit-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--view-size", type=int, default=384)
    parser.add_argument("--teachers", default="rgb,metadata,palette,canny,dinov2")
    parser.add_argument("--runs", default="hand," + ",".join(RUNS), help="which runs, in this order")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "omnimill-bench"))
    parser.add_argument("--out", default="benchmarks/results/engine.json")
    parser.add_argument("--hand-loop", help=argparse.SUPPRESS)  # internal: the cold hand loop's process
    args = parser.parse_args()
    if args.hand_loop:
        corpus, specs, view_size, batch_size, warmup = json.loads(args.hand_loop)
        print(json.dumps(hand_loop(Path(corpus), specs, view_size, batch_size, warmup)))
        return

    work = Path(args.workdir)
    corpus = work / f"corpus-{args.images}"
    if not corpus.exists():
        make_corpus(corpus, args.images)
    specs = []
    for name in args.teachers.split(","):
        specs.append(f"dinov2={make_dinov2(work / 'dinov2-vits14-random')}" if name == "dinov2" else name)
    n = args.images
    print(f"{n} JPEGs 640x480, view {args.view_size}, teachers {args.teachers}, unit {args.unit_size}, "
          f"batch {args.batch_size}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)

    rows, stats, loads = {}, {}, {}
    for run in args.runs.split(","):
        if run == "hand":
            name = HAND
            rows[name] = hand_loop_cold(corpus, specs, args.view_size, args.batch_size, args.unit_size)
        else:
            name, workers, pin = RUNS[run]
            rows[name], stats[name] = engine(corpus, work / "labels.zarr", specs, args.view_size, args.batch_size,
                                             args.unit_size, workers, pin)
        loads[name] = os.getloadavg()[0]
        print(f"  {name}: {rows[name]['seconds']:.1f} s (load {loads[name]:.1f})", flush=True)

    print(f"\n{'run':42s} {'seconds':>8s} {'end-to-end/s':>13s} {'steady/s':>9s}")
    for name, row in rows.items():
        print(f"{name:42s} {row['seconds']:8.1f} {n / row['seconds']:13.1f} {row['steady_rate']:9.1f}")
    for name, row in rows.items():
        print(f"\n{name}: where the time went (s)")
        for part, value in row["parts"].items():
            print(f"  {part:42s} {value:7.2f}")

    def ratio(a: str, b: str) -> dict:
        return {"end_to_end": rows[b]["seconds"] / rows[a]["seconds"],
                "steady": rows[a]["steady_rate"] / rows[b]["steady_rate"]}

    one, two = RUNS["engine1"][0], RUNS["engine2"][0]
    pinned1, pinned2 = RUNS["pinned1"][0], RUNS["pinned2"][0]
    ratios = {}
    if HAND in rows and one in rows:
        ratios["engine 1 worker / hand loop (goal >= 1.0)"] = ratio(one, HAND)
        with_start = rows[one]["seconds"] + rows[one]["parts"]["cluster start (not in seconds)"]
        ratios["engine 1 worker, cluster start included / hand loop"] = {
            "end_to_end": rows[HAND]["seconds"] / with_start, "steady": ratios[next(iter(ratios))]["steady"]}
    if pinned1 in rows and pinned2 in rows:
        ratios["2 workers / 1 worker, 1 core each (goal >= 1.7)"] = ratio(pinned2, pinned1)
    if one in rows and two in rows:
        ratios["2 workers / 1 worker, default settings"] = ratio(two, one)
    overheads = {name: scheduling_overhead(s) for name, s in stats.items()}
    print(f"\n{'ratio':52s} {'end-to-end':>10s} {'steady':>7s}")
    for name, value in ratios.items():
        print(f"{name:52s} {value['end_to_end']:9.2f}x {value['steady']:6.2f}x")
    print()
    for name, value in overheads.items():
        print(f"scheduling overhead per unit, {name:40s} {100 * value:5.2f}% (goal < 1%)")
    if one in stats:
        unit_seconds = np.median([s["seconds"] for s in stats[one]])
        print(f"median unit time (1 worker): {unit_seconds:.2f} s for {args.unit_size} samples")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "seconds": rows, "ratios": ratios,
                               "scheduling_overhead": overheads, "load_average": loads, "python": sys.version},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
