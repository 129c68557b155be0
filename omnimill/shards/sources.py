"""Where token samples come from: a token store or a shard set, local or behind an fsspec URL.

Both cut their samples into read units (a token store: its chunks of `unit_size` samples; a shard set: its
tar files), know how many samples each unit holds before reading it, and read one unit at a time. The
loader builds everything else (splitting, shuffling, mixing) on top of exactly this.

A sample is a dict: `__key__`, `__index__` (position in the token store), `__crops__` (n_crops, 5), and one
(n_crops, L) array per modality the sample has. A modality the sample lacks is absent from the dict.
`read_unit(u)` returns exactly `units[u]` entries, None for a sample that has none of the chosen
modalities, so a position in a unit means the same thing before and after reading (the loader's
resumable plan counts positions, not surviving samples).
"""

from __future__ import annotations

import io
import tarfile
import zlib
from dataclasses import dataclass

import fsspec
import numpy as np

from omnimill.errors import UserError
from omnimill.shards.wds import MANIFEST, iter_tar_samples, join, read_manifest


@dataclass(frozen=True)
class Modality:
    name: str
    vocab_size: int
    length: int  # tokens per sample (L)
    pad_id: int  # -1: fixed length, every token counts
    sha256: str  # the tokenizer directory's hash: same name + same hash = same token meanings
    info: dict  # the tokenizer record as the token store holds it

    @classmethod
    def from_info(cls, name: str, info: dict) -> "Modality":
        return cls(name, int(info["vocab_size"]), int(info["tokens_per_sample"]), int(info.get("pad_id", -1)),
                   str(info.get("sha256", "")), dict(info))


class Source:
    uri: str
    modalities: dict[str, Modality]
    n_crops: int
    units: list[int]  # samples per read unit

    def read_unit(self, unit: int) -> list[dict | None]:
        raise NotImplementedError

    def _choose(self, modalities: list[str] | None) -> None:
        """Keep only the chosen modalities (all when None); unknown names are an error."""
        unknown = sorted(set(modalities or []) - set(self.modalities))
        if unknown:
            raise UserError(f"{self.uri} has no modality {', '.join(unknown)}; it has {', '.join(self.modalities)}")
        if modalities:
            self.modalities = {m: self.modalities[m] for m in modalities}

    @property
    def n(self) -> int:
        return sum(self.units)


class TokenStoreSource(Source):
    """Read units = the store's chunks (`unit_size` samples); a sample's modality is present where `ok`."""

    def __init__(self, uri: str, storage_options: dict | None = None, modalities: list[str] | None = None):
        from omnimill.shards.tokenstore import TokenStore

        self.store = TokenStore.open(uri, "r", storage_options)
        self.uri, self.n_crops = uri, self.store.n_crops
        self.modalities = {m: Modality.from_info(m, self.store.tokenizer_info(m)) for m in self.store.modalities()}
        for m in self.modalities.values():
            m.info["dtype"] = str(self.store.group[f"{m.name}/tokens"].dtype)
        self.units = [self.store.unit(u).stop - self.store.unit(u).start for u in range(self.store.n_units)]
        self.created = self.store.group.attrs.get("created")
        self.labels = self.store.source.get("store")
        self._choose(modalities)

    def incomplete_units(self) -> dict[str, list[int]]:
        return {m: np.flatnonzero(~self.store.done_units(m)).tolist() for m in self.modalities}

    def read_unit(self, unit: int) -> list[dict | None]:
        plan = self.store.unit(unit)
        group = self.store.group
        keys = group["keys"][plan.start:plan.stop]
        crops = group["crops"][plan.start:plan.stop]
        arrays = {m: (group[f"{m}/tokens"][plan.start:plan.stop], group[f"{m}/ok"][plan.start:plan.stop])
                  for m in self.modalities}
        samples = []
        for i, key in enumerate(keys):
            sample = {m: tokens[i] for m, (tokens, ok) in arrays.items() if ok[i]}
            samples.append({"__key__": str(key), "__index__": plan.start + i, "__crops__": crops[i], **sample}
                           if sample else None)
        return samples


class ShardSetSource(Source):
    """Read units = the tar shards listed in the manifest, read whole as one stream each."""

    def __init__(self, uri: str, storage_options: dict | None = None, modalities: list[str] | None = None):
        self.uri = uri[: -len(MANIFEST)].rstrip("/") if uri.endswith(MANIFEST) else uri.rstrip("/")
        self.options = storage_options or {}
        self.manifest = read_manifest(self.uri, self.options)
        self.n_crops = int(self.manifest["n_crops"])
        self.modalities = {m: Modality.from_info(m, info) for m, info in self.manifest["modalities"].items()}
        self.units = [int(s["samples"]) for s in self.manifest["shards"]]
        self._choose(modalities)

    def read_unit(self, unit: int) -> list[dict | None]:
        shard = self.manifest["shards"][unit]
        with fsspec.open(join(self.uri, shard["name"]), "rb", **self.options) as f:
            data = f.read()  # one request per shard; the tar is parsed from memory
        samples = []
        try:
            for key, members in iter_tar_samples(io.BytesIO(data)):
                sample = decode_sample(key, members, list(self.modalities), where=shard["name"])
                samples.append(sample if len(sample) > 3 else None)
        except tarfile.TarError as e:
            raise DamagedSample(shard["name"], samples[-1]["__key__"] if samples and samples[-1] else "?",
                                f"tar unreadable after this sample ({e}); run `omnimill shards verify`") from None
        if len(samples) != shard["samples"]:
            raise DamagedSample(shard["name"], "-", f"holds {len(samples)} samples, the manifest says "
                                f"{shard['samples']}; run `omnimill shards verify {self.uri}`")
        return samples


def decode_sample(key: str, members: dict[str, bytes], modalities: list[str], where: str = "") -> dict:
    """Tar members of one sample -> sample dict; checks the crc32 the json recorded for every modality."""
    import json

    try:
        meta = json.loads(members["json"])
    except (KeyError, ValueError) as e:
        raise DamagedSample(where, key, f"no readable json member ({e!r})") from None
    sample = {"__key__": key, "__index__": int(meta["index"]), "__crops__": np.asarray(meta["crops"], np.int32)}
    for m in meta["modalities"]:
        if m not in modalities:
            continue
        data = members.get(f"{m}.npy")
        if data is None:
            raise DamagedSample(where, key, f"missing modality {m} (the json lists it)")
        if zlib.crc32(data) != meta["crc32"][m]:
            raise DamagedSample(where, key, f"{m} bytes damaged (crc32 mismatch)")
        sample[m] = np.load(io.BytesIO(data), allow_pickle=False)
    return sample


class DamagedSample(UserError):
    def __init__(self, shard: str, key: str, reason: str):
        super().__init__(f"{shard}: sample {key}: {reason}")
        self.shard, self.key, self.reason = shard, key, reason


def is_shard_set(uri: str, storage_options: dict | None = None) -> bool:
    if uri.endswith(MANIFEST):
        return True
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs.exists(join(path, MANIFEST))


def open_source(uri: str, storage_options: dict | None = None, modalities: list[str] | None = None) -> Source:
    """A shard set when `uri` holds manifest.json, else a token store."""
    if is_shard_set(uri, storage_options):
        return ShardSetSource(uri, storage_options, modalities)
    try:
        return TokenStoreSource(uri, storage_options, modalities)
    except UserError:
        raise UserError(f"{uri} is neither a token store nor a shard set (no {MANIFEST}); make one with "
                        f"`omnimill tokenize` or `omnimill shards export`") from None
