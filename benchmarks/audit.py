"""Audit index benchmark: recall@10 against exact search and single-query latency, ours vs autofaiss.

For each N (100k, 1M) and memory budget, on the same vectors and the same 1,000 held-out queries (recall and
latency), with 1,000 other held-out queries on which omnimill tunes its search parameter (never scored):
- omnimill: the index `choose_index` picks for (N, dim, budget, 10 ms), built and tuned by the same
  functions `omnimill audit index` runs (new_index, training_size, tune, measure), minus the Zarr reading;
- autofaiss: `autofaiss.build_index` at the same budget and the same 10 ms target, its own choice of
  index and of search parameters (its `index_param`), measured here with the same code.

    python benchmarks/audit.py [--sizes 100000,1000000] [--budgets 4GB,1GB] [--dim 768] [--queries 1000]
                               [--autofaiss-python .venv-autofaiss/bin/python] [--autofaiss-sizes 100000]

Run time on 2 cores: ~10 minutes as above (autofaiss at 100k only). autofaiss at 1M picks HNSW32 for 4 GB,
whose build alone takes ~17 minutes here: `--autofaiss-sizes 100000,1000000` gives the full table in
~45 minutes.

Vectors: a Gaussian mixture (N / 100 clusters, unit-variance noise around N(0, I) centres, so a vector's
cosine with its cluster-mates is ~0.5 and ~0 with the rest), float32, L2-normalised: clumps like real
embeddings, not a uniform sphere. Queries are fresh draws from the same mixture (not in the index).
Exact top-10 by brute force (faiss IndexFlatIP). Latency: one query per search call, p50 and p99 over the
1,000 queries, all cores to faiss (OpenMP). Build time includes training and adding.

autofaiss pins numpy < 2 and pandas < 3, which this project's environment cannot take, so it lives in a
virtualenv of its own and runs in a subprocess on the same vectors (saved as .npy). autofaiss 2.18 calls
faiss with keyword arguments that faiss 1.15 no longer takes (`OPQMatrix(d, M=...)`), and pip's newest
pyarrow needs numpy 2, so that virtualenv pins faiss-cpu 1.7.4 and pyarrow < 20 (the index file format is
the same; this process reads autofaiss's index with faiss 1.15):
    python3 -m venv .venv-autofaiss
    .venv-autofaiss/bin/pip install autofaiss faiss-cpu==1.7.4 "pyarrow<20"
Without it (or with --autofaiss-python none) autofaiss is skipped with a printed line: omnimill's rows only.
Prints a table and writes benchmarks/results/audit.json; rows of sizes not run this time that are already in
that file are kept, each row saying which run it is from (`run`, described under `runs`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from omnimill.audit.index import (DEFAULT_LATENCY_MS, K, TARGET_RECALL, choose_index, measure,  # noqa: E402
                                  new_index, parse_size, training_size, tune)

SEED = 0
BLOCK = 65_536  # vectors generated / added per block

AUTOFAISS_SCRIPT = """
import json, sys, time
from autofaiss import build_index
folder, index_path, infos_path, budget, latency, available = sys.argv[1:7]
t0 = time.time()
_, infos = build_index(embeddings=folder, index_path=index_path, index_infos_path=infos_path,
                       max_index_memory_usage=budget, current_memory_available=available, metric_type="ip",
                       max_index_query_time_ms=float(latency), save_on_disk=True, verbose=20)
print(json.dumps({"seconds": time.time() - t0, "infos": infos}))
"""


def mixture(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """n L2-normalised draws from the mixture, generated block by block (1M x 768 float32 = 3.1 GB)."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        block = centres[rng.integers(0, len(centres), stop - start)]
        block += rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


