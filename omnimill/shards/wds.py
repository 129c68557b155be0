"""WebDataset token shards: plain tars any `webdataset` reader opens, plus a manifest that says what is in them.

    OUT/
      manifest.json          format omnimill.wds/1, source token store, n, n_crops, modalities {name: tokenizer
                             info + dtype + samples, + time {steps, of} for a clip's frames or audio
                             segments (the token store's own)}, shards [{name, samples, bytes, sha256,
                             first_key, last_key, modalities {name: samples}}]
      shard-000000.idx.npz   where each sample's tokens sit in the tar (keys, index, crops, per modality
                             the byte offset of its token payload, -1 when absent): omnimill's loader
                             cuts whole modalities out of a shard with one gather instead of walking
                             the tar. Plain webdataset readers never see it.
      shard-000000.tar       per sample, in token-store order:
                               <key>.json            {key, index, crops (n_crops, 5), modalities [...],
                                                      crc32 {modality: crc32 of its .npy member}}
                               <key>.<modality>.npy  (n_crops, L) uint16/int32 tokens, only for modalities
                                                     the sample has (absent is absent, never padded); with
                                                     a time axis L = steps x per_step, time-major

Members are written with mtime 0, uid/gid 0, no user names and the GNU tar format (no PAX headers), so the
same token store exports to byte-identical shards. Keys never hold dots (the corpus index replaces them),
so WebDataset's "split at the first dot" rule gives back the key and `<modality>.npy` as the extension;
`webdataset.WebDataset(urls).decode()` then hands out numpy arrays. The manifest is written last:
a folder without one is an unfinished export. A run notes each finished shard in OUT/_export/ (its
manifest row: the shard's commit marker) and the same command does only the shards not noted (the
folder goes once the manifest is written). An export streams samples and resumes after the last noted
shard; a text job (engine/text.py) writes each shard as a unit of its own (`write_shard`).

Trust: every file is written whole or not at all (`atomic_write`: temp name + rename locally, one PUT on
object stores), so a kill never leaves a torn manifest, note or shard that a rerun would believe; --force
removes only the names above (and _export/), never other files in OUT; OUT may not be or lie inside an
input (the token store, its label store, a text corpus, the tokenizer).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import zlib

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from omnimill import __version__
from omnimill.errors import UserError
from omnimill.files import write_atomic
from omnimill.corpus.listing import url_to_fs
from omnimill.paths import positive, refuse_overlap
from omnimill.shards.manifest import FORMAT, MANIFEST, join  # noqa: F401 (also wds names)
from omnimill.store.base import now

PROGRESS = "_export"  # finished shards of an export in progress
SHARD_NAME = "shard-{:06d}.tar"
OURS = re.compile(r"shard-\d{6,}\.(tar|idx\.npz)|manifest\.json")  # files an export writes in OUT


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def sample_members(key: str, index: int, crops: np.ndarray, tokens: dict[str, np.ndarray]) -> list[tuple[str, bytes]]:
    """One sample as tar members: the modality arrays, then the json that lists them with their crc32."""
    members = [(f"{key}.{name}.npy", npy_bytes(array)) for name, array in sorted(tokens.items())]
    meta = {"key": key, "index": int(index), "crops": np.asarray(crops).tolist(), "modalities": sorted(tokens),
            "crc32": {name: zlib.crc32(data) for (_, data), name in zip(members, sorted(tokens))}}
    return [(f"{key}.json", json.dumps(meta).encode())] + members


def write_shard(out: str, number: int, samples: list[tuple], storage_options: dict | None = None) -> dict:
    """Shard `number` of OUT: its tar and offset index, each written whole; returns its manifest row.
    `samples`: (key, index, crops, {modality: tokens}) in order. The shard is built in memory and written
    in one piece (one PUT on an object store); at 1000 samples that is a few MB."""
    from omnimill.shards.sources import group_members, scan_tar

    buffer, payload_crc, rows = io.BytesIO(), {}, []
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for key, index, crops, tokens in samples:
            for name, data in sample_members(key, index, crops, tokens):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
            rows.append((key, index, np.asarray(crops, np.int32), {m: t.nbytes for m, t in tokens.items()}))
            for m, t in tokens.items():  # crc32 of each modality's payloads in order: what the loader's gather reads
                payload_crc[m] = zlib.crc32(np.ascontiguousarray(t).data, payload_crc.get(m, 0))
    data = buffer.getvalue()
    name = SHARD_NAME.format(number)
    members = dict(group_members(scan_tar(data, name)))
    keys = [k for k, _, _, _ in rows]
    index = {"keys": np.array(keys), "index": np.array([i for _, i, _, _ in rows], np.int64),
             "crops": np.stack([c for _, _, c, _ in rows])}
    counts = {}
    for m in sorted({m for *_, sizes in rows for m in sizes}):
        offsets = np.full(len(keys), -1, np.int64)
        for row, (key, _, _, sizes) in enumerate(rows):
            if m in sizes:
                offset, size = members[key][f"{m}.npy"]
                offsets[row] = offset + size - sizes[m]  # skip the npy header: the payload ends the member
        index[f"{m}.offset"] = offsets
        counts[m] = int((offsets >= 0).sum())
    side = io.BytesIO()
    np.savez(side, **index)
    index_name = name.replace(".tar", ".idx.npz")
    for file_name, payload in ((name, data), (index_name, side.getvalue())):
        atomic_write(join(out, file_name), payload, storage_options)
    return {"name": name, "samples": len(keys), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "crc32": zlib.crc32(data),
            "first_key": keys[0], "last_key": keys[-1], "modalities": counts,
            "index": index_name, "index_sha256": hashlib.sha256(side.getvalue()).hexdigest(),
            "payload_crc32": dict(sorted(payload_crc.items()))}


class ShardWriter:
    """Writes numbered shards of at most `samples_per_shard` samples (`write_shard`) as samples stream in,
    and collects their manifest rows."""

    def __init__(self, out: str, samples_per_shard: int, storage_options: dict | None = None,
                 done: list[dict] | None = None, on_shard=None):
        positive("--samples-per-shard", samples_per_shard)
        self.out, self.per_shard, self.options = out, samples_per_shard, storage_options or {}
        self.shards: list[dict] = list(done or [])  # shards a resumed export already wrote
        self.on_shard = on_shard  # called with each finished shard's manifest row
        self._samples: list[tuple] = []

    def add(self, key: str, index: int, crops: np.ndarray, tokens: dict[str, np.ndarray]) -> None:
        if len(self._samples) == self.per_shard:
            self._close_shard()
        self._samples.append((key, index, crops, tokens))

    def _close_shard(self) -> None:
        if not self._samples:
            return
        self.shards.append(write_shard(self.out, len(self.shards), self._samples, self.options))
        self._samples = []
        if self.on_shard:
            self.on_shard(self.shards[-1])

    def close(self) -> list[dict]:
        self._close_shard()
        return self.shards


def export_wds(tokens_uri: str, out: str, samples_per_shard: int = 1000, modalities: list[str] | None = None,
               force: bool = False, storage_options: dict | None = None) -> dict:
    """Token store -> WebDataset shards + manifest.json. Samples keep the store's order; a sample with
    none of the chosen modalities (no teacher labelled it) is left out. Returns the manifest."""
    from omnimill.shards.sources import TokenStoreSource

    positive("--samples-per-shard", samples_per_shard)
    refuse_overlap(out, {"the token store": tokens_uri})
    source = TokenStoreSource(tokens_uri, storage_options, modalities)
    if source.labels:  # the label store the tokens were made from: an input too
        refuse_overlap(out, {"the label store": source.labels})
    chosen = list(source.modalities)
    incomplete = source.incomplete_units()
    if any(incomplete[m] for m in chosen):
        detail = "; ".join(f"{m}: {len(incomplete[m])} units" for m in chosen if incomplete[m])
        raise UserError(f"{tokens_uri} is not fully tokenized ({detail}); finish `omnimill tokenize` first")
    plan = {"tokens": tokens_uri, "created": source.created, "samples_per_shard": samples_per_shard,
            "modalities": chosen}

    def samples(skip: int):  # the samples after the first `skip` (those in finished shards)
        for unit in range(len(source.units)):
            columns = source.read_unit(unit)
            live = np.flatnonzero(columns.live())
            taken = min(skip, len(live))
            skip -= taken
            for i in live[taken:]:
                sample = columns.sample(i)
                yield (sample["__key__"], sample["__index__"], sample["__crops__"],
                       {m: sample[m] for m in chosen if m in sample})

    def manifest(shards: list[dict]) -> dict:
        counts = {m: sum(s["modalities"].get(m, 0) for s in shards) for m in chosen}
        return {"format": FORMAT, "omnimill_version": __version__, "created": now(),
                "source": {"tokens": tokens_uri, "created": source.created, "labels": source.labels},
                "n": sum(s["samples"] for s in shards), "n_crops": source.n_crops,
                "modalities": {m: {**source.modalities[m].info, "samples": counts[m]} for m in chosen},
                "shards": shards}

    return _write_set(out, plan, force, storage_options or {}, samples_per_shard, samples, manifest)


def _write_set(out: str, plan: dict, force: bool, options: dict, samples_per_shard: int, samples, manifest_of) -> dict:
    """Shards of `samples(skip)`, resumable: each finished shard is noted in OUT/_export/; the manifest is
    written last (on an object store it is the commit marker), then _export/ goes. A stream resumes after
    the unbroken run of noted shards from the first."""
    noted = open_set(out, plan, force, options)
    done = []
    while len(done) in noted:
        done.append(noted[len(done)])
    writer = ShardWriter(out, samples_per_shard, options, done, lambda row: note_shard(out, row, options))
    for sample in samples(sum(row["samples"] for row in done)):
        writer.add(*sample)
    manifest = manifest_of(writer.close())
    finish_set(out, manifest, options)
    return manifest


def note_shard(out: str, row: dict, storage_options: dict | None = None) -> None:
    """A shard is done once its tar and index are written: note it (its manifest row) in OUT/_export/."""
    atomic_write(join(out, f"{PROGRESS}/{row['name']}.json"), json.dumps(row).encode(), storage_options)


def finish_set(out: str, manifest: dict, storage_options: dict | None = None) -> None:
    """Write the manifest (last: on an object store it is the commit marker of the set), then drop _export/."""
    options = storage_options or {}
    atomic_write(join(out, MANIFEST), json.dumps(manifest, indent=1).encode(), options)
    fs, root = fsspec.core.url_to_fs(out, **options)
    fs.rm(join(root, PROGRESS), recursive=True)


def atomic_write(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write a whole file so that a kill leaves the old file or the new one, never a torn one. Locally: a
    temp name in the same folder (`.NAME.tmp`, which the same command overwrites and --force removes),
    fsync, os.replace. On object stores one PUT is already all or nothing."""
    fs, path = url_to_fs(url, storage_options)
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    write_atomic(path, data, temp=f".{name}.tmp")


