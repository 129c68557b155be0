"""Interleaved documents end to end: documents/s through ingest, fetch, label and pack (each stage timed, one
after the other in one run, and the whole), the packed set's padding share, and the loader's samples/s
(InterleavedDataset alone, and MixtureLoader's mm1 preset over it).

    python benchmarks/documents.py [--docs 1000] [--workers 1] [--unit 64] [--seq-len 4096] [--max-images 16]
                                   [--slots 144] [--mixture-batches 200] [--seed 0]

Corpus (written to a temporary folder, not timed): `--docs` OBELICS-style documents in one parquet, the
text and image layout of benchmarks/interleave.py's synthetic MMC4-like documents (images ~ Poisson(5),
words ~ Poisson(300) of a Zipf vocabulary; empty text segments left out), every image its own JPEG (64-160
px a side, a smooth colour field + noise, ~3-8 kB), alternately a local file and a URL served by an HTTP
server on 127.0.0.1 started here. Stages, each through the engine's own entry point as the CLI calls it,
with its embedded Dask cluster (`--workers` workers; a cluster's start is in its stage's time, as a user
running the command pays it):

  ingest  engine.documents.ingest_documents: segments, image table, the local images' tars
  fetch   engine.fetch.fetch_images on the store's URL list (the server above)
  label   engine.label.label with the rgb and metadata teachers (no model: the figure is the engine's and
          the decoder's, not a network's) over every image, as the document sample kind (one job over the
          document store and the fetched store, as `omnimill label DOCS OUT --sample-kind document --fetched F`)
  pack    shards.interleave.pack_store in placeholder mode (`--slots` per image, MM1's 144: a model with
          its own vision encoder; tokens mode would add `omnimill tokenize` and a trained image tokenizer),
          the text through a byte-level BPE trained here on the corpus (benchmarks/interleave.py's)

Documents/s = documents / seconds of the stage; images/s = all the corpus's images / seconds of the stage
(label and pack handle every image; ingest copies the local half and lists the rest; fetch gets the URL
half); end to end = documents (images) / the four stages' seconds. Then
the packed set: InterleavedDataset read rate (the second of two passes; the first warms the page cache)
and MixtureLoader mm1 (benchmarks/interleave.run_mixture: batch 16, pair and text shard sets written there).
Other processes share the cores: the load before and after is recorded, and the stages' ratios in one run
are the figure to read. Writes benchmarks/results/documents.json (`--out`); `table(results)` gives its
markdown lines.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import interleave as synthetic  # noqa: E402  benchmarks/interleave.py: its documents, tokenizer and mixture row

RESULTS = Path(__file__).resolve().parent / "results" / "documents.json"
TEACHERS = ["rgb", "metadata"]
STAGES = ("ingest", "fetch", "label", "pack")


# ---------------------------------------------------------------------------- the corpus
def jpeg(rng: np.random.Generator) -> bytes:
    """A small JPEG: a smooth colour field (two random corner colours, blended) + noise, 64-160 px a side."""
    from PIL import Image

    h, w = (int(x) for x in rng.integers(64, 161, 2))
    a, b = rng.integers(0, 256, (2, 3))
    t = np.linspace(0, 1, w)[None, :, None]
    field = a * (1 - t) + b * t + rng.normal(0, 12, (h, w, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=85)
    return out.getvalue()


def write_corpus(folder: Path, n: int, port: int, rng: np.random.Generator) -> tuple[Path, list, int]:
    """docs.parquet + local/ + served/ in folder: the synthetic documents with an image file per image
    segment, even-numbered images local, odd ones by URL. Returns the parquet, the documents as
    (key, segments) for the text tokenizer, and the number of images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "local").mkdir(parents=True)
    (folder / "served").mkdir()
    docs = synthetic.make_documents(n, rng)
    rows, count = {"images": [], "texts": [], "metadata": [], "general_metadata": []}, 0
    for key, segments in docs:
        images, texts, metadata = [], [], []
        for seg in segments:
            if "text" in seg:
                if seg["text"]:
                    images.append(None), texts.append(seg["text"]), metadata.append(None)
                continue
            name = f"{key}_{count:07d}.jpg"
            local = count % 2 == 0
            (folder / ("local" if local else "served") / name).write_bytes(jpeg(rng))
            images.append(f"local/{name}" if local else f"http://127.0.0.1:{port}/{name}")
            texts.append(None), metadata.append({"alt_text": f"picture {count}"})
            count += 1
        rows["images"].append(images), rows["texts"].append(texts)
        rows["metadata"].append(json.dumps(metadata)), rows["general_metadata"].append(json.dumps({"doc": key}))
    pq.write_table(pa.table(rows), folder / "docs.parquet", row_group_size=64)
    return folder / "docs.parquet", docs, count


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per request would drown the figures
        pass


