"""Clip shard benchmark: loader samples/s on clips (frames and audio with time axes), alone and mixed with images.

A clip here is what a MiCo-style clip store tokenizes to at 4M sizes (one crop per clip):

    rgb_frames   8 frames x 14 x 14 = 1568 tokens, vocab 16384, time {steps 8, of frames}
    log_mel_mel  3 audio segments x 64 = 192 tokens, vocab 4096, time {steps 3, of audio_segments}
    clap_audio   16 tokens (a vector tokenizer's CLAP embedding), vocab 8192
    asr_text     64 tokens, vocab 30522, 0-padded after a random length of 8..64 (the transcript)
    video_caption 64 tokens, likewise

1904 tokens a clip, 4.4x an image of benchmarks/shards.py (rgb 256, depth 256, dinov2_cls 16, caption 64 =
592), which is the image dataset of the mixture rows. Tokens are uniform over each vocabulary from a seeded
generator (the payload, not its values, sets the cost). Both token stores are written directly in the
`omnimill.tokens/1` layout with the project's array settings (as benchmarks/shards.py does; a time axis is
the modality group's `time` attribute, store/tokens.py), exported with omnimill's `export_wds` and read
with its `TokenLoader`: batches of 256, one pass (epochs=1) for single datasets, a fixed number of batches
for the endless mixture, shuffle buffer 1000, crops "first". Every read runs twice; the second (warm) one
is reported (page cache: a comparison of CPU cost, not of disks). The ceiling is a raw numpy memmap of the
same clips (and images) read sample by sample (one flat (N, L) .npy per modality); each row's ratio is
against the memmap of its own data. Worker start-up counts (it is paid every epoch).

    .venv/bin/python benchmarks/clip_shards.py --samples 10000 [--workers 2] [--out /tmp/omnimill-bench-clips]

Prints a table and writes benchmarks/results/clip_shards.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED = 0
BATCH = 256
SAMPLES_PER_SHARD = 1000
UNIT_SIZE = 128
# name, tokens per sample (L), vocabulary, pad id (-1: fixed length), time record (None: no time axis)
CLIP = [
    ("rgb_frames", 8 * 196, 16384, -1, {"steps": 8, "of": "frames"}),
    ("log_mel_mel", 3 * 64, 4096, -1, {"steps": 3, "of": "audio_segments"}),
    ("clap_audio", 16, 8192, -1, None),
    ("asr_text", 64, 30522, 0, None),
    ("video_caption", 64, 30522, 0, None),
]
IMAGE = [
    ("rgb_image", 256, 16384, -1, None),
    ("depth", 256, 8192, -1, None),
    ("dinov2_cls", 16, 8192, -1, None),
    ("caption", 64, 30522, 0, None),
]


def make_tokens(specs: list, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = {}
    for name, length, vocab, pad, _ in specs:
        x = rng.integers(0 if pad < 0 else 1, vocab, (n, length), dtype=np.uint16)
        if pad >= 0:
            x[np.arange(length)[None, :] >= rng.integers(8, length + 1, n)[:, None]] = pad
        data[name] = x
    return data


def write_store(specs: list, data: dict[str, np.ndarray], path: Path) -> None:
    """The `omnimill.tokens/1` layout (store/tokens.py), one crop, each modality's chunks then its markers;
    `format` last, as TokenStore.create writes it."""
    import zarr

    from omnimill.store.base import RUNS, create_array, now

    n = len(next(iter(data.values())))
    n_units = -(-n // UNIT_SIZE)
    shutil.rmtree(path, ignore_errors=True)
    group = zarr.open_group(str(path), mode="w-")
    create_array(group, "keys", (n,), (UNIT_SIZE,), "str")[:] = np.array([f"{i:08d}" for i in range(n)], object)
    create_array(group, "crops", (n, 1, 5), (UNIT_SIZE, 1, 5), "int32")[:] = np.zeros((n, 1, 5), np.int32)
    runs = group.require_group(RUNS)
    for name, length, vocab, pad, time_axis in specs:
        part = group.create_group(name, overwrite=True)
        tokens = create_array(part, "tokens", (n, 1, length), (UNIT_SIZE, 1, length), "uint16")
        ok = create_array(part, "ok", (n,), (UNIT_SIZE,), "bool")
        units = create_array(runs.create_group(name, overwrite=True), "units", (n_units,), (1,), "str")
        part.attrs["tokenizer"] = {"path": "bench", "sha256": f"bench-{name}", "kind": "bench", "vocab_size": vocab,
                                   "tokens_per_sample": length, "pad_id": pad, "teacher": "bench", "fields": [name]}
        if time_axis:
            part.attrs["time"] = time_axis
        tokens[:] = data[name][:, None, :]
        ok[:] = True
        for u in range(n_units):
            start, stop = u * UNIT_SIZE, min(n, (u + 1) * UNIT_SIZE)
            units[u] = json.dumps({"unit": u, "start": start, "stop": stop, "ok": stop - start, "skipped": 0})
    created = now()
    group.attrs.update({"format": "omnimill.tokens/1", "omnimill_version": "bench", "created": created, "n": n,
                        "n_crops": 1, "crop_seed": 0, "unit_size": UNIT_SIZE,
                        "source": {"store": "bench", "created": created, "n": n, "view_size": 224,
                                   "corpus": {"uri": "bench", "kind": "folder"}}})


def export(store: Path, out: Path) -> None:
    from omnimill.shards.wds import export_wds

    shutil.rmtree(out, ignore_errors=True)
    export_wds(str(store), str(out), samples_per_shard=SAMPLES_PER_SHARD)


def read_memmap(data: dict[str, np.ndarray], path: Path) -> int:
    """The ceiling: per-sample row copies from one memmapped .npy per modality."""
    if not path.exists():
        path.mkdir(parents=True)
        for name, x in data.items():
            np.save(path / f"{name}.npy", x)
    arrays = [np.load(path / f"{name}.npy", mmap_mode="r") for name in data]
    n = len(arrays[0])
    for i in range(n):
        [np.array(a[i]) for a in arrays]
    return n


def load(uris: list[Path], workers: int, batches: int | None = None) -> int:
    """Samples through TokenLoader: one pass over one dataset, or `batches` batches of an even mixture."""
    from omnimill.shards.loader import TokenDataset, TokenLoader

    datasets = [TokenDataset(str(u)) for u in uris]
    loader = TokenLoader(datasets, batch_size=BATCH, num_workers=workers, shuffle_buffer=1000, crops="first",
                         epochs=1 if len(datasets) == 1 else None)
    got = 0
    for i, batch in enumerate(loader):
        got += len(batch["keys"])
        if batches is not None and i + 1 == batches:
            break
    return got


def warm(fn, *args) -> tuple[float, int]:
    """(seconds, samples) of the second of two runs."""
    fn(*args)
    t0 = time.perf_counter()
    n = fn(*args)
    return time.perf_counter() - t0, n


def run(n: int, out: Path, workers: int) -> dict:
    clips, images = make_tokens(CLIP, n, SEED), make_tokens(IMAGE, n, SEED + 1)
    paths = {k: out / k for k in ("clip_tokens.zarr", "clip_shards", "image_tokens.zarr", "image_shards", "memmap")}
    t0 = time.perf_counter()
    write_store(CLIP, clips, paths["clip_tokens.zarr"])
    write_store(IMAGE, images, paths["image_tokens.zarr"])
    t1 = time.perf_counter()
    export(paths["clip_tokens.zarr"], paths["clip_shards"])
    export_s = time.perf_counter() - t1
    export(paths["image_tokens.zarr"], paths["image_shards"])
    shutil.rmtree(paths["memmap"], ignore_errors=True)
    clip_tokens = sum(length for _, length, *_ in CLIP)
    rows = []

    def row(what: str, reader: str, seconds: float, samples: int, tokens_per_sample: float, w: int | None):
        rows.append({"data": what, "reader": reader, "workers": w, "samples": samples, "seconds": round(seconds, 3),
                     "samples_s": samples / seconds, "tokens_s": samples * tokens_per_sample / seconds})

    s, k = warm(read_memmap, clips, paths["memmap"] / "clips")
    row("clips", "numpy memmap, per sample (ceiling)", s, k, clip_tokens, None)
    for w in sorted({0, workers}):
        s, k = warm(load, [paths["clip_shards"]], w)
        row("clips", "TokenLoader, shard set", s, k, clip_tokens, w)
    s, k = warm(load, [paths["clip_tokens.zarr"]], 0)
    row("clips", "TokenLoader, token store", s, k, clip_tokens, 0)
    image_tokens = sum(length for _, length, *_ in IMAGE)
    s, k = warm(read_memmap, images, paths["memmap"] / "images")
    row("images", "numpy memmap, per sample (ceiling)", s, k, image_tokens, None)
    for w in sorted({0, workers}):
        s, k = warm(load, [paths["image_shards"]], w)
        row("images", "TokenLoader, shard set", s, k, image_tokens, w)
    mix_batches = n // BATCH  # about one epoch's worth of draws
    for w in sorted({0, workers}):
        s, k = warm(load, [paths["image_shards"], paths["clip_shards"]], w, mix_batches)
        row("images + clips 1:1", "TokenLoader, two shard sets", s, k, (image_tokens + clip_tokens) / 2, w)
    ceilings = {r["data"]: r["samples_s"] for r in rows if r["workers"] is None}
    for r in rows:  # against the memmap of the same data (none for the mixture)
        r["vs_memmap"] = round(r["samples_s"] / ceilings[r["data"]], 3) if r["data"] in ceilings else None
    return {"samples": n, "batch_size": BATCH, "samples_per_shard": SAMPLES_PER_SHARD, "unit_size": UNIT_SIZE,
            "clip": [{"name": m, "tokens": L, "vocab_size": V, "pad_id": p, "time": t} for m, L, V, p, t in CLIP],
            "image": [{"name": m, "tokens": L, "vocab_size": V, "pad_id": p} for m, L, V, p, _ in IMAGE],
            "clip_tokens": clip_tokens, "image_tokens": image_tokens, "cores": os.cpu_count(),
            "write_stores_s": round(t1 - t0, 2), "export_clips_s": round(export_s, 2),
            "versions": {d: metadata.version(d) for d in ("numpy", "torch", "zarr")},
            "reads": "warm (second of two)", "rows": rows}


def table(result: dict) -> str:
    lines = [f"{result['samples']} clips of {result['clip_tokens']} tokens, images of {result['image_tokens']}; "
             f"batch {result['batch_size']}, {result['cores']} cores",
             f"{'data':<20} {'reader':<36} {'workers':>7} {'samples/s':>10} {'Mtokens/s':>10} {'vs memmap':>9}"]
    for r in result["rows"]:
        w = "-" if r["workers"] is None else str(r["workers"])
        ratio = "-" if r["vs_memmap"] is None else f"{r['vs_memmap']:.2f}"
        lines.append(f"{r['data']:<20} {r['reader']:<36} {w:>7} {r['samples_s']:>10.0f} {r['tokens_s'] / 1e6:>10.2f} "
                     f"{ratio:>9}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/omnimill-bench-clips"))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "clip_shards.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0, load_start = time.perf_counter(), os.getloadavg()[0]
    result = run(args.samples, args.out, args.workers)
    # The load average says how much else ran: on a shared machine every figure is a share of its cores
    result.update(seconds=round(time.perf_counter() - t0), load_start=load_start, load_end=os.getloadavg()[0])
    print(table(result))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.results}")


if __name__ == "__main__":
    main()
