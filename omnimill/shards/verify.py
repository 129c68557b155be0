"""`omnimill shards verify`: is a token store or shard set whole, aligned and in vocabulary?

Token store: every modality has N rows of (n_crops, L) tokens, every unit is committed, tokens of
tokenized samples lie in [0, vocab), the `ok` counts agree with the commit markers, and the keys are the
label store's keys (when the label store can be opened). A modality's time axis (`time: {steps, of}`) must
split L evenly and, when the label store opens, match its clips: `of: frames` has the store's T frames,
`of: audio_segments` its K segments, and a frame teacher's modality of a clip store has `of: frames`.
Shard set: every shard in the manifest exists with its recorded size and sha256; each sample's members sit
together under one key, the json's key and index match, every modality it lists is present with the
recorded crc32, shape (n_crops, L) and tokens in [0, vocab); indices increase across shards; sample and
per-modality counts match the manifest; each modality's time entry is well formed. Problems name the
shard (or modality) and the sample.
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
                                      time_problem, unit_from_index, unit_from_tar)
from omnimill.paths import positive
from omnimill.shards.manifest import MANIFEST, join, read_manifest


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
    if is_shard_set(uri, storage_options) and _manifest_format(uri, storage_options) == FOURM_FORMAT:
        report = _verify_4m(uri, storage_options or {})
    elif is_shard_set(uri, storage_options):
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

    try:
        source = TokenStoreSource(uri, storage_options)
    except UserError as e:
        if "time" not in str(e):  # not a store, or not ours: said as today
            raise
        return {"kind": "token store", "uri": uri, "samples": 0, "units": 0, "modalities": [],
                "problems": [Problem("time", "-", str(e))]}
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
        problems += _time_against_labels(source, LabelStore.open(labels_uri))
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


def _time_against_labels(source, labels) -> list[Problem]:
    """Each time axis has as many steps as the label store's clips have frames (or audio segments), and a
    frame teacher's modality of a clip store has one over its frames."""
    problems, settings = [], labels.kind.settings()
    teachers = set(labels.teachers())
    for name, m in source.modalities.items():
        if m.time_steps and settings.get(m.time_of) != m.time_steps:
            has = f"{settings[m.time_of]} {m.time_of}" if m.time_of in settings else f"no {m.time_of}"
            problems.append(Problem(name, "-", f"{m.time_steps} time steps of {m.time_of}, but the label store's "
                                               f"samples have {has}"))
        teacher = m.info.get("teacher")
        frame_teacher = teacher in teachers and labels.provenance(teacher).get("sees", "frames") == "frames"
        if labels.sample_kind == "clip" and frame_teacher and m.time_of != "frames":
            problems.append(Problem(name, "-", f"tokens of frame teacher {teacher} in a clip store, but no time "
                                               f"axis over its {settings.get('frames')} frames"))
    return problems


def _verify_shards(uri: str, options: dict) -> dict:
    manifest = read_manifest(uri, options)
    root = uri[: -len("manifest.json")].rstrip("/") if uri.endswith("manifest.json") else uri.rstrip("/")
    problems, modalities = [], {}
    for m, info in manifest["modalities"].items():
        problem = time_problem(info)
        if problem:  # reported; the shards are still checked as if it had no time axis
            problems.append(Problem(m, "-", f"manifest: {problem}"))
            info = {k: v for k, v in info.items() if k != "time"}
        modalities[m] = Modality.from_info(m, info)
    n_crops, samples, last_index = int(manifest["n_crops"]), 0, -1
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


# ---------------------------------------------------------------- ml-4m shard sets (`export --format 4m`)
FOURM_FORMAT = "omnimill.4m/1"


def _manifest_format(uri: str, options: dict | None) -> str | None:
    path = uri if uri.endswith(MANIFEST) else join(uri, MANIFEST)
    try:
        with fsspec.open(path, "r", **(options or {})) as f:
            return json.load(f).get("format")
    except (FileNotFoundError, ValueError, AttributeError):
        return None  # read_manifest says what is wrong with it


def _verify_4m(uri: str, options: dict) -> dict:
    """Every file the manifest lists, whole (bytes, sha256); in every shard each sample holds exactly its
    dataset's domains, crop settings (n_crops, 5) and token arrays (n_crops, L) within the vocabulary; sample
    counts match. Problems name the shard and the sample."""
    from omnimill.shards.fourm_domains import member

    root = uri[: -len(MANIFEST)].rstrip("/") if uri.endswith(MANIFEST) else uri.rstrip("/")
    with fsspec.open(join(root, MANIFEST), "r", **options) as f:
        manifest = json.load(f)
    n_crops, problems, samples = int(manifest["n_crops"]), [], 0
    config = manifest["config"]
    data = _read(join(root, config["name"]), options)
    if data is None or len(data) != config["bytes"] or hashlib.sha256(data).hexdigest() != config["sha256"]:
        problems.append(Problem(config["name"], "-", "missing or not as the manifest records it"))
    lengths = {d: (int(info["tokenizer"]["tokens_per_sample"]), int(info["tokenizer"]["vocab_size"]))
               for d, info in manifest["domains"].items() if "tokenizer" in info}
    for name, dataset in manifest["datasets"].items():
        wanted = {member(d) for d in dataset["domains"]} | {member("crop_settings")}
        counted = 0
        for shard in dataset["shards"]:
            where = shard["name"]
            data = _read(join(root, where), options)
            if data is None:
                problems.append(Problem(where, "-", "missing"))
                continue
            if len(data) != shard["bytes"] or hashlib.sha256(data).hexdigest() != shard["sha256"]:
                problems.append(Problem(where, "-", "bytes or sha256 differ from the manifest (damaged)"))
                continue
            for key, spans in group_members(scan_tar(data, where)):
                counted += 1
                have = set(spans)
                if have != wanted:
                    problems.append(Problem(where, key, f"members {sorted(have ^ wanted)} differ from the dataset's"))
                    continue
                problems += _check_4m_arrays(where, key, data, spans, n_crops, lengths)
        samples += counted
        if counted != dataset["samples"]:
            problems.append(Problem(name, "-", f"{counted} samples, the manifest says {dataset['samples']}"))
    return {"kind": "4m shard set", "uri": uri, "samples": samples, "units": sum(len(d["shards"]) for d in
            manifest["datasets"].values()), "modalities": sorted(manifest["domains"]), "problems": problems}


def _check_4m_arrays(where: str, key: str, data: bytes, spans: dict, n_crops: int, lengths: dict) -> list:
    problems = []
    for ext, (offset, size) in spans.items():
        if not ext.endswith(".npy"):
            continue
        try:
            array = np.load(io.BytesIO(data[offset:offset + size]), allow_pickle=False)
        except ValueError as e:
            problems.append(Problem(where, key, f"{ext} does not load ({e})"))
            continue
        domain = ext[:-len(".npy")]
        if domain == "crop_settings":
            if array.shape != (n_crops, 5):
                problems.append(Problem(where, key, f"crop_settings has shape {array.shape}, not ({n_crops}, 5)"))
        elif domain in lengths:
            length, vocab = lengths[domain]
            if array.shape != (n_crops, length):
                problems.append(Problem(where, key, f"{domain} has shape {array.shape}, not ({n_crops}, {length})"))
            elif array.size and (int(array.min()) < 0 or int(array.max()) >= vocab):
                problems.append(Problem(where, key, f"{domain} holds tokens outside [0, {vocab})"))
    return problems


def _read(path: str, options: dict) -> bytes | None:
    try:
        with fsspec.open(path, "rb", **options) as f:
            return f.read()
    except FileNotFoundError:
        return None
