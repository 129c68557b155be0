"""ml-4m shards: a token store (and its label store) as WebDataset tars that apple/ml-4m's trainer reads
unchanged (`run_training_4m.py --data_config OUT/data_config.yaml`), with the data config beside them.

    OUT/
      manifest.json        format omnimill.4m/1: source token store and label store (uri, uuid), n, n_crops,
                           view_size, samples left out and why, the key encoding (key_map), per domain where
                           it came from and its tokenizer, shape warnings, per dataset its domains, samples,
                           weight, data_path and shards [{name, samples, bytes, sha256, first_key, last_key}],
                           the data config's sha256
      data_config.yaml     ml-4m's data config: train: datasets: {ds00: {type: multimodal, use_wds: true,
                           data_path, in_domains, out_domains, input_alphas, target_alphas, ...}, ...},
                           weights: [share of samples per dataset]
      ds00/shard-000000.tar  per sample (members sorted by name; domains in shards/fourm_domains.py):
                             <key>.crop_settings.npy    (n_crops, 5) int64 (top, left, h, w, flip) in view
                                                        pixels, crop 0 the whole view (the token store's crops)
                             <key>.rgb.jpg              the canonical view (view_size x view_size)
                             <key>.tok_<name>.npy       (n_crops, L) int16 tokens (int32 past 32768 codes)
                             <key>.caption.txt / det.json / metadata.json / color_palette.json  (raw)

Every sample of a dataset holds every domain the dataset lists (ml-4m's loader picks each listed domain
out of every sample and stops with a KeyError on a missing one), so samples are grouped by the set of
domains they have: one dataset (one folder) per set, largest first, weighted by its share of samples.
A sample with no pre-tokenized domain is left out (ml-4m's pre-tokenized augmenter needs crop settings;
its random-crop path does not read these shards), and counted in the manifest.

Keys: webdataset splits a member name at the first dot, so a key's "%" and "." are written as "%25" and
"%2E" (omnimill's keys have no dots; older stores may); the manifest's key_map lists every changed key.

Shapes: each token domain's length and vocabulary are checked against ml-4m's (fourm_domains.EXPECTED)
before anything is written; a mismatch is a UserError naming the fix. `allow_shapes` writes anyway (tests
with tiny tokenizers) and records each mismatch in the manifest's warnings.

Trust, as in shards/wds.py: every file is written whole (`atomic_write`); OUT/_export/plan.json marks an
export in progress and the manifest is written last (`finish_set`), so a folder without a manifest is
unfinished. A rerun of an unfinished export starts it over (4m exports do not resume shard by shard).
--force removes only what a 4m export writes (manifest.json, data_config.yaml, _export/, and shard tars
in dsNN/ folders); other files stay. OUT may not be or lie inside the token store or the label store, and
may not hold `[ ] { }` (ml-4m reads them as brace and modality patterns in data_path).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import yaml
from PIL import Image

from omnimill import __version__
from omnimill.corpus.listing import url_to_fs
from omnimill.errors import UserError
from omnimill.paths import positive, refuse_overlap
from omnimill.shards.fourm_domains import EXPECTED, RAW, VIEW, member, shape_problem, token_domain
from omnimill.shards.fourm_labels import LabelReader, open_labels
from omnimill.shards.manifest import MANIFEST, join
from omnimill.shards.wds import PROGRESS, atomic_write, finish_set, npy_bytes
from omnimill.store.base import now
from omnimill.store.tokens import TokenStore

FORMAT = "omnimill.4m/1"
CONFIG = "data_config.yaml"
SHARD_NAME = "shard-{:06d}.tar"
DATASET = re.compile(r"ds\d{2,}")  # dataset folders a 4m export writes in OUT
SHARD = re.compile(r"\.?shard-\d{6,}\.tar(\.tmp)?")  # shard tars (and their temp names) in a dataset folder
TOP = re.compile(r"\.?(manifest\.json|data_config\.yaml)(\.tmp)?")
JPEG_QUALITY = 95
ALPHA = "0.5"  # Dirichlet concentration for inputs and targets (ml-4m's *_a0.5 configs); edit the YAML


def encode_key(key: str) -> str:
    return key.replace("%", "%25").replace(".", "%2E")


def decode_key(key: str) -> str:
    return key.replace("%2E", ".").replace("%25", "%")


@dataclass
class Dataset:
    name: str
    domains: tuple[str, ...]  # domains every sample holds (rgb@224 included; crop_settings is always there)
    samples: int
    shards: list[dict] = field(default_factory=list)
    pending: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)


def export_4m(tokens_uri: str, out: str, samples_per_shard: int = 1000, modalities: list[str] | None = None,
              force: bool = False, allow_shapes: bool = False, storage_options: dict | None = None,
              labels_uri: str | None = None) -> dict:
    """Token store -> ml-4m shards + data_config.yaml + manifest.json. Returns the manifest."""
    positive("--samples-per-shard", samples_per_shard)
    if re.search(r"[\[\]{}]", out):
        raise UserError(f"{out} holds [ ] {{ or }}, which ml-4m reads as patterns in data_path; choose another folder")
    refuse_overlap(out, {"the token store": tokens_uri})
    options = storage_options or {}
    store = TokenStore.open(tokens_uri, "r", options)
    labels = open_labels(store, options, labels_uri)
    refuse_overlap(out, {"the label store": labels.uri})
    tokens, raw = choose_domains(store, LabelReader.available(labels), modalities)
    incomplete = {m: int((~store.done_units(m)).sum()) for m in tokens.values()}
    if any(incomplete.values()):
        detail = "; ".join(f"{m}: {k} units" for m, k in incomplete.items() if k)
        raise UserError(f"{tokens_uri} is not fully tokenized ({detail}); finish `omnimill tokenize` first")
    infos = {d: store.tokenizer_info(m) for d, m in tokens.items()}
    problems = [p for d, m in tokens.items() if (p := shape_problem(d, m, infos[d]))]
    if problems and not allow_shapes:
        raise UserError("; ".join(problems) + " (or pass --allow-shapes to write them anyway)")

    reader = LabelReader(labels, raw, options)
    subset, datasets, left_out = group_samples(store, reader, tokens, raw)
    plan = {"tokens": tokens_uri, "tokens_uuid": store.uuid, "samples_per_shard": samples_per_shard,
            "domains": sorted([*tokens, *raw]), "allow_shapes": allow_shapes}
    prepare_out(out, plan, force, options)

    key_map = write_datasets(out, store, reader, tokens, infos, subset, datasets, samples_per_shard, options)
    root = data_root(out)
    config = yaml.safe_dump(data_config(root, datasets), sort_keys=False, width=1000).encode()
    atomic_write(join(out, CONFIG), config, options)
    counts = Counter()
    for ds in datasets:
        counts.update({d: ds.samples for d in ds.domains})
    manifest = {
        "format": FORMAT, "omnimill_version": __version__, "created": now(),
        "source": {"tokens": tokens_uri, "tokens_uuid": store.uuid, "tokens_created": store.created,
                   "labels": labels.uri, "labels_uuid": labels.uuid},
        "n": sum(ds.samples for ds in datasets), "n_crops": store.n_crops, "view_size": labels.view_size,
        "left_out": left_out,
        "keys": "'%' written as '%25' and '.' as '%2E' (webdataset splits member names at the first dot)",
        "key_map": key_map,
        "domains": {VIEW: {"from": "canonical view (label store rgb/image, else decoded from the corpus)",
                           "samples": counts[VIEW]},
                    **{d: {"from": f"token store {m}", "samples": counts[d], "tokenizer": infos[d],
                           "expected": {"tokens_per_sample": EXPECTED[d][0], "vocab_size": EXPECTED[d][1]}}
                       for d, m in tokens.items()},
                    **{d: {"from": "label store (raw)", "samples": counts[d]} for d in raw}},
        "warnings": problems,
        "datasets": {ds.name: {"domains": list(ds.domains), "samples": ds.samples,
                               "weight": ds.samples / max(1, sum(x.samples for x in datasets)),
                               "data_path": shard_pattern(root, ds), "shards": ds.shards} for ds in datasets},
        "config": {"name": CONFIG, "bytes": len(config), "sha256": hashlib.sha256(config).hexdigest()},
    }
    finish_set(out, manifest, options)
    return manifest


def choose_domains(store: TokenStore, raw_available: list[str], names: list[str] | None) -> tuple[dict, list]:
    """({token domain: token-store modality}, [raw domains]) to export: all ml-4m knows, or those named
    (by ml-4m domain or by token-store modality)."""
    candidates = [(d, m) for m in store.modalities() if (d := token_domain(store.tokenizer_info(m)))]
    if names:
        known = {d for d, _ in candidates} | {m for _, m in candidates} | set(raw_available)
        unknown = sorted(set(names) - known)
        if unknown:
            raise UserError(f"no ml-4m domain {', '.join(unknown)} in {store.uri}; it has "
                            f"{', '.join(sorted({d for d, _ in candidates} | set(raw_available)))}")
        candidates = [(d, m) for d, m in candidates if d in names or m in names]
        raw_available = [d for d in raw_available if d in names]
    tokens: dict[str, str] = {}
    for d, m in candidates:
        if d in tokens:
            raise UserError(f"token-store modalities {tokens[d]} and {m} both map to ml-4m's {d}; "
                            f"choose one with --modality")
        tokens[d] = m
    if not tokens:
        raise UserError(f"{store.uri} has no modality ml-4m reads pre-tokenized (its modalities: "
                        f"{', '.join(store.modalities())}); tokenize one of {', '.join(EXPECTED)}")
    return tokens, [d for d in RAW if d in raw_available]


def blocks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def group_samples(store: TokenStore, reader: LabelReader, tokens: dict[str, str], raw: list[str]):
    """Which dataset each sample goes to (-1: left out), the datasets (largest first), and left-out counts."""
    domains = [*tokens, *raw]
    codes = np.zeros((store.n, len(domains)), bool)
    for rows in blocks(store.n, store.unit_size):
        for j, d in enumerate(domains):
            codes[rows, j] = store.read(f"{tokens[d]}/ok", rows) if d in tokens else reader.present(d, rows)
    eligible = codes[:, :len(tokens)].any(axis=1)
    if not eligible.any():
        raise UserError(f"no sample of {store.uri} has tokens of {', '.join(tokens.values())}; nothing to export")
    sets, inverse = np.unique(codes[eligible], axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    sizes = np.bincount(inverse, minlength=len(sets))
    order = sorted(range(len(sets)), key=lambda s: (-sizes[s], [d for d, on in zip(domains, sets[s]) if not on]))
    datasets = [Dataset(f"ds{i:02d}", tuple(sorted([VIEW, *(d for d, on in zip(domains, sets[s]) if on)])),
                        int(sizes[s])) for i, s in enumerate(order)]
    rank = np.empty(len(sets), np.int64)
    rank[order] = np.arange(len(order))
    subset = np.full(store.n, -1, np.int64)
    subset[eligible] = rank[inverse]
    left_out = {"no pre-tokenized domain (ml-4m needs one for its crop settings)": int((~eligible).sum())}
    return subset, datasets, left_out


def write_datasets(out: str, store: TokenStore, reader: LabelReader, tokens: dict[str, str], infos: dict,
                   subset: np.ndarray, datasets: list[Dataset], per_shard: int, options: dict) -> dict:
    """Stream the store once, block by block, into each dataset's shards; returns the key map."""
    key_map = {}
    for rows in blocks(store.n, store.unit_size):
        wanted = subset[rows] >= 0
        if not wanted.any():
            continue
        keys = [str(k) for k in store.read("keys", rows)]
        crops = store.read("crops", rows).astype(np.int64)
        arrays = {d: store.read(f"{m}/tokens", rows) for d, m in tokens.items()}
        values = reader.values(rows)
        views = reader.views(rows, keys, wanted)
        for i in np.flatnonzero(wanted):
            dataset = datasets[subset[rows.start + i]]
            key = encode_key(keys[i])
            if key != keys[i]:
                key_map[key] = keys[i]
            members = {member("crop_settings"): npy_bytes(crops[i]), member(VIEW): jpeg(views[i])}
            for d in dataset.domains:
                if d in arrays:
                    members[member(d)] = npy_bytes(arrays[d][i].astype(token_dtype(infos[d]["vocab_size"])))
                elif d == "caption":
                    members[member(d)] = values[d][i].encode()
                elif d != VIEW:
                    members[member(d)] = json.dumps(values[d][i]).encode()
            dataset.pending.append((key, members))
            if len(dataset.pending) == per_shard:
                write_shard(out, dataset, options)
    for dataset in datasets:
        if dataset.pending:
            write_shard(out, dataset, options)
    return key_map


