"""Cost growth: the whole pipeline at 1k, 10k, 100k (and 1M behind a flag) small samples, per sample.

Per size, one fresh subprocess (so its peak RSS is this size's alone) runs:

    label (rgb, metadata, palette at --view-size 16, 1 worker) -> tokenize (palette, a sequence tokenizer
    trained once on the first size and reused) -> export WebDataset shards -> load them once (TokenLoader)

and records: seconds per sample of each stage; the client's peak RSS and the workers' peak RSS (sum over the
worker processes, psutil polled every 0.1 s in a thread: each stage's own peak); `omnimill status` (the CLI in
a subprocess, Python start-up included) and `LabelStore.open(...).status()` in process; store bytes and objects
(files) of the label store, token store and shard set; the time to open the label store and of one key ->
index lookup (`LabelStore.index_of`, a key in the middle).

The corpus is WebDataset tars of tiny JPEGs (32x24 px, 1,000 per tar), made once under --root and reused:
size N lists the first N/1000 tars by brace range. The point is the engine's costs, not the teachers'.

    nice .venv/bin/python benchmarks/scale.py [--sizes 1000,10000,100000] [--with-1m] [--root DIR]
    nice .venv/bin/python benchmarks/scale.py --dry-run     # one size of 200 samples (tests)

Prints a row per size and the ratios to the smallest size (goal: per-sample time within 1.2x; `status` under
a second at 1M: where 1M is not run, it is extrapolated linearly from the two largest sizes, and said so).
Writes benchmarks/results/scale.json; `table(results)` gives the markdown lines for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
TEACHERS = ["rgb", "metadata", "palette"]
VIEW_SIZE = 16
UNIT_SIZE = 128
PER_TAR = 1000
STAGES = ("label", "tokenize", "export", "load")
GOAL_RATIO = 1.2


# ---------------------------------------------------------------- corpus
def make_corpus(root: Path, n: int) -> str:
    """The corpus URI for `n` samples: the first n / per_tar tars of a cached set (a tar of `n` when n < 1000)."""
    per_tar = min(PER_TAR, n)
    if n % per_tar:
        raise SystemExit(f"--sizes: {n} is not a multiple of {per_tar}")
    folder = root / f"corpus-{per_tar}"
    folder.mkdir(parents=True, exist_ok=True)
    jpegs = _jpegs(16)
    for t in range(n // per_tar):
        path = folder / f"shard-{t:06d}.tar"
        if path.exists():
            continue
        with tarfile.open(f"{path}.partial", "w") as tar:
            for i in range(per_tar):
                data = jpegs[(t * per_tar + i) % len(jpegs)]
                info = tarfile.TarInfo(f"s{t:06d}_{i:04d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        os.replace(f"{path}.partial", path)
    return str(folder / f"shard-{{000000..{n // per_tar - 1:06d}}}.tar")


def _jpegs(count: int) -> list[bytes]:
    """A few different tiny JPEGs (random colours), so the palette teacher does not see one picture only."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=80)
        out.append(buf.getvalue())
    return out


