"""`omnimill shards verify`: is a token store or shard set whole, aligned and in vocabulary?

Token store: every modality has N rows of (n_crops, L) tokens, every unit is committed, tokens of
tokenized samples lie in [0, vocab), the `ok` counts agree with the commit markers, and the keys are the
label store's keys (when the label store can be opened).
Shard set: every shard in the manifest exists with its recorded size and sha256; each sample's members sit
together under one key, the json's key and index match, every modality it lists is present with the
recorded crc32, shape (n_crops, L) and tokens in [0, vocab); indices increase across shards; sample and
per-modality counts match the manifest. Problems name the shard (or modality) and the sample.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass

import fsspec
import numpy as np

from omnimill.errors import UserError
from omnimill.shards.sources import (DamagedSample, Modality, decode_sample, group_members, is_shard_set, scan_tar,
                                      unit_from_index, unit_from_tar)
from omnimill.paths import positive
from omnimill.shards.manifest import join, read_manifest


@dataclass
class Problem:
    where: str  # shard file or modality
    key: str  # sample key, "-" when the problem is not one sample's
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" if self.key == "-" else f"{self.where}: sample {self.key}: {self.reason}"


def verify(uri: str, storage_options: dict | None = None, max_problems: int = 100) -> dict:
    """-> {kind, uri, samples, units, modalities, problems: [Problem as dict]}; ok when problems is empty."""
    positive("max_problems", max_problems)  # 0 (or less) would report a damaged set as whole
    if is_shard_set(uri, storage_options):
        report = _verify_shards(uri, storage_options or {})
    else:
        report = _verify_store(uri, storage_options)
    report["problems"] = [asdict(p) for p in report["problems"][:max_problems]]
    return report


def _out_of_vocab(tokens: np.ndarray, m: Modality) -> bool:
    return bool(tokens.size) and (int(tokens.min()) < 0 or int(tokens.max()) >= m.vocab_size)


def _verify_store(uri: str, storage_options: dict | None) -> dict:
    from omnimill.store.labels import LabelStore
    from omnimill.shards.sources import TokenStoreSource

    source = TokenStoreSource(uri, storage_options)
    store, problems = source.store, []
    keys = store.keys()
    if len(keys) != store.n:
        problems.append(Problem("keys", "-", f"{len(keys)} keys, the store says n = {store.n}"))
    if (keys == "").any():
        problems.append(Problem("keys", "-", f"{int((keys == '').sum())} empty keys"))
    if len(set(keys.tolist())) != len(keys):
        problems.append(Problem("keys", "-", "keys are not unique"))
    labels_uri = store.source.get("store")
    if labels_uri and LabelStore.exists(labels_uri):
        label_keys = LabelStore.open(labels_uri).keys()
        if len(label_keys) != len(keys) or (label_keys != keys).any():
            i = int(np.argmax(label_keys[:len(keys)] != keys[:len(label_keys)])) if len(label_keys) == len(keys) else -1
            problems.append(Problem("keys", str(keys[i]) if i >= 0 else "-",
                                    f"not aligned with the label store {labels_uri}"))
    for name, m in source.modalities.items():
        tokens = store.reader(f"{name}/tokens")  # read unit by unit below
        if tokens.shape != (store.n, store.n_crops, m.length):
            problems.append(Problem(name, "-", f"tokens have shape {tokens.shape}, expected "
                                               f"{(store.n, store.n_crops, m.length)}"))
            continue
        markers = store.markers(name)
        for u, marker in enumerate(markers):
            plan = store.unit(u)
            if marker is None:
                problems.append(Problem(name, "-", f"unit {u} (samples {plan.start}-{plan.stop - 1}) not tokenized"))
                continue
            ok = store.read(f"{name}/ok", slice(plan.start, plan.stop))
            if int(ok.sum()) != marker["ok"]:
                problems.append(Problem(name, "-", f"unit {u}: {int(ok.sum())} samples marked ok, the commit "
                                                   f"marker says {marker['ok']}"))
            rows = tokens[plan.start:plan.stop][ok]
            bad = [i for i in range(len(rows)) if _out_of_vocab(rows[i], m)]
            for i in bad[:3]:
                problems.append(Problem(name, str(keys[plan.start + np.flatnonzero(ok)[i]]),
                                        f"token outside the vocabulary [0, {m.vocab_size})"))
    return {"kind": "token store", "uri": uri, "samples": store.n, "units": store.n_units,
            "modalities": sorted(source.modalities), "problems": problems}


def _verify_shards(uri: str, options: dict) -> dict:
    manifest = read_manifest(uri, options)
    root = uri[: -len("manifest.json")].rstrip("/") if uri.endswith("manifest.json") else uri.rstrip("/")
    modalities = {m: Modality.from_info(m, info) for m, info in manifest["modalities"].items()}
    n_crops, problems, samples, last_index = int(manifest["n_crops"]), [], 0, -1
    counts = dict.fromkeys(modalities, 0)
    for shard in manifest["shards"]:
        name = shard["name"]
        try:
            with fsspec.open(join(root, name), "rb", **options) as f:
                data = f.read()
        except FileNotFoundError:
            problems.append(Problem(name, "-", "missing"))
            continue
        if len(data) != shard["bytes"]:
            problems.append(Problem(name, "-", f"{len(data)} bytes, the manifest says {shard['bytes']} (truncated?)"))
        elif hashlib.sha256(data).hexdigest() != shard["sha256"]:
            problems.append(Problem(name, "-", "sha256 differs from the manifest (damaged bytes)"))
        seen = 0
        try:
            for key, spans in group_members(scan_tar(data, name)):
                members = {ext: data[offset:offset + size] for ext, (offset, size) in spans.items()}
                seen += 1
                try:
                    sample = decode_sample(key, members, list(modalities), where=name)
                except DamagedSample as e:
                    problems.append(Problem(name, key, e.reason))
                    continue
                meta = json.loads(members["json"])
                if meta.get("key") != key:
                    problems.append(Problem(name, key, f"json names another key ({meta.get('key')!r})"))
                if sample["__index__"] <= last_index:
                    problems.append(Problem(name, key, f"index {sample['__index__']} after {last_index}: samples "
                                                       f"out of order or repeated"))
                last_index = sample["__index__"]
                extra = sorted(set(members) - {"json"} - {f"{m}.npy" for m in meta["modalities"]})
                if extra:
                    problems.append(Problem(name, key, f"members not listed in its json: {', '.join(extra)}"))
                for m, tokens in sample.items():
                    if m.startswith("__"):
                        continue
                    counts[m] += 1
                    spec = modalities[m]
                    if tokens.shape != (n_crops, spec.length):
                        problems.append(Problem(name, key, f"{m} has shape {tokens.shape}, expected "
                                                           f"{(n_crops, spec.length)}"))
                    elif _out_of_vocab(tokens.astype(np.int64), spec):
                        problems.append(Problem(name, key, f"{m} token outside the vocabulary [0, {spec.vocab_size})"))
        except DamagedSample as e:  # a damaged header or truncation: the samples before it were checked
            problems.append(Problem(name, e.key, e.reason))
        if "index" in shard and not any(p.where == name for p in problems):
            problems += _check_index(root, shard, data, modalities, n_crops, options)
        if seen != shard["samples"]:
            problems.append(Problem(name, "-", f"{seen} samples, the manifest says {shard['samples']}"))
        samples += seen
    for m, spec in manifest["modalities"].items():
        if counts[m] != spec["samples"]:
            problems.append(Problem(m, "-", f"{counts[m]} samples have it, the manifest says {spec['samples']}"))
    return {"kind": "shard set", "uri": uri, "samples": samples, "units": len(manifest["shards"]),
            "modalities": sorted(modalities), "problems": problems}


def _check_index(root: str, shard: dict, data: bytes, modalities: dict, n_crops: int, options: dict) -> list:
    """The offset index must exist, match its sha256, and give the same tokens as walking the tar."""
    name = shard["index"]
    try:
        with fsspec.open(join(root, name), "rb", **options) as f:
            raw = f.read()
    except FileNotFoundError:
        return [Problem(name, "-", "missing (the loader needs it; re-export the shard set)")]
    if hashlib.sha256(raw).hexdigest() != shard["index_sha256"]:
        return [Problem(name, "-", "sha256 differs from the manifest (damaged bytes)")]
    index = np.load(io.BytesIO(raw), allow_pickle=False)
    fast = unit_from_index(data, {k: index[k] for k in index.files}, name, modalities, n_crops)
    slow = unit_from_tar(data, shard["name"], shard["samples"], modalities, n_crops)
    for m in modalities:
        differs = np.flatnonzero((fast.present[m] != slow.present[m]) |
                                 (slow.present[m] & (fast.tokens[m] != slow.tokens[m]).any(axis=(1, 2))))
        if len(differs):
            return [Problem(name, str(slow.keys[differs[0]]), f"points at other {m} tokens than the tar holds")]
    return []


def check_exists(uri: str, storage_options: dict | None = None) -> None:
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if not fs.exists(path):
        raise UserError(f"{uri} does not exist; give a token store (tokens.zarr) or a shard set (a folder with "
                        f"manifest.json)")