def exact_top(x: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    return flat.search(xq, k)[1]


def ours(x: np.ndarray, xt: np.ndarray, tuning_truth: np.ndarray, xq: np.ndarray, truth: np.ndarray, budget: int,
         latency_ms: float) -> dict:
    """Built and tuned as `audit index` does: tuned on xt, recall and latency measured on xq (disjoint)."""
    rng = np.random.default_rng(SEED)
    plan = choose_index(len(x), x.shape[1], budget, latency_ms)
    t0 = time.perf_counter()
    index, _ = new_index(plan, x.shape[1])
    if plan.kind in ("ivf", "ivfpq"):
        sample = x[np.sort(rng.choice(len(x), training_size(plan, len(x)), replace=False))]
        index.train(sample)
    for start in range(0, len(x), BLOCK):
        index.add(x[start:start + BLOCK])
    build_s = time.perf_counter() - t0
    params, sweep = tune(index, plan.kind, xt, tuning_truth, np.full(len(xt), -1), latency_ms, TARGET_RECALL,
                         plan.nlist)  # held-out queries: nothing to leave out
    recall, p50, p99 = measure(index, xq, truth, np.full(len(xq), -1))
    return {"who": "omnimill", "index": plan.factory, "params": params, "memory_bytes": _bytes(index),
            "build_s": round(build_s, 1), "recall@10": recall, "p50_ms": p50, "p99_ms": p99, "reason": plan.reason,
            "tuning": sweep, "load": round(os.getloadavg()[0], 1)}


def autofaiss(python: str, x: np.ndarray, xq: np.ndarray, truth: np.ndarray, budget: int, latency_ms: float,
              work: Path) -> dict:
    import faiss

    folder = work / "embeddings"
    folder.mkdir(exist_ok=True)
    if not (folder / "x.npy").exists():
        np.save(folder / "x.npy", x)
    index_path, infos_path = work / "autofaiss.index", work / "autofaiss.json"
    # What it may use to build: half of what this machine has free now (with 16G it trained OPQ on all
    # 1M vectors and was killed on a 24 GB machine already holding the vectors twice).
    available = f"{_available_bytes() // 2}B"
    started = time.time()
    run = subprocess.run([python, "-c", AUTOFAISS_SCRIPT, str(folder), str(index_path), str(infos_path),
                          f"{budget}B", str(latency_ms), available], capture_output=True, text=True)
    (work / f"autofaiss-{len(x)}-{budget}.log").write_text(run.stderr)  # its own account of what it did
    if run.returncode != 0:
        last = [line for line in run.stderr.splitlines() if line.strip() and "it/s" not in line][-1:]
        return {"who": "autofaiss", "index": "failed", "params": f"exit {run.returncode}: {' '.join(last)[:200]}",
                "memory_bytes": 0, "build_s": round(time.time() - started, 1), "recall@10": float("nan"),
                "p50_ms": float("nan"), "p99_ms": float("nan")}
    report = json.loads(run.stdout.strip().splitlines()[-1])
    infos = report["infos"]
    index = faiss.read_index(str(index_path))
    faiss.ParameterSpace().set_index_parameters(index, infos["index_param"])
    no_self = np.full(len(xq), -1)
    recall, p50, p99 = measure(index, xq, truth, no_self)
    index_path.unlink()
    return {"who": "autofaiss", "index": infos["index_key"], "params": infos["index_param"],
            "memory_bytes": _bytes(index), "build_s": round(report["seconds"], 1), "recall@10": recall,
            "p50_ms": p50, "p99_ms": p99, "load": round(os.getloadavg()[0], 1)}


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))


