"""Token shard benchmark: write and full-read throughput of the same token data through several formats.

The same N samples of four 4M-like modalities (uint16 tokens) go, in one run, through:

1. raw numpy memmap, one flat (N, L) .npy per modality (np.lib.format.open_memmap): the ceiling. Its
   full read iterates over the samples in order, copying each sample's rows; a second variant reads
   slices of one batch (256 samples) at a time.
2. webdataset: webdataset.TarWriter, members `<key>.<modality>.npy`, shards of 1,000 samples;
   read with `webdataset.WebDataset(urls, shardshuffle=False).decode()`.
3. litdata: its BinaryWriter (what `litdata.optimize` runs in each worker), read with StreamingDataset.
4. mosaicml-streaming: MDSWriter with `ndarray:uint16:L` columns, read with StreamingDataset(local=...).
5. omnimill: the token store (Zarr, written here directly in the `omnimill.tokens/1` layout with the
   project's own array settings) and its WebDataset export (`omnimill.shards.wds.export_wds`), both read
   with `omnimill.shards.loader.TokenLoader`.

Section 1, one process: write time (samples/s; MB/s of the bytes the format puts on disk) and the time of
one full read (samples/s; MB/s of the raw token payload N x sum(L) x 2 bytes, the same for every format,
so MB/s ratios are sample-rate ratios). The peers' reads yield one sample at a time as numpy arrays;
omnimill's read is its TokenLoader with num_workers=0 (batches of int64 tensors + masks).
Section 2, loaders: batches of 256 as int64 torch tensors plus masks (what omnimill's collate builds, so
every row does the same work), num_workers 0 and 2: webdataset through WebLoader, litdata through its
StreamingDataLoader, streaming through torch's DataLoader, omnimill through TokenLoader. Each ratio is
against the memmap per-sample read of section 1. Worker start-up counts: it is paid every epoch.

Every read runs twice and the second (warm) one is reported: the page cache cannot be dropped without
root, so all formats are read from memory and the comparison is of CPU cost, not of disk speed. Nothing
is fsynced on write either. Tokens are drawn uniformly from each vocabulary by a seeded generator: such
data is incompressible apart from the unused high bits of uint16 (16 - log2(V) bits per token) and the
caption's padding, so compressed formats (omnimill's Zarr store) gain little here; real tokens compress
somewhat better.

    .venv/bin/python benchmarks/shards.py --samples 20000 [--out /tmp/omnimill-bench-shards]
        [--formats memmap,webdataset,litdata,streaming,omnimill] [--workers 2] [--unit-size 128]

memmap always runs (it is the denominator). Prints two tables and writes benchmarks/results/shards.json.

Peers. webdataset is a project dependency. litdata installs cleanly into the project's environment
(it adds lightning-utilities and obstore, and leaves torch, torchvision and numpy alone):
    .venv/bin/pip install "litdata==0.2.76"
mosaicml-streaming cannot go into it: every release from 0.11 to 0.13.0 pins numpy<2.2 and
transformers<5, so pip would downgrade numpy 2.4 -> 2.1.3 and transformers 5 -> 4.57 (and tokenizers and
huggingface_hub with it). Without it its rows are skipped with a message. To measure it anyway without
touching the environment, install it beside it, without its dependencies (its code runs fine on numpy 2.4):
    .venv/bin/pip install --target /tmp/omnimill-bench-peers --no-deps "mosaicml-streaming==0.13.0" \\
        "zstd<2" "xxhash<4" "python-snappy<1" cramjam "brotli>=1.0.9" "catalogue<3"
    PYTHONPATH=/tmp/omnimill-bench-peers .venv/bin/python benchmarks/shards.py

API notes. webdataset 1.0.2's TarWriter computes a tar `format` argument but never passes it to tarfile,
which therefore writes PAX; with the default mtime (time.time(), a float) every member gets a PAX header
(1 KB more per member, which more than doubles a 16-token member). A fixed integer mtime avoids it (and
makes the tars reproducible). litdata's BinaryWriter needs `done()` and then `merge()` to write index.json.
streaming's StreamingDataset needs `batch_size` to partition for a DataLoader and keeps its state in
shared memory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED = 0
BATCH = 256  # loader batch size, and the memmap batch-slice variant
SAMPLES_PER_SHARD = 1000  # webdataset and omnimill export shards; also litdata / streaming ~ same file count
# name, tokens per sample (L), vocabulary size (V), pad id (-1: fixed length, every token counts)
MODALITIES = [
    ("rgb_image", 256, 16384, -1),
    ("depth", 256, 8192, -1),
    ("dinov2_cls", 16, 8192, -1),
    ("caption", 64, 30522, 0),  # BERT-like ids, 0-padded after a random length of 8..64
]
FORMATS = ["memmap", "webdataset", "litdata", "streaming", "omnimill"]


# ---------------------------------------------------------------- data
def make_tokens(n: int) -> dict[str, np.ndarray]:
    """(N, L) uint16 per modality, uniform over the vocabulary; the caption padded with 0 on the tail."""
    rng = np.random.default_rng(SEED)
    data = {}
    for name, length, vocab, pad in MODALITIES:
        x = rng.integers(0 if pad < 0 else 1, vocab, (n, length), dtype=np.uint16)
        if pad >= 0:
            lengths = rng.integers(8, length + 1, n)
            x[np.arange(length)[None, :] >= lengths[:, None]] = pad
        data[name] = x
    return data


def payload_bytes(n: int) -> int:
    return n * sum(length for _, length, _, _ in MODALITIES) * 2


def sample(data: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {m: x[i] for m, x in data.items()}


def collate(samples: list[dict[str, np.ndarray]]) -> dict:
    """What omnimill's collate hands a trainer: int64 tokens and a bool mask (not padding) per modality.

    The peers' loaders use this too, so every loader row does the same work per batch."""
    import torch

    batch = {"tokens": {}, "masks": {}}
    for name, _, _, pad in MODALITIES:
        tokens = np.stack([s[name] for s in samples]).astype(np.int64)
        masks = tokens != pad if pad >= 0 else np.ones(tokens.shape, bool)
        batch["tokens"][name], batch["masks"][name] = torch.from_numpy(tokens), torch.from_numpy(masks)
    return batch