def written_by_export(name: str) -> bool:
    """Names an export writes in OUT (and their temp names): the only files --force removes."""
    temp = re.fullmatch(r"\.(.+)\.tmp", name)
    return bool(OURS.fullmatch(temp.group(1) if temp else name))


def _read_json(fs, path: str):
    """The JSON in a file, or None when it does not parse (a write cut short by an older omnimill)."""
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None


def open_set(out: str, plan: dict, force: bool, storage_options: dict | None = None) -> dict[int, dict]:
    """Prepare OUT for the shard set `plan` describes; return {shard number: manifest row} of the shards an
    interrupted run of the same plan finished (`noted_shards`).

    A run notes each finished shard in OUT/_export/ (one small file per shard: no rewriting a growing
    list on an object store) and removes the folder once the manifest is written. --force removes only
    what an export writes (`written_by_export` names and _export/), and only when OUT shows an export
    (a manifest or _export/): `shard-000000.tar` is also webdataset's own naming, so a user's shards
    without either are refused, never deleted. Other files in OUT stay."""
    options = storage_options or {}
    fs, root = fsspec.core.url_to_fs(out, **options)
    names = {p.rstrip("/").rsplit("/", 1)[-1]: p for p in fs.ls(root, detail=False)} if fs.isdir(root) else {}
    manifest = _read_json(fs, names[MANIFEST]) if MANIFEST in names else None
    if manifest is not None and not (isinstance(manifest, dict) and manifest.get("format") == FORMAT):
        raise UserError(f"{out} holds a manifest.json omnimill did not write; choose another folder")
    if force:
        ours = sorted(n for n in names if n == PROGRESS or written_by_export(n))
        if ours and not (MANIFEST in names or PROGRESS in names):
            raise UserError(f"{out} holds {ours[0]} but no omnimill export (no manifest.json or {PROGRESS}/); "
                            f"choose another folder")
        for name in ours:
            fs.rm(names[name], recursive=True)
    elif names:
        if manifest is not None:
            raise UserError(f"{out} already holds an export (manifest.json); pass --force to redo it")
        if not fs.exists(join(root, f"{PROGRESS}/plan.json")):
            raise UserError(f"{out} is not empty; choose another folder or pass --force (it removes only the "
                            f"files of an earlier export)")
        if _read_json(fs, join(root, f"{PROGRESS}/plan.json")) != plan:
            raise UserError(f"{out} holds an unfinished export of other settings; rerun it with those, or "
                            f"pass --force to start again")
        return noted_shards(out, options)
    fs.makedirs(join(root, PROGRESS), exist_ok=True)
    atomic_write(join(out, f"{PROGRESS}/plan.json"), json.dumps(plan).encode(), options)
    return {}


def noted_shards(out: str, storage_options: dict | None = None) -> dict[int, dict]:
    """{shard number: manifest row} of the shards noted in OUT/_export/ whose tar has its recorded size and
    whose index exists; an unreadable note or a short tar is not finished (it is written again)."""
    fs, root = fsspec.core.url_to_fs(out, **(storage_options or {}))
    sizes = {p["name"].rstrip("/").rsplit("/", 1)[-1]: p["size"] for p in fs.ls(root, detail=True)}
    done = {}
    for path in fs.glob(join(root, f"{PROGRESS}/shard-*.tar.json")):
        row = _read_json(fs, path)
        name = path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
        number = re.fullmatch(r"shard-(\d+)\.tar", name)
        if (number and isinstance(row, dict) and row.get("name") == name and sizes.get(name) == row.get("bytes")
                and row.get("index") in sizes):
            done[int(number.group(1))] = row
    return done