def start_server(folder: Path) -> ThreadingHTTPServer:
    """folder served on 127.0.0.1 at a free port (server.server_port), in a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---------------------------------------------------------------------------- the stages
def label_images(docs: str, fetched: str, out: str, common: dict) -> dict:
    """Every image of the document store with TEACHERS, as the document sample kind; {"samples", "failed"}."""
    from omnimill.engine.label import label
    from omnimill.store.labels import LabelStore

    result = label(docs, out, TEACHERS, unit_size=64, view_size=64, sample_kind="document", fetched=fetched,
                   **common)
    return {"samples": len(LabelStore.open(out).keys()), "failed": result.store_failed}


def run(args, root: Path) -> dict:
    from omnimill.engine.documents import ingest_documents
    from omnimill.engine.fetch import fetch_images
    from omnimill.shards.interleave import pack_store

    rng = np.random.default_rng(args.seed)
    server = start_server(root / "corpus" / "served")
    try:
        parquet, docs, n_images = write_corpus(root / "corpus", args.docs, server.server_port, rng)
        tok = synthetic.train_text_tokenizer(docs[:500])
        tok.save(str(root / "bpe.json"))
        common = {"workers": args.workers, "progress": False}
        seconds, figures = {}, {"images": n_images}

        t = time.perf_counter()
        ingested = ingest_documents(str(parquet), str(root / "docs.zarr"), docs_per_unit=args.unit, **common)
        seconds["ingest"] = time.perf_counter() - t

        t = time.perf_counter()
        fetched = fetch_images(ingested.url_list, str(root / "fetched.zarr"), urls_per_unit=args.unit, **common)
        seconds["fetch"] = time.perf_counter() - t
        figures["fetch_failed"] = fetched.store_failed

        t = time.perf_counter()
        figures["label"] = label_images(str(root / "docs.zarr"), str(root / "fetched.zarr"), str(root / "labels.zarr"),
                                        common)
        seconds["label"] = time.perf_counter() - t
    finally:
        server.shutdown()

    t = time.perf_counter()
    manifest = pack_store(str(root / "docs.zarr"), str(root / "packed"), tok, str(root / "bpe.json"),
                          slots=args.slots, seq_len=args.seq_len, max_images=args.max_images,
                          samples_per_shard=64)
    seconds["pack"] = time.perf_counter() - t
    figures.update(sequences=manifest["n"], padding_share=manifest["padding_share"], stats=manifest.get("stats"))
    return {"seconds": seconds, **figures, "loader": read_rates(root / "packed", args.mixture_batches, rng, root)}


def read_rates(packed: Path, batches: int, rng: np.random.Generator, root: Path) -> dict:
    """InterleavedDataset samples/s (second pass of two) and the mm1 mixture row over the packed set."""
    from omnimill.shards.interleave import InterleavedDataset

    for _ in InterleavedDataset(str(packed), epochs=1):  # warms the page cache and torch: not timed
        pass
    t = time.perf_counter()
    n = sum(1 for _ in InterleavedDataset(str(packed), epochs=1))
    read_s = time.perf_counter() - t
    return {"interleaved_samples_per_s": n / read_s, "interleaved_read_s": read_s, "interleaved_samples": n,
            "mixture": synthetic.run_mixture(str(packed), str(root), batches, rng)}


# ---------------------------------------------------------------------------- results
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--unit", type=int, default=64, help="documents per ingest unit, URLs per fetch unit")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--max-images", type=int, default=16)
    parser.add_argument("--slots", type=int, default=144)
    parser.add_argument("--mixture-batches", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        measured = run(args, Path(folder))
    seconds = measured["seconds"]
    total = sum(seconds.values())
    results = {"command": "python benchmarks/documents.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "docs": args.docs, "seq_len": args.seq_len, "max_images": args.max_images, "slots": args.slots,
        "workers": args.workers, "cpus": os.cpu_count(), "machine": platform.machine(),
        "python": platform.python_version(), "load_before": load_before, "load_after": os.getloadavg(),
        **measured, "end_to_end_s": total,
        "docs_per_s": {**{s: args.docs / seconds[s] for s in STAGES}, "end_to_end": args.docs / total}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print("\n".join(table(results)))
    return 0


def table(results: dict) -> list[str]:
    d, rate, sec = results, results["docs_per_s"], results["seconds"]
    lines = [f"{d['docs']} synthetic OBELICS-style documents ({d['images']} images, half local, half by URL from "
             f"127.0.0.1), {d['workers']} worker(s); load {d['load_before'][0]:.1f} -> {d['load_after'][0]:.1f} on "
             f"{d['cpus']} CPUs. Each stage includes its embedded cluster's start.", "",
             "| stage | seconds | documents/s | images/s |", "|---|---:|---:|---:|"]
    lines += [f"| {s} | {sec[s]:.1f} | {rate[s]:,.0f} | {d['images'] / sec[s]:,.0f} |" for s in STAGES]
    lines.append(f"| end to end | {d['end_to_end_s']:.1f} | {rate['end_to_end']:,.0f} | "
                 f"{d['images'] / d['end_to_end_s']:,.0f} |")
    loader, mix = d["loader"], d["loader"]["mixture"]
    kinds = ", ".join(f"{k} {v['samples_per_s']:,.0f}" for k, v in mix["kinds"].items())
    lines += ["", f"Packed (placeholders, {d['slots']} slots per image, seq_len {d['seq_len']}, at most "
                  f"{d['max_images']} images per sequence): {d['sequences']} sequences, padding share "
                  f"{d['padding_share']:.1%}. InterleavedDataset {loader['interleaved_samples_per_s']:,.0f} "
                  f"samples/s; MixtureLoader mm1 (batch {mix['batch_size']}, {mix['batches']} batches) "
                  f"{mix['samples_per_s']:,.0f} samples/s overall ({kinds} per kind)."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