def batch_size(batch: dict) -> int:
    return len(next(iter(batch["tokens"].values())))


# ---------------------------------------------------------------- 1. raw numpy memmap (the ceiling)
def write_memmap(data: dict[str, np.ndarray], path: Path) -> None:
    for name, x in data.items():
        out = np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=np.uint16, shape=x.shape)
        for start in range(0, len(x), BATCH):  # block writes: what a writer holding a batch would do
            out[start:start + BATCH] = x[start:start + BATCH]
        out.flush()
        del out


def read_memmap(path: Path, step: int = 1) -> int:
    """Every sample in order, `step` samples at a time, copied out, so the pages are really read.

    np.asarray: a plain ndarray view of the mapping. Indexing the np.memmap itself builds a memmap object
    per slice (~5 us each, 5x slower per sample here), which is no part of what reading a mapping costs."""
    arrays = {name: np.asarray(np.load(path / f"{name}.npy", mmap_mode="r")) for name, _, _, _ in MODALITIES}
    n = len(arrays[MODALITIES[0][0]])
    count = 0
    for start in range(0, n, step):
        rows = {name: a[start:start + step].copy() for name, a in arrays.items()}
        count += len(rows[MODALITIES[0][0]])
    return count


# ---------------------------------------------------------------- 2. webdataset
def write_webdataset(data: dict[str, np.ndarray], path: Path) -> None:
    import webdataset as wds

    n = len(data[MODALITIES[0][0]])
    for shard, start in enumerate(range(0, n, SAMPLES_PER_SHARD)):
        # mtime=0: with the default (a float time.time()) every member gets a PAX header, see the docstring
        with wds.TarWriter(str(path / f"shard-{shard:06d}.tar"), mtime=0) as writer:
            for i in range(start, min(n, start + SAMPLES_PER_SHARD)):
                writer.write({"__key__": f"{i:08d}", **{f"{m}.npy": x for m, x in sample(data, i).items()}})


def _wds_urls(path: Path) -> list[str]:
    return [str(p) for p in sorted(path.glob("shard-*.tar"))]


def _wds_sample(s: dict) -> dict[str, np.ndarray]:
    return {name: s[f"{name}.npy"] for name, _, _, _ in MODALITIES}


def read_webdataset(path: Path) -> int:
    import webdataset as wds

    return sum(1 for _ in wds.WebDataset(_wds_urls(path), shardshuffle=False).decode())


def load_webdataset(path: Path, workers: int) -> int:
    import webdataset as wds

    # batched in the workers, like the other loaders; WebDataset splits the shards between workers itself
    dataset = (wds.WebDataset(_wds_urls(path), shardshuffle=False).decode().map(_wds_sample)
               .batched(BATCH, collation_fn=collate))
    return sum(batch_size(b) for b in wds.WebLoader(dataset, batch_size=None, num_workers=workers))