# ---------------------------------------------------------------- measuring
class Peaks:
    """Polls this process's RSS and the sum of its descendants' (the Dask workers) every `period` seconds;
    `take()` returns the peaks since the last take (bytes)."""

    def __init__(self, period: float = 0.1):
        import psutil

        self.me, self.period = psutil.Process(), period
        self.client = self.workers = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.wait(self.period):
            self.sample()

    def sample(self) -> None:
        import psutil

        with self.lock:
            self.client = max(self.client, self.me.memory_info().rss)
            total = 0
            for child in self.me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    continue  # a process that ended between the listing and the read
            self.workers = max(self.workers, total)

    def take(self) -> dict:
        """The peaks since the last take, this moment included (a stage shorter than `period` has one sample)."""
        self.sample()
        with self.lock:
            peaks = {"client_rss": self.client, "worker_rss": self.workers}
            self.client = self.workers = 0
        return peaks

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def files_and_bytes(path: str) -> tuple[int, int]:
    count = size = 0
    for folder, _, names in os.walk(path):
        for name in names:
            count += 1
            size += os.path.getsize(os.path.join(folder, name))
    return count, size


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ---------------------------------------------------------------- one size (runs in its own process)
def run_size(n: int, root: Path) -> dict:
    from omnimill.engine.label import label
    from omnimill.engine.tokenize import tokenize
    from omnimill.shards.loader import TokenDataset, TokenLoader
    from omnimill.shards.wds import export_wds
    from omnimill.store.labels import LabelStore

    corpus = make_corpus(root, n)
    work = root / f"run-{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    labels, tokens, shards = str(work / "labels.zarr"), str(work / "tokens.zarr"), str(work / "shards")
    peaks = Peaks()
    row: dict = {"n": n, "stages": {}}

    def stage(name: str, fn) -> None:
        peaks.take()  # forget what came before this stage
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
        row["stages"][name] = {"seconds": seconds, "per_sample_us": seconds / n * 1e6, **peaks.take()}
        if result is not None:  # a unit job: the time its units took on the worker, and the rest (the client's)
            inside = sum(s["seconds"] for s in result.stats.values())
            row["stages"][name].update(units_seconds=inside, outside_seconds=seconds - inside)

    def labelled():
        result = label(corpus, labels, TEACHERS, workers=1, unit_size=UNIT_SIZE, view_size=VIEW_SIZE, progress=False)
        assert result.exit_code == 0 and result.samples == n, (result.exit_code, result.samples)
        return result

    stage("label", labelled)
    tokenizer = palette_tokenizer(root, labels)

    def tokenized():
        result = tokenize(labels, tokens, [tokenizer], workers=1, progress=False)
        assert result.exit_code == 0, result.exit_code
        return result

    stage("tokenize", tokenized)
    stage("export", lambda: export_wds(tokens, shards, samples_per_shard=PER_TAR) and None)

    def loaded():
        seen = sum(len(b["keys"]) if "keys" in b else next(iter(b["tokens"].values())).shape[0]
                   for b in TokenLoader(TokenDataset(shards), batch_size=256, epochs=1, crops="first"))
        assert seen == n, seen

    stage("load", loaded)
    peaks.close()

    row["client_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    row["worker_peak_rss"] = max(s["worker_rss"] for s in row["stages"].values())
    row["open_seconds"] = best_of(lambda: LabelStore.open(labels))
    store = LabelStore.open(labels)
    key = str(store.read("keys", slice(n // 2, n // 2 + 1))[0])
    row["lookup_seconds"] = best_of(lambda: store.index_of(key))
    row["status_seconds"] = best_of(lambda: LabelStore.open(labels).status())
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "omnimill", "status", labels, "--json"], check=True, capture_output=True)
    row["cli_status_seconds"] = time.perf_counter() - t
    row["stores"] = {}
    for name, path in (("labels", labels), ("tokens", tokens), ("shards", shards)):
        objects, size = files_and_bytes(path)
        row["stores"][name] = {"objects": objects, "bytes": size}
    shutil.rmtree(work, ignore_errors=True)
    return row


def palette_tokenizer(root: Path, labels: str) -> str:
    """The palette sequence tokenizer, trained once (on the first store measured) and reused by every size."""
    from omnimill.tokenize.train import train_tokenizer

    out = root / "tokenizer-palette"
    if not (out / "config.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        train_tokenizer(labels, "palette", "sequence", out, progress=False, holdout=0.25)
    return str(out)


# ---------------------------------------------------------------- report
def ratios(rows: list[dict]) -> dict:
    """Per-sample time of each stage at each size / at the smallest size."""
    base = rows[0]["stages"]
    return {str(r["n"]): {s: r["stages"][s]["per_sample_us"] / base[s]["per_sample_us"] for s in STAGES}
            for r in rows}


def marginal(rows: list[dict]) -> dict:
    """Per-sample cost between consecutive sizes, (t_b - t_a) / (n_b - n_a) in µs: fixed costs (cluster start,
    imports) cancel out, so a slope that rises from one pair of sizes to the next is cost that grows with N."""
    return {f"{a['n']}-{b['n']}": {s: (b["stages"][s]["seconds"] - a["stages"][s]["seconds"]) / (b["n"] - a["n"]) * 1e6
                                   for s in STAGES} for a, b in zip(rows, rows[1:])}


def status_at_1m(rows: list[dict]) -> dict:
    """`status` at 1M samples: measured if run, else linear from the two largest sizes (said so); a slope
    below zero (noise on a loaded machine) is taken as flat: never less than the largest size's time."""
    for r in rows:
        if r["n"] == 1_000_000:
            return {"seconds": r["status_seconds"], "cli_seconds": r["cli_status_seconds"], "extrapolated": False}
    if len(rows) < 2:
        return {"seconds": None, "cli_seconds": None, "extrapolated": True}
    a, b = rows[-2], rows[-1]
    out = {"extrapolated": True, "from": [a["n"], b["n"]]}
    for name, key in (("seconds", "status_seconds"), ("cli_seconds", "cli_status_seconds")):
        slope = (b[key] - a[key]) / (b["n"] - a["n"])
        out[name] = b[key] + max(0.0, slope) * (1_000_000 - b["n"])
    return out


def _mb(x: float) -> str:
    return f"{x / 2 ** 20:.0f}"


def table(results: dict) -> list[str]:
    """Markdown lines for docs/BENCHMARKS.md: a row per size, then the ratios to the smallest size."""
    rows = results["rows"]
    lines = ["| samples | label µs/sample | tokenize | export | load | client peak MB | worker peak MB | status s "
             "(CLI s) | open ms | key→index ms | label store objects / MB | token store objects / MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s, st = r["stages"], r["stores"]
        lines.append(
            f"| {r['n']:,} | {s['label']['per_sample_us']:.0f} | {s['tokenize']['per_sample_us']:.0f} | "
            f"{s['export']['per_sample_us']:.0f} | {s['load']['per_sample_us']:.0f} | {_mb(r['client_peak_rss'])} | "
            f"{_mb(r['worker_peak_rss'])} | {r['status_seconds']:.2f} ({r['cli_status_seconds']:.2f}) | "
            f"{r['open_seconds'] * 1e3:.1f} | {r['lookup_seconds'] * 1e3:.1f} | "
            f"{st['labels']['objects']:,} / {_mb(st['labels']['bytes'])} | "
            f"{st['tokens']['objects']:,} / {_mb(st['tokens']['bytes'])} |")
    lines += ["", f"Per-sample time / the {rows[0]['n']:,}-sample run's (goal ≤ {GOAL_RATIO}):", "",
              "| samples | " + " | ".join(STAGES) + " |", "|---:|" + "---:|" * len(STAGES)]
    for n, r in results["ratios"].items():
        lines.append(f"| {int(n):,} | " + " | ".join(f"{r[s]:.2f}" for s in STAGES) + " |")
    if results.get("marginal_us"):
        lines += ["", "Marginal µs per sample between sizes (fixed start-up cancels; a rising slope is growth):", "",
                  "| sizes | " + " | ".join(STAGES) + " |", "|---|" + "---:|" * len(STAGES)]
        for pair, r in results["marginal_us"].items():
            lines.append(f"| {pair} | " + " | ".join(f"{r[s]:.0f}" for s in STAGES) + " |")
    m = results["status_1m"]
    if m.get("seconds") is not None:
        how = f"extrapolated linearly from {m['from'][0]:,} and {m['from'][1]:,}" if m["extrapolated"] else "measured"
        lines += ["", f"`status` at 1M samples: {m['seconds']:.2f} s in process, {m['cli_seconds']:.2f} s by the "
                      f"CLI ({how}; goal < 1 s)."]
    return lines


def print_rows(results: dict) -> None:
    print(f"# {results['command']}  (load: {results['uptime']})")
    print("\n".join(table(results)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--with-1m", action="store_true", help="also 1,000,000 samples (hours on 2 cores)")
    parser.add_argument("--dry-run", action="store_true", help="one size of 200 samples, for the tests")
    parser.add_argument("--root", default="/tmp/omnimill-bench-scale", help="cached corpora and the runs' stores")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print its row
    args = parser.parse_args()
    root = Path(args.root)
    if args.one:
        print(json.dumps(run_size(args.one, root)))
        return
    sizes = [200] if args.dry_run else [int(s) for s in args.sizes.split(",")]
    if args.with_1m and 1_000_000 not in sizes:
        sizes.append(1_000_000)
    rows = []
    for n in sizes:
        done = subprocess.run([sys.executable, __file__, "--one", str(n), "--root", str(root)], check=True,
                              stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{n:,} samples: {sum(s['seconds'] for s in rows[-1]['stages'].values()):.1f} s", file=sys.stderr)
    results = {"command": " ".join(["benchmarks/scale.py", *sys.argv[1:]]),
               "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
               "teachers": TEACHERS, "view_size": VIEW_SIZE, "unit_size": UNIT_SIZE, "rows": rows,
               "ratios": ratios(rows), "marginal_us": marginal(rows), "status_1m": status_at_1m(rows)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_rows(results)


if __name__ == "__main__":
    main()
