"""Tokenizer quality and encode throughput, from the tokenizers `make demo` trains; vector codebook usage.

    python benchmarks/tokenizer_bench.py [--tokenizers demo-out/tokenizers] [--store demo-out/labels.zarr]
    python benchmarks/tokenizer_bench.py --vector-usage [--store S | --make-store DIR]   # vector_usage.json

Without demo-out/ (a fresh checkout) the demo tokenizers' rows are skipped with a printed line.

(Not `tokenizers.py`: run as a script, that name would shadow the HF `tokenizers` package.)

For each tokenizer directory: the held-out metrics of `omnimill tokenizer eval` (metrics.json),
and encode samples/s on this machine (whole views, batch 64, all cores), plus — for scale — the
encode rate of a spatial tokenizer at the default production size (input 256, grid 16 × 16, width
64, random weights: speed does not depend on them).

--vector-usage: the demo's two vector tokenizers (dinov2/cls, caption_embed/embedding; the demo's recipe:
vocab 256 = FSQ [8,6,5] = 240 codes, 8 tokens, 600 steps) trained twice in one run, without the usage term
(usage_weight 0: how vector tokenizers trained before it) and with it (the default), for each seed; each
measured by `omnimill tokenizer eval` (codebook usage over every sample, held-out cosine beside the mean-
vector baseline). --make-store DIR first labels the demo's corpus (scripts/demo.py: the same photos and
crops, DINOv2 ViT-S/14 with random weights, the real MiniLM) with dinov2 and caption_embed into DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def encode_rate(tokenizer, values: dict, batch: int = 64, seconds: float = 5.0) -> float:
    n = len(next(iter(values.values())))
    rows = {k: v[:min(batch, n)] for k, v in values.items()}
    tokenizer.encode(rows)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        tokenizer.encode(rows)
        calls += 1
    return calls * len(next(iter(rows.values()))) / (time.perf_counter() - start)


def make_store(directory: Path) -> Path:
    """The demo's corpus labelled by the demo's dinov2 and caption_embed teachers: a demo-like store."""
    import importlib.util
    import subprocess
    import sys

    spec = importlib.util.spec_from_file_location("demo", Path(__file__).resolve().parent.parent / "scripts/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    directory = directory.resolve()
    demo.CORPUS, demo.CHECKPOINT = directory / "corpus", directory / "dinov2-vits14-random"
    demo.build_corpus()
    demo.build_checkpoint()
    store = directory / "labels.zarr"
    code = subprocess.run([sys.executable, "-m", "omnimill.cli", "label", str(demo.CORPUS), str(store), "--teacher",
                           f"dinov2={demo.CHECKPOINT}", "--teacher", f"caption_embed={demo.minilm()}",
                           "--unit-size", "32"]).returncode
    if code not in (0, 3):  # 3: the demo corpus's three broken files, on purpose
        raise SystemExit(f"labelling the demo-like store failed ({code})")
    return store


VECTOR_FIELDS = ("dinov2/cls", "caption_embed/embedding")
DEMO_VECTOR_RECIPE = {"steps": 600, "vocab": 256}  # scripts/demo.py's TOKENIZER_RECIPES for both fields


def vector_usage(store: str, seeds: list[int], out: Path) -> None:
    import sys
    import tempfile

    from omnimill.tokenize import vector
    from omnimill.tokenize.evaluate import evaluate_tokenizer
    from omnimill.tokenize.train import train_tokenizer

    rows = []
    print(f"{'field':26s} {'seed':>4s} {'usage term':>10s} {'usage':>6s} {'perplexity':>10s} {'cosine':>7s} "
          f"{'baseline':>8s} {'train s':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        for field in VECTOR_FIELDS:
            for seed in seeds:
                for weight in (0.0, vector.USAGE_WEIGHT):
                    default, vector.USAGE_WEIGHT = vector.USAGE_WEIGHT, weight  # 0: training as before the term
                    try:
                        started = time.time()
                        directory = train_tokenizer(store, field, "vector", Path(tmp) / f"{field}-{seed}-{weight}",
                                                    seed=seed, progress=False, **DEMO_VECTOR_RECIPE)
                        seconds = time.time() - started
                    finally:
                        vector.USAGE_WEIGHT = default
                    m = evaluate_tokenizer(directory, store)
                    rows.append({"field": field, "seed": seed, "usage_weight": weight, **DEMO_VECTOR_RECIPE,
                                 "train_seconds": round(seconds, 1),
                                 **{k: m[k] for k in ("vocab_size", "tokens_per_sample", "codebook_usage", "perplexity",
                                                      "usage_samples", "cosine", "baseline_cosine_mean_vector",
                                                      "heldout_samples")}})
                    r = rows[-1]
                    print(f"{field:26s} {seed:4d} {weight:10.2f} {100 * r['codebook_usage']:5.1f}% "
                          f"{r['perplexity']:10.1f} {r['cosine']:7.4f} {r['baseline_cosine_mean_vector']:8.4f} "
                          f"{seconds:7.0f}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"store": store, "rows": rows, "cores": os.cpu_count(),
                               "command": " ".join(["benchmarks/tokenizer_bench.py", *sys.argv[1:]])}, indent=2))
    print(f"wrote {out}")


def main() -> None:
    import torch

    from omnimill.tokenize.base import TokenizerConfig, load_tokenizer
    from omnimill.tokenize.data import open_field
    from omnimill.tokenize.spatial import SpatialTokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizers", default="demo-out/tokenizers")
    parser.add_argument("--store", default="demo-out/labels.zarr")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/tokenizers.json, or "
                                                       "vector_usage.json with --vector-usage")
    parser.add_argument("--vector-usage", action="store_true", help="vector codebook usage with and without the "
                                                                    "usage term (see above)")
    parser.add_argument("--make-store", type=Path, help="--vector-usage: label a demo-like store in this folder")
    parser.add_argument("--seeds", default="0,1", help="--vector-usage: training seeds")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.vector_usage:
        store = str(make_store(args.make_store)) if args.make_store else args.store
        if not Path(store).exists():
            raise SystemExit(f"no {store}: run `make demo`, or give --make-store DIR")
        vector_usage(store, [int(s) for s in args.seeds.split(",")],
                     Path(args.out or "benchmarks/results/vector_usage.json"))
        return
    args.out = args.out or "benchmarks/results/tokenizers.json"

    rows = []
    trained = sorted(Path(args.tokenizers).iterdir()) if Path(args.tokenizers).is_dir() else []
    if trained:
        print(f"{'tokenizer':12s} {'kind':9s} {'vocab':>6s} {'L':>4s} {'usage':>6s}  quality (held-out)"
              f"{'':28s} {'encode/s':>9s}")
    else:
        print(f"demo tokenizers: skipped (no {args.tokenizers}: `make demo` trains them); "
              "measuring the production-size spatial encoder only")
    for directory in trained:
        metrics = json.loads((directory / "metrics.json").read_text())
        tok = load_tokenizer(directory)
        c = tok.config
        source = open_field(args.store, c.modality if c.teacher else c.fields[0])
        values = source.read(np.flatnonzero(source.ok())[:64])
        rate = encode_rate(tok, values)
        quality = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)
                   and k not in ("codebook_usage", "perplexity")}
        rows.append({"tokenizer": directory.name, **metrics, "encode_samples_per_s": rate})
        print(f"{directory.name:12s} {c.kind:9s} {tok.vocab_size:6d} {tok.tokens_per_sample:4d} "
              f"{100 * metrics['codebook_usage']:5.1f}%  {json.dumps(quality):46s} {rate:9.1f}")

    config = TokenizerConfig("spatial", "rgb", ["image"], normalization={"mode": "image", "mean": [0.5] * 3,
                                                                        "std": [0.25] * 3},
                             options={"view_size": 384, "input_size": 256, "grid": 16, "width": 64, "vocab": 1024,
                                      "sample_shape": [384, 384, 3]})
    production = SpatialTokenizer(config)
    images = np.random.default_rng(0).integers(0, 256, (64, 384, 384, 3), dtype=np.uint8)
    rate = encode_rate(production, {"image": images})
    print(f"spatial at production size (256 px in, 16 x 16 tokens, width 64): {rate:.1f} samples/s encode")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "production_spatial_encode_per_s": rate,
                               "cores": os.cpu_count()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