# ---------------------------------------------------------------- 3. litdata
def write_litdata(data: dict[str, np.ndarray], path: Path) -> None:
    from litdata.streaming.writer import BinaryWriter

    # One process, like the other writers (optimize() would fork workers). chunk_size in samples = the
    # webdataset shard size, so both have the same number of files.
    writer = BinaryWriter(str(path), chunk_size=SAMPLES_PER_SHARD)
    for i in range(len(data[MODALITIES[0][0]])):
        writer[i] = sample(data, i)
    writer.done()
    writer.merge()  # writes index.json; without it StreamingDataset finds no dataset


def read_litdata(path: Path) -> int:
    from litdata import StreamingDataset

    return sum(1 for _ in StreamingDataset(str(path)))


def load_litdata(path: Path, workers: int) -> int:
    from litdata import StreamingDataLoader, StreamingDataset

    loader = StreamingDataLoader(StreamingDataset(str(path)), batch_size=BATCH, num_workers=workers,
                                 collate_fn=collate)
    return sum(batch_size(b) for b in loader)


# ---------------------------------------------------------------- 4. mosaicml-streaming
def write_streaming(data: dict[str, np.ndarray], path: Path) -> None:
    from streaming import MDSWriter

    # fixed-shape ndarray columns: the shape lives in the column type, not in each sample
    columns = {name: f"ndarray:uint16:{length}" for name, length, _, _ in MODALITIES}
    shard_bytes = SAMPLES_PER_SHARD * (payload_bytes(1) + 8) + 4096  # one webdataset shard's samples per file
    with MDSWriter(out=str(path), columns=columns, size_limit=shard_bytes) as writer:
        for i in range(len(data[MODALITIES[0][0]])):
            writer.write(sample(data, i))


def _streaming_dataset(path: Path):
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()  # a previous instance's shared memory would make it refuse the same local dir
    return StreamingDataset(local=str(path), remote=None, shuffle=False, batch_size=BATCH)


def read_streaming(path: Path) -> int:
    return sum(1 for _ in _streaming_dataset(path))


def load_streaming(path: Path, workers: int) -> int:
    from torch.utils.data import DataLoader

    loader = DataLoader(_streaming_dataset(path), batch_size=BATCH, num_workers=workers, collate_fn=collate)
    return sum(batch_size(b) for b in loader)


