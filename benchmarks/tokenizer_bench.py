"""Tokenizer quality and encode throughput, from the tokenizers `make demo` trains.

    python benchmarks/tokenizer_bench.py [--tokenizers demo-out/tokenizers] [--store demo-out/labels.zarr]

Without demo-out/ (a fresh checkout) the demo tokenizers' rows are skipped with a printed line.

(Not `tokenizers.py`: run as a script, that name would shadow the HF `tokenizers` package.)

For each tokenizer directory: the held-out metrics of `omnimill tokenizer eval` (metrics.json),
and encode samples/s on this machine (whole views, batch 64, all cores), plus — for scale — the
encode rate of a spatial tokenizer at the default production size (input 256, grid 16 × 16, width
64, random weights: speed does not depend on them).
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


def main() -> None:
    import torch

    from omnimill.tokenize.base import TokenizerConfig, load_tokenizer
    from omnimill.tokenize.data import open_field
    from omnimill.tokenize.spatial import SpatialTokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizers", default="demo-out/tokenizers")
    parser.add_argument("--store", default="demo-out/labels.zarr")
    parser.add_argument("--out", default="benchmarks/results/tokenizers.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

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