def _bytes(index) -> int:
    import faiss

    return len(faiss.serialize_index(index))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--budgets", default="4GB,1GB", help="memory budgets, each run at every size")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=DEFAULT_LATENCY_MS)
    parser.add_argument("--autofaiss-python", default=str(ROOT / ".venv-autofaiss" / "bin" / "python"),
                        help="python of a virtualenv with autofaiss; 'none' to skip it")
    parser.add_argument("--autofaiss-sizes", default="100000",
                        help="sizes at which autofaiss runs too (1M costs ~17 min per budget on 2 cores)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "audit.json"))
    args = parser.parse_args()
    import faiss

    use_autofaiss = args.autofaiss_python != "none" and Path(args.autofaiss_python).exists()
    if not use_autofaiss:
        why = "--autofaiss-python none" if args.autofaiss_python == "none" else \
            f"no python at {args.autofaiss_python}; to compare: python3 -m venv .venv-autofaiss && " \
            '.venv-autofaiss/bin/pip install autofaiss faiss-cpu==1.7.4 "pyarrow<20"'
        print(f"autofaiss: skipped ({why})", flush=True)
    rows, started, run = [], time.time(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"faiss {faiss.__version__}, {os.cpu_count()} cores, {faiss.omp_get_max_threads()} OpenMP threads, load "
          f"{os.getloadavg()[0]:.1f}; dim {args.dim}, {args.queries} held-out queries for recall and latency, "
          f"{args.queries} others for tuning; latency target {args.latency_ms:g} ms", flush=True)
    for n in sizes:
        rng = np.random.default_rng(SEED)
        centres = rng.standard_normal((max(1, n // 100), args.dim), dtype=np.float32)
        t0 = time.time()
        x = mixture(n, args.dim, rng, centres)
        xq = mixture(args.queries, args.dim, rng, centres)
        xt = mixture(args.queries, args.dim, rng, centres)  # tuning queries: fresh draws, never scored
        truth, tuning_truth = exact_top(x, xq, K), exact_top(x, xt, K)
        print(f"\nN = {n:,}: data and exact top-{K} in {time.time() - t0:.0f}s", flush=True)
        with tempfile.TemporaryDirectory(prefix="omnimill-bench-audit-") as work:
            for budget_text in args.budgets.split(","):
                budget = parse_size(budget_text)
                runs = [ours(x, xt, tuning_truth, xq, truth, budget, args.latency_ms)]
                print(_line(n, budget_text, runs[-1]), flush=True)
                if use_autofaiss and n in [int(s) for s in args.autofaiss_sizes.split(",")]:
                    runs.append(autofaiss(args.autofaiss_python, x, xq, truth, budget, args.latency_ms, Path(work)))
                    print(_line(n, budget_text, runs[-1]), flush=True)
                rows += [{"n": n, "dim": args.dim, "budget": budget_text, **r, "run": run} for r in runs]
        del x
    print(f"\n{_table(rows)}\n\ntotal {time.time() - started:.0f}s, load {os.getloadavg()[0]:.1f} at the end")
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    kept = [r for r in old.get("rows", []) if r["n"] not in sizes and r.get("run") in old.get("runs", {})]
    this = {"faiss": faiss.__version__, "cores": os.cpu_count(), "dim": args.dim, "sizes": sizes,
            "queries": args.queries, "tuning_queries": args.queries, "recall_queries": "disjoint from tuning",
            "latency_target_ms": args.latency_ms, "autofaiss_sizes": args.autofaiss_sizes if use_autofaiss else "skipped",
            "seconds": round(time.time() - started), "load_end": os.getloadavg()[0]}
    runs = {k: v for k, v in old.get("runs", {}).items() if any(r["run"] == k for r in kept)} | {run: this}
    if kept:
        print(f"kept from {out}: rows of N = {sorted({r['n'] for r in kept})} (runs {', '.join(sorted({r['run'] for r in kept}))})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": runs, "rows": sorted(kept + rows, key=lambda r: r["n"])}, indent=2) + "\n")
    return 0


def _params(params) -> str:
    if isinstance(params, dict):
        return ",".join(f"{k}={v}" for k, v in params.items()) or "exact"
    return str(params)


def _line(n: int, budget: str, r: dict) -> str:
    return (f"  {budget:>5} {r['who']:>9}: {r['index']} ({_params(r['params'])}) {r['memory_bytes'] / 1e6:.0f} MB, "
            f"build {r['build_s']}s, recall@10 {r['recall@10']:.3f}, p50 {r['p50_ms']:.2f} ms, "
            f"p99 {r['p99_ms']:.2f} ms")


def _table(rows: list[dict]) -> str:
    lines = ["| N | budget | who | index (search parameters) | memory | build s | recall@10 | p50 ms | p99 ms |",
             "|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['budget']} | {r['who']} | `{r['index']}` ({_params(r['params'])}) | "
                     f"{r['memory_bytes'] / 1e6:,.0f} MB | {r['build_s']} | {r['recall@10']:.3f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