def token_dtype(vocab: int):
    return np.int16 if vocab <= 32768 else np.int32  # ml-4m's own pre-tokenized data is int16


def jpeg(view: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(view).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_shard(out: str, dataset: Dataset, options: dict) -> None:
    """The dataset's pending samples as its next tar (written whole); its manifest row is kept."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for key, members in dataset.pending:
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(members[ext]), 0, 0o644
                tar.addfile(info, io.BytesIO(members[ext]))
    data = buffer.getvalue()
    name = f"{dataset.name}/{SHARD_NAME.format(len(dataset.shards))}"
    atomic_write(join(out, name), data, options)
    dataset.shards.append({"name": name, "samples": len(dataset.pending), "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest(), "first_key": dataset.pending[0][0],
                           "last_key": dataset.pending[-1][0]})
    dataset.pending = []


# ---------------------------------------------------------------- ml-4m's data config


def data_root(out: str) -> str:
    """OUT as ml-4m will open it: an absolute local path, or the URL as given."""
    return out.rstrip("/") if "://" in out and not out.startswith("file://") else os.path.abspath(url_to_fs(out)[1])


def shard_pattern(root: str, dataset: Dataset) -> str:
    last = len(dataset.shards) - 1
    return f"{root}/{dataset.name}/shard-{{{0:06d}..{last:06d}}}.tar"


def data_config(root: str, datasets: list[Dataset]) -> dict:
    """ml-4m's data config (the keys its pretrain_utils.get_train_dataloader and setup_sampling_mod_info read)."""
    total = sum(ds.samples for ds in datasets)
    config = {}
    for ds in datasets:
        domains = sorted(ds.domains)
        config[ds.name] = {
            "type": "multimodal",
            "in_domains": "-".join(domains),
            "out_domains": "-".join(d for d in domains if d != VIEW),  # ml-4m's rgb@224 has no decoder
            "input_alphas": ALPHA, "target_alphas": ALPHA, "alphas_config": None,
            "data_path": shard_pattern(root, ds),
            "use_wds": True, "wds_n_repeats": 1, "wds_shuffle_buffer_tar": 1000, "wds_shuffle_buffer_repeat": 1000,
            "main_augment_domain": VIEW, "aligned_captions": True, "tok_train_aug": True,
        }
    return {"train": {"datasets": config, "weights": [round(ds.samples / total, 6) for ds in datasets]}}


# ---------------------------------------------------------------- OUT


def prepare_out(out: str, plan: dict, force: bool, options: dict) -> None:
    """Refuse a folder holding something else, clear an earlier 4m export (--force) or an unfinished one
    of the same plan, and mark the export in progress (OUT/_export/plan.json)."""
    fs, root = url_to_fs(out, options)
    names = {p.rstrip("/").rsplit("/", 1)[-1]: p for p in fs.ls(root, detail=False)} if fs.isdir(root) else {}
    manifest = read_json(fs, names[MANIFEST]) if MANIFEST in names else None
    if MANIFEST in names and not (isinstance(manifest, dict) and manifest.get("format") == FORMAT):
        raise UserError(f"{out} holds a manifest.json that is not a 4m export's; choose another folder")
    ours = sorted(n for n in names if n == PROGRESS or TOP.fullmatch(n) or (DATASET.fullmatch(n) and
                                                                             fs.isdir(names[n])))
    begun = MANIFEST in names or PROGRESS in names
    if manifest is not None and not force:
        raise UserError(f"{out} already holds an export (manifest.json); pass --force to redo it")
    if not force and PROGRESS in names and read_json(fs, join(root, f"{PROGRESS}/plan.json")) != plan:
        raise UserError(f"{out} holds an unfinished export of other settings; rerun it with those, or pass "
                        f"--force to start again")
    if not begun and ours:
        raise UserError(f"{out} holds {ours[0]} but no omnimill export (no manifest.json or {PROGRESS}/); "
                        f"choose another folder")
    if not begun and names and not force:
        raise UserError(f"{out} is not empty; choose another folder or pass --force (it removes only the files "
                        f"of an earlier export)")
    for name in ours:
        if DATASET.fullmatch(name):
            for path in fs.ls(names[name], detail=False):
                if SHARD.fullmatch(path.rstrip("/").rsplit("/", 1)[-1]):
                    fs.rm(path)
            if not fs.ls(names[name], detail=False):
                fs.rm(names[name], recursive=True)
        else:
            fs.rm(names[name], recursive=True)
    fs.makedirs(join(root, PROGRESS), exist_ok=True)
    atomic_write(join(out, f"{PROGRESS}/plan.json"), json.dumps(plan).encode(), options)


def read_json(fs, path: str):
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except (ValueError, FileNotFoundError):
        return None