# ---------------------------------------------------------------- 5. omnimill
# The token store is written here directly in the `omnimill.tokens/1` layout (see
# omnimill/store/tokens.py), one unit = one chunk after another, with the project's own array
# settings (unitstore.create_array: the codec `omnimill tokenize` writes with), so the files are what the
# project would write. The export and the loader are omnimill's own functions.
def omnimill_write_store(data: dict[str, np.ndarray], path: Path, unit_size: int) -> None:
    import zarr

    from omnimill.store.base import RUNS, create_array as _create, now as _now

    n = len(data[MODALITIES[0][0]])
    n_units = -(-n // unit_size)
    group = zarr.open_group(str(path), mode="w-")
    _create(group, "keys", (n,), (unit_size,), "str")[:] = np.array([f"{i:08d}" for i in range(n)], dtype=object)
    _create(group, "crops", (n, 1, 5), (unit_size, 1, 5), "int32")[:] = np.zeros((n, 1, 5), np.int32)
    runs = group.require_group(RUNS)
    for name, length, vocab, pad in MODALITIES:
        modality = group.create_group(name, overwrite=True)
        tokens = _create(modality, "tokens", (n, 1, length), (unit_size, 1, length), "uint16")
        ok = _create(modality, "ok", (n,), (unit_size,), "bool")
        units = _create(runs.create_group(name, overwrite=True), "units", (n_units,), (1,), "str")
        modality.attrs["tokenizer"] = {"path": "bench", "sha256": f"bench-{name}", "kind": "spatial",
                                       "vocab_size": vocab, "tokens_per_sample": length, "pad_id": pad,
                                       "teacher": "bench", "fields": ["x"]}
        for u in range(n_units):  # TokenStore.write_unit: the unit's chunks, then its marker
            start, stop = u * unit_size, min(n, (u + 1) * unit_size)
            tokens[start:stop] = data[name][start:stop, None, :]
            ok[start:stop] = True
            units[u] = json.dumps({"unit": u, "start": start, "stop": stop, "ok": stop - start, "skipped": 0})
    created = _now()
    group.attrs.update({  # last, as TokenStore.create: a store without `format` is an interrupted one
        "format": "omnimill.tokens/1", "omnimill_version": "bench", "created": created, "n": n, "n_crops": 1,
        "crop_seed": 0, "unit_size": unit_size,
        "source": {"store": "bench", "created": created, "n": n, "view_size": 224,
                   "corpus": {"uri": "bench", "kind": "folder"}},
    })


def omnimill_export_wds(store: Path, out: Path) -> None:
    from omnimill.shards.wds import export_wds

    export_wds(str(store), str(out), samples_per_shard=SAMPLES_PER_SHARD)


def omnimill_load(uri: Path, workers: int) -> int:
    from omnimill.shards.loader import TokenDataset, TokenLoader

    loader = TokenLoader(TokenDataset(str(uri)), batch_size=BATCH, num_workers=workers, shuffle_buffer=0,
                         epochs=1, crops="first")
    return sum(batch_size(b) for b in loader)


def omnimill_missing() -> str | None:
    """None when the omnimill hooks import, else why not."""
    try:
        import zarr  # noqa: F401

        import omnimill.store.labels  # noqa: F401
        import omnimill.shards.loader  # noqa: F401
        import omnimill.shards.wds  # noqa: F401
    except ImportError as e:
        return f"not available ({e})"
    return None


# ---------------------------------------------------------------- availability of the peers
def peer_missing(fmt: str) -> str | None:
    """None when the format's library imports, else a line saying why its rows are skipped."""
    try:  # imported here, so that no write or read below is timed with an import in it
        if fmt == "webdataset":
            import webdataset  # noqa: F401
        elif fmt == "litdata":
            import litdata  # noqa: F401
            import litdata.streaming.writer  # noqa: F401
        elif fmt == "streaming":
            import streaming  # noqa: F401
            import streaming.base.util  # noqa: F401
    except ImportError as e:
        hint = {"litdata": '.venv/bin/pip install "litdata==0.2.76"',
                "streaming": "mosaicml-streaming pins numpy<2.2 and transformers<5, which this environment cannot "
                             "take; see the docstring for installing it beside the environment (pip --target)"}[fmt]
        return f"not installed ({e}): {hint}"
    if fmt == "omnimill":
        return omnimill_missing()
    return None


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- measuring
def timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


def warm_read(fn, *args, n: int) -> float:
    """Seconds of the second of two full reads (the first warms the page cache); checks the sample count."""
    for _ in range(2):
        seconds, count = timed(fn, *args)
        if count != n:
            raise RuntimeError(f"read {count} samples, wrote {n}")
    return seconds


def disk_bytes(path: Path) -> tuple[int, int]:
    """(sum of file sizes, blocks allocated incl. directories as du counts them)."""
    files = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    du = int(subprocess.run(["du", "-sB1", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])
    return files, du


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def write_row(name: str, writer: str, reader: str, write_fn, read_fn, path: Path, n: int, note: str = "") -> dict:
    write_s, _ = timed(write_fn)
    files, du = disk_bytes(path)
    read_s = warm_read(read_fn, n=n)
    row = {"format": name, "writer": writer, "reader": reader, "write_s": round(write_s, 3),
           "write_samples_s": n / write_s, "files_bytes": files, "disk_bytes": du, "write_mb_s": du / 1e6 / write_s,
           "read_s": round(read_s, 3), "read_samples_s": n / read_s, "read_mb_s": payload_bytes(n) / 1e6 / read_s,
           "note": note}
    print(f"  {name}: write {write_s:.2f}s ({row['write_samples_s']:,.0f} samples/s, {du / 1e6:.1f} MB on disk), "
          f"read {read_s:.2f}s ({row['read_samples_s']:,.0f} samples/s)", flush=True)
    return row


def loader_row(name: str, fn, path: Path, workers: int, n: int) -> dict:
    read_s = warm_read(fn, path, workers, n=n)
    row = {"loader": name, "num_workers": workers, "read_s": round(read_s, 3), "samples_s": n / read_s,
           "mb_s": payload_bytes(n) / 1e6 / read_s}
    print(f"  {name}, {workers} workers: {read_s:.2f}s ({row['samples_s']:,.0f} samples/s)", flush=True)
    return row


def guarded(rows: list, what: dict, fn, *args) -> None:
    """Run one measurement; a failure is printed and recorded (as `what` + error), and the benchmark goes on."""
    try:
        rows.append(fn(*args))
    except Exception as e:  # noqa: BLE001 - one broken format must not cost the others' numbers
        label = ", ".join(f"{v} workers" if k == "num_workers" else str(v) for k, v in what.items())
        print(f"  {label}: failed: {error_text(e)}", flush=True)
        rows.append({**what, "error": error_text(e)})


def error_text(e: Exception) -> str:
    """One line; from a DataLoader worker's re-raised traceback, the line naming the original error."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
    original = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return original[-1] if original else f"{type(e).__name__}: {lines[0]}"


# ---------------------------------------------------------------- the run
# peer -> (writer, reader, write(data, path), read(path), loader, load(path, workers))
PEERS = {
    "webdataset": ("TarWriter(mtime=0)", "WebDataset.decode()", write_webdataset, read_webdataset,
                   "webdataset WebLoader", load_webdataset),
    "litdata": ("BinaryWriter", "StreamingDataset", write_litdata, read_litdata,
                "litdata StreamingDataLoader", load_litdata),
    "streaming": ("MDSWriter", "StreamingDataset", write_streaming, read_streaming,
                  "streaming DataLoader", load_streaming),
}


def memmap_rows(data: dict, path: Path, n: int) -> list[dict]:
    rows: list[dict] = []
    guarded(rows, {"format": "memmap"}, write_row, "memmap", "open_memmap", "per sample",
            lambda: write_memmap(data, fresh(path)), lambda: read_memmap(path), path, n, "the ceiling")
    if "error" not in rows[0]:  # the same files read a batch at a time: what a batch-reading loader could reach
        read_s = warm_read(read_memmap, path, BATCH, n=n)
        rows.append({**rows[0], "format": "memmap (batch slices)", "reader": f"slices of {BATCH}",
                     "read_s": round(read_s, 3), "read_samples_s": n / read_s,
                     "read_mb_s": payload_bytes(n) / 1e6 / read_s, "note": "same files as memmap"})
    return rows


def omnimill_rows(data: dict, store: Path, shards: Path, n: int, unit_size: int) -> list[dict]:
    def write_store():
        shutil.rmtree(store, ignore_errors=True)  # zarr's mode "w-", like TokenStore.create, wants no store
        omnimill_write_store(data, store, unit_size)

    def export():
        shutil.rmtree(shards, ignore_errors=True)
        omnimill_export_wds(store, shards)

    rows: list[dict] = []
    guarded(rows, {"format": "omnimill store"}, write_row, "omnimill store", "zarr (tokens.zarr layout)",
            "TokenLoader, 0 workers", write_store, lambda: omnimill_load(store, 0), store, n,
            "read = batches of int64 + masks")
    guarded(rows, {"format": "omnimill wds"}, write_row, "omnimill wds", "export_wds (reads the store)",
            "TokenLoader, 0 workers", export, lambda: omnimill_load(shards, 0), shards, n,
            "read = batches of int64 + masks")
    return rows


def run(formats: list[str], n: int, out: Path, workers: int, unit_size: int) -> tuple[list, list, dict]:
    data = make_tokens(n)
    skipped = {fmt: why for fmt in formats if (why := peer_missing(fmt))}
    print("\nsection 1: write, then a full read in one process", flush=True)
    rows = memmap_rows(data, out / "memmap", n)
    to_load = []  # (loader name, load function, path) of what was written
    for fmt in formats:
        if fmt in skipped:
            print(f"  {fmt}: {skipped[fmt]}", flush=True)
        elif fmt == "omnimill":
            store, shards = out / "tokens.zarr", out / "omnimill-wds"
            rows += omnimill_rows(data, store, shards, n, unit_size)
            written = {r["format"] for r in rows if "error" not in r}
            to_load += [(f"omnimill TokenLoader, {what}", omnimill_load, path) for what, path
                        in (("store", store), ("wds", shards)) if f"omnimill {what}" in written]
        else:
            writer, reader, write, read, loader, load = PEERS[fmt]
            path = out / fmt
            guarded(rows, {"format": fmt}, write_row, fmt, writer, reader, lambda: write(data, fresh(path)),
                    lambda: read(path), path, n)
            if "error" not in rows[-1]:
                to_load.append((loader, load, path))
    print(f"\nsection 2: loaders, batches of {BATCH} as int64 tensors + masks", flush=True)
    loaders: list[dict] = []
    for name, load, path in to_load:
        for w in sorted({0, workers}):
            guarded(loaders, {"loader": name, "num_workers": w}, loader_row, name, load, path, w, n)
    return rows, loaders, skipped


def add_ratios(rows: list[dict], loaders: list[dict]) -> None:
    ceiling = next((r["read_samples_s"] for r in rows if r.get("format") == "memmap" and "error" not in r), None)
    for r in rows:
        if "error" not in r and ceiling:
            r["read_vs_memmap"] = r["read_samples_s"] / ceiling
    for r in loaders:
        if "error" not in r and ceiling:
            r["vs_memmap"] = r["samples_s"] / ceiling


def tables(rows: list[dict], loaders: list[dict], skipped: dict) -> str:
    lines = ["| format | writer | write s | write samples/s | files MB | disk MB | write MB/s | reader | "
             "read samples/s | read MB/s | read vs memmap |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['format']} | failed: {r['error'][:80]} |||||||||")
            continue
        lines.append(f"| {r['format']} | {r['writer']} | {r['write_s']:.2f} | {r['write_samples_s']:,.0f} | "
                     f"{r['files_bytes'] / 1e6:.1f} | {r['disk_bytes'] / 1e6:.1f} | {r['write_mb_s']:.0f} | "
                     f"{r['reader']} | {r['read_samples_s']:,.0f} | {r['read_mb_s']:.0f} | "
                     f"{r.get('read_vs_memmap', float('nan')):.3f} |")
    for fmt, why in skipped.items():
        lines.append(f"| {fmt} | skipped: {why} |||||||||")
    lines += ["", "| loader | workers | read s | samples/s | MB/s | vs memmap per sample |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in loaders:
        if "error" in r:
            lines.append(f"| {r['loader']} | {r['num_workers']} | failed: {r['error'][:80]} ||||")
            continue
        lines.append(f"| {r['loader']} | {r['num_workers']} | {r['read_s']:.2f} | {r['samples_s']:,.0f} | "
                     f"{r['mb_s']:.0f} | {r.get('vs_memmap', float('nan')):.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--out", default="/tmp/omnimill-bench-shards", help="where the formats are written")
    parser.add_argument("--formats", default=",".join(FORMATS[1:]),
                        help=f"any of {','.join(FORMATS[1:])} (memmap, the denominator, always runs)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers in section 2 (beside 0)")
    parser.add_argument("--unit-size", type=int, default=128,
                        help="omnimill token store chunk = unit, in samples (omnimill's default: 128)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "shards.json"))
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f and f != "memmap"]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    warnings.filterwarnings("ignore", category=UserWarning)  # webdataset and litdata warn about defaults
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    versions = {d: version(d) for d in ("numpy", "torch", "zarr", "webdataset", "litdata", "mosaicml-streaming")}
    started = time.time()
    print(f"{args.samples:,} samples, {', '.join(f'{m} {l} tokens (V={v})' for m, l, v, _ in MODALITIES)}: "
          f"{payload_bytes(args.samples) / 1e6:.1f} MB of uint16 tokens; {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}; {', '.join(f'{k} {v}' for k, v in versions.items() if v)}", flush=True)
    rows, loaders, skipped = run(formats, args.samples, out, args.workers, args.unit_size)
    add_ratios(rows, loaders)
    print(f"\n{tables(rows, loaders, skipped)}\n")
    print("Reads: the second of two full reads (warm page cache: the cache cannot be dropped without root, so this\n"
          "compares CPU cost, not disk). Read MB/s = raw token payload (N x sum(L) x 2 B) / s for every format.\n"
          "Write MB/s = disk MB (du) / s; nothing fsynced. Tokens are uniform random: incompressible but for the\n"
          "unused high bits and the caption's padding. Loaders: worker start-up included (paid every epoch).\n"
          f"total {time.time() - started:.0f}s, load {os.getloadavg()[0]:.1f} at the end")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({
        "samples": args.samples, "batch_size": BATCH, "samples_per_shard": SAMPLES_PER_SHARD,
        "unit_size": args.unit_size, "modalities": [{"name": m, "tokens": l, "vocab_size": v, "pad_id": p}
                                                     for m, l, v, p in MODALITIES],
        "payload_bytes": payload_bytes(args.samples), "cores": os.cpu_count(), "versions": versions,
        "seconds": round(time.time() - started), "load_end": os.getloadavg()[0], "reads": "warm (second of two)",
        "rows": rows, "loaders": loaders, "skipped": skipped}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
