"""`omnimill tokenizer train` on a CPU: the old defaults against the defaults chosen for a CPU, side by side.

    python benchmarks/tokenizer_cpu.py [--store S | --make-store DIR] [--samples 256] [--old-steps 3] [--new-steps 12]

Each row trains a spatial tokenizer of rgb/image (384-px views) in its own child process, on the CPU:

  old defaults       input 256, width 64, batch 32 (what `tokenizer train` used on every device; now CUDA's),
                     given as explicit options and cut to --old-steps steps so that the run ends
  cpu defaults       nothing given but the step cap (--new-steps): what a CPU box gets now
  cpu, memory-mapped the same with memory_budget 0: the training data memory-mapped, not held in memory

s/step is the run's own ETA measurement (train_log.json `eta`: the steps after the first, timed); the projected
total is s/step x the steps the defaults would run (2000 old, 400 cpu). Peak RSS is the child's ru_maxrss.
Other processes share the cores: the load before and after is recorded, and ratios in one run are the figure
to read. Writes benchmarks/results/tokenizer_cpu.json; `table(results)` gives its markdown lines.

--make-store DIR labels --samples generated photos (smooth colour fields with shapes; 512 x 384) with the rgb
teacher into DIR/labels.zarr at the default 384-px view, so a fresh checkout can run it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "tokenizer_cpu.json"
FIELD = "rgb/image"
OLD = {"input_size": 256, "width": 64, "batch_size": 32}  # and 2000 steps: the defaults before device defaults


def rows(old_steps: int, new_steps: int) -> list[tuple[str, dict, int]]:
    """(name, explicit options, steps the defaults would run) per row."""
    from omnimill.tokenize.train import DEVICE_DEFAULTS

    return [("old defaults", {**OLD, "steps": old_steps}, 2000),
            ("cpu defaults", {"steps": new_steps}, DEVICE_DEFAULTS["cpu"]["steps"]),
            ("cpu defaults, data memory-mapped", {"steps": new_steps, "memory_budget": 0},
             DEVICE_DEFAULTS["cpu"]["steps"])]


def measure(store: str, options: dict) -> dict:
    """Runs in a child process: one capped training run on the CPU, its ETA figures and this process's peak RSS."""
    from omnimill.tokenize.train import train_tokenizer

    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = train_tokenizer(store, FIELD, "spatial", Path(tmp) / "tok", device="cpu", progress=False, **options)
        seconds = time.perf_counter() - start
        log = json.loads((out / "train_log.json").read_text())
        chosen = json.loads((out / "config.json").read_text())["options"]
    return {"seconds": round(seconds, 1), "seconds_per_step": log["eta"]["seconds_per_step"],
            "input_size": chosen["input_size"], "width": chosen["width"], "defaults": chosen["defaults"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_after_imports_mb": round(imported)}


def make_store(folder: Path, n: int) -> str:
    """n generated 512 x 384 photos labelled with rgb at the default view: what the benchmark trains on."""
    import numpy as np
    from PIL import Image, ImageDraw

    from omnimill.engine.label import label

    corpus = folder / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:384, 0:512] / 512
    for i in range(n):
        field = np.stack([np.sin(x * rng.uniform(2, 9) + y * rng.uniform(2, 9) + rng.uniform(0, 6))
                          for _ in range(3)], -1)
        image = Image.fromarray(((field + 1) * 127.5).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = rng.integers(0, 400), rng.integers(0, 300)
            draw.ellipse([x0, y0, x0 + rng.integers(20, 110), y0 + rng.integers(20, 80)],
                         fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(corpus / f"photo{i:04d}.jpg", quality=90)
    store = str(folder / "labels.zarr")
    label(str(corpus), store, ["rgb"], workers=1, progress=False)
    return store


def table(results: dict) -> list[str]:
    """Markdown lines: one row per configuration, then the ratios and how the figures were taken."""
    lines = ["| run (spatial rgb/image, CPU) | input | width | batch | s/step | steps by default | projected total "
             "| peak RSS MB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['name']} | {r['input_size']} | {r['width']} | {r['batch_size']} | "
                     f"{r['seconds_per_step']:.2f} | {r['default_steps']} | {r['projected_minutes']:.1f} min | "
                     f"{r['peak_rss_mb']} |")
    old, new = results["rows"][0], results["rows"][1]
    lines += ["", f"Old / cpu defaults: {old['seconds_per_step'] / new['seconds_per_step']:.0f}× the time a step, "
                  f"{old['projected_minutes'] / new['projected_minutes']:.0f}× the projected run, "
                  f"{old['peak_rss_mb'] / new['peak_rss_mb']:.1f}× the peak RSS. {results['samples']} samples of "
                  f"384-px views; {results['machine']['cores']} cores, load {results['machine']['load_before']:.1f} "
                  f"before and {results['machine']['load_after']:.1f} after (other processes share the cores). "
                  f"`{results['command']}`"]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--store", help="a label store with rgb/image")
    where.add_argument("--make-store", type=Path, help="label --samples generated photos into this folder first")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--old-steps", type=int, default=3, help="steps of the old-defaults run (>= 3: 1 + timed)")
    parser.add_argument("--new-steps", type=int, default=12)
    parser.add_argument("--child", nargs=2, metavar=("STORE", "OPTIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], json.loads(args.child[1]))))
        return 0
    store = args.store or make_store(args.make_store or Path(tempfile.mkdtemp(prefix="tokenizer-cpu-")), args.samples)
    results = {"command": "python benchmarks/tokenizer_cpu.py " + " ".join(sys.argv[1:]), "samples": args.samples,
               "store": store, "machine": {"cores": os.cpu_count(), "load_before": os.getloadavg()[0]}, "rows": []}
    for name, options, default_steps in rows(args.old_steps, args.new_steps):
        out = subprocess.run([sys.executable, __file__, "--child", store, json.dumps(options)], check=True,
                             capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r.update(name=name, batch_size=options.get("batch_size") or r["defaults"]["set"]["batch_size"],
                 default_steps=default_steps,
                 projected_minutes=round(r["seconds_per_step"] * default_steps / 60, 1))
        results["rows"].append(r)
        print(f"{name}: {r['seconds_per_step']:.2f} s/step, projected {r['projected_minutes']:.1f} min, "
              f"peak RSS {r['peak_rss_mb']} MB", flush=True)
    results["machine"]["load_after"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
