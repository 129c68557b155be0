"""Interleaved documents: interleave + pack rate (documents/s, tokens/s), padding share, and the packed set's
read rate, on synthetic MMC4-like documents, both image modes side by side.

    python benchmarks/interleave.py [--docs 2000] [--seq-len 4096] [--max-images 16] [--seed 0] [--mixture-batches 400]

Documents: image count ~ Poisson(5) (MMC4: ~5 images per document), words ~ Poisson(300) cut into one
text segment per image gap (plus one before the first image), words drawn from a 2,000-word Zipf vocabulary.
Text goes through a real byte-level BPE (HF `tokenizers`, 4,096 merges, trained here on 500 of the documents)
as the sequence tokenizer wraps it. Rows:

  tokens        each image 16 x 16 = 256 tokens of a 1,024-code image tokenizer (random codes: the packer
                does not look at them), 258 with BOI/EOI
  placeholders  each image IMG_SLOT x 144 (MM1), 146 with BOI/EOI

Then the MM1 mixture (shards/mixture.py, preset mm1, batch 16, in-process) over the placeholder set above,
caption pairs and text shards: samples/s and batches/s per kind through MixtureLoader. The pairs (rgb_image
16 x 16 tokens of a 1,024-code tokenizer + a 64-token caption) and text (256-token) shard sets are written
here by the real shard writer (shards/wds.write_shard) with random token values and a manifest like
`omnimill shards text` writes (the loader reads tars, not meanings).

Per row: interleave s (text -> ids, image blocks), pack s (Packer), write s (tars + manifest), read s (one
epoch of InterleavedDataset, sha256 checked; the second of two, the first warms the page cache and torch),
documents/s and tokens/s through interleave + pack, sequences, padding share, images per sequence. One
process, the rows one after the other; other processes share the cores, so the load is recorded and the
ratios between rows in one run are the figure to read. Writes benchmarks/results/interleave.json;
`table(results)` gives its markdown lines.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "interleave.json"
IMAGES_PER_DOC, WORDS_PER_DOC = 5, 300  # MMC4-like means
GRID, V_IMAGE, SLOTS = 16, 1024, 144


def make_documents(n: int, rng: np.random.Generator) -> list[tuple[str, list[dict]]]:
    vocabulary = [f"w{i}" for i in range(2000)]
    weights = 1 / np.arange(1, 2001)
    weights /= weights.sum()
    docs = []
    for d in range(n):
        key, k = f"doc{d:07d}", int(rng.poisson(IMAGES_PER_DOC))
        words = rng.choice(vocabulary, int(rng.poisson(WORDS_PER_DOC)), p=weights)
        cuts = np.sort(rng.integers(0, len(words) + 1, k))
        segments, start = [], 0
        for i, cut in enumerate([*cuts.tolist(), len(words)]):
            segments.append({"text": " ".join(words[start:cut])})
            start = cut
            if i < k:
                segments.append({"image": f"{key}/img_{i:02d}", "alt": None, "meta": {}})
        docs.append((key, segments))
    return docs


def train_text_tokenizer(docs):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 4096, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator((s["text"] for _, doc in docs for s in doc if "text" in s), trainer)
    return tok


def run_row(mode: str, docs, tok, seq_len: int, max_images: int, rng, folder: str) -> dict:
    from omnimill.shards import interleave as il

    encode = il.text_encoder(tok)
    vocab = il.Vocab(tok.get_vocab_size(), V_IMAGE if mode == "tokens" else 0)
    image_tokens = ({s["image"]: rng.integers(0, V_IMAGE, (GRID, GRID)) for _, doc in docs for s in doc
                     if "image" in s} if mode == "tokens" else None)
    tally = Counter()
    t0 = time.perf_counter()
    flat = [(key, *il.interleave(doc, encode, vocab, image_tokens=image_tokens,
                                 slots=SLOTS if mode == "placeholders" else None, tally=tally)) for key, doc in docs]
    t1 = time.perf_counter()
    packed = il.pack(flat, vocab, seq_len, max_images)
    t2 = time.perf_counter()
    out = os.path.join(folder, mode)
    head = il.header(vocab, seq_len, max_images, mode, SLOTS if mode == "placeholders" else None, "bpe", None,
                     image_tokens=SLOTS if mode == "placeholders" else GRID * GRID)
    il.write_interleaved(out, packed.sequences, head, packed.padding_share, samples_per_shard=256)
    t3 = time.perf_counter()
    for _ in il.InterleavedDataset(out, epochs=1):  # a first pass warms the page cache and torch: not timed
        pass
    t_warm = time.perf_counter()
    read = sum(1 for _ in il.InterleavedDataset(out, epochs=1))
    t4 = time.perf_counter()
    tokens = sum(len(ids) for _, ids, _ in flat)
    return {"mode": mode, "docs": len(docs), "images": tally["images"], "content_tokens": tokens,
            "sequences": len(packed.sequences), "read": read, "dropped_images": len(packed.dropped),
            "padding_share": packed.padding_share,
            "images_per_sequence": tally["images"] / max(len(packed.sequences), 1),
            "interleave_s": t1 - t0, "pack_s": t2 - t1, "write_s": t3 - t2, "read_s": t4 - t_warm,
            "docs_per_s": len(docs) / (t2 - t0), "tokens_per_s": tokens / (t2 - t0),
            "read_sequences_per_s": read / (t4 - t_warm)}


def token_shards(out: str, modalities: dict[str, tuple[int, int]], n: int, per_shard: int, rng) -> str:
    """A shard set of n samples with random tokens: {modality: (vocab, L)}, written by shards/wds.write_shard."""
    from omnimill.shards.wds import FORMAT, MANIFEST, atomic_write, write_shard

    rows = []
    for first in range(0, n, per_shard):
        samples = [(f"k{i:07d}", i, np.zeros((1, 5), np.int32),
                    {m: rng.integers(1, v, (1, length)).astype(np.uint16) for m, (v, length) in modalities.items()})
                   for i in range(first, min(n, first + per_shard))]
        rows.append(write_shard(out, len(rows), samples))
    info = {m: {"kind": "bench", "vocab_size": v, "tokens_per_sample": length, "pad_id": 0, "sha256": m,
                "dtype": "uint16", "samples": n} for m, (v, length) in modalities.items()}
    manifest = {"format": FORMAT, "n": n, "n_crops": 1, "modalities": info, "shards": rows}
    atomic_write(os.path.join(out, MANIFEST), json.dumps(manifest).encode())
    return out


def run_mixture(interleaved: str, folder: str, batches: int, rng) -> dict:
    from omnimill.shards.interleave import InterleavedDataset
    from omnimill.shards.loader import TokenDataset
    from omnimill.shards.mixture import MixtureLoader

    pairs = token_shards(os.path.join(folder, "pairs"), {"rgb_image": (V_IMAGE, GRID * GRID), "caption": (8192, 64)},
                         4000, 500, rng)
    text = token_shards(os.path.join(folder, "text"), {"caption": (8192, 256)}, 4000, 500, rng)
    loader = MixtureLoader(16, interleaved=InterleavedDataset(interleaved), pairs=TokenDataset(pairs),
                           text=TokenDataset(text), preset="mm1", shuffle_buffer=256)
    seconds, samples, count = Counter(), Counter(), Counter()
    it = iter(loader)
    next(it)  # first batch of a kind opens its reader: not in the rate
    t = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        now = time.perf_counter()
        kind = batch["kind"]
        seconds[kind] += now - t
        samples[kind] += len(batch["keys"])
        count[kind] += 1
        t = now
    total = sum(seconds.values())
    return {"batches": batches, "batch_size": 16, "seconds": total, "samples_per_s": sum(samples.values()) / total,
            "kinds": {k: {"batches": count[k], "samples_per_s": samples[k] / seconds[k]} for k in sorted(count)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--max-images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixture-batches", type=int, default=400)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    docs = make_documents(args.docs, rng)
    tok = train_text_tokenizer(docs[:500])
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        rows = [run_row(mode, docs, tok, args.seq_len, args.max_images, rng, folder)
                for mode in ("tokens", "placeholders")]
        mixture = run_mixture(os.path.join(folder, "placeholders"), folder, args.mixture_batches, rng)
    results = {"command": "python benchmarks/interleave.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()), "seq_len": args.seq_len,
        "max_images": args.max_images, "cpus": os.cpu_count(), "load_before": load_before,
        "load_after": os.getloadavg(), "rows": rows, "mixture": mixture}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print("\n".join(table(results)))


def table(results: dict) -> list[str]:
    lines = [f"Interleaved packing, {results['rows'][0]['docs']} synthetic MMC4-like documents (~{IMAGES_PER_DOC} "
             f"images, ~{WORDS_PER_DOC} words), seq_len {results['seq_len']}, at most {results['max_images']} "
             f"images per sequence; load {results['load_before'][0]:.1f} -> {results['load_after'][0]:.1f} on "
             f"{results['cpus']} CPUs.", "",
             "| image mode | docs/s | tokens/s | interleave s | pack s | write s | read seq/s | sequences | "
             "images/seq | padding |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['mode']} | {r['docs_per_s']:,.0f} | {r['tokens_per_s']:,.0f} | {r['interleave_s']:.2f} | "
                     f"{r['pack_s']:.2f} | {r['write_s']:.2f} | {r['read_sequences_per_s']:,.0f} | {r['sequences']} | "
                     f"{r['images_per_sequence']:.1f} | {r['padding_share']:.1%} |")
    mix = results.get("mixture")
    if mix:
        kinds = ", ".join(f"{k} {v['batches']} batches at {v['samples_per_s']:,.0f} samples/s"
                          for k, v in mix["kinds"].items())
        lines += ["", f"MixtureLoader (mm1, batch {mix['batch_size']}, in-process): {mix['batches']} batches, "
                      f"{mix['samples_per_s']:,.0f} samples/s overall; {kinds}."]
    return lines


if __name__ == "__main__":
    main()
