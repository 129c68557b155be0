"""Where token samples come from: a token store or a shard set, local or behind an fsspec URL.

Both cut their samples into read units (a token store: its chunks of `unit_size` samples; a shard set: its
tar files), know how many samples each unit holds before reading it, and read one unit at a time. The
loader builds everything else (splitting, shuffling, mixing) on top of exactly this.

`read_unit(u)` returns a `Unit`: the unit's samples as columns (keys, indices, crops, and per modality an
(n, n_crops, L) token array with a `present` mask). Columns, not per-sample dicts: the loader gathers a
batch with a few fancy-indexing calls per unit instead of Python work per sample. A unit always holds all
`units[u]` positions; a sample with none of the chosen modalities is a position with nothing present
(the loader's resumable plan counts positions, not surviving samples).

A modality with a time axis (frames or audio segments of a clip) keeps the token layout (n_crops, L) with
L = steps x per_step, time-major (step 0's tokens first); its record says so as `time: {steps, of}`
(`Modality.time_steps`, `time_of`), taken from the token store's modality attributes and carried into the
manifest unchanged. No entry: no time axis.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import fsspec
import numpy as np

from omnimill.errors import UserError
from omnimill.corpus.listing import url_to_fs
from omnimill.shards.manifest import MANIFEST, join, read_manifest


READ_SAMPLES = 1024  # token-store samples per read, at most
TIME_OF = ("frames", "audio_segments")  # what a modality's time steps are: a clip's frames or audio segments


def time_problem(info: dict) -> str | None:
    """What is wrong with a modality record's `time` entry, or None (also when it has none)."""
    time = info.get("time")
    if time is None:
        return None
    steps = time.get("steps") if isinstance(time, dict) else None
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1 or time.get("of") not in TIME_OF:
        return f"time {time!r} is not {{steps: a count >= 1, of: {' or '.join(TIME_OF)}}}"
    if int(info["tokens_per_sample"]) % steps:
        return f"{info['tokens_per_sample']} tokens do not split into {steps} time steps"
    return None


@dataclass(frozen=True)
class Modality:
    name: str
    vocab_size: int
    length: int  # tokens per sample (L)
    pad_id: int  # -1: fixed length, every token counts
    sha256: str  # the tokenizer directory's hash: same name + same hash = same token meanings
    info: dict  # the tokenizer record as the token store holds it (+ `time`, `dtype`): the manifest's entry
    time_steps: int = 0  # 0: no time axis; else L = time_steps x per_step, time-major
    time_of: str = ""  # "frames" or "audio_segments" when time_steps > 0

    @classmethod
    def from_info(cls, name: str, info: dict) -> "Modality":
        problem = time_problem(info)
        if problem:
            raise UserError(f"modality {name}: {problem}")
        time = info.get("time") or {}
        return cls(name, int(info["vocab_size"]), int(info["tokens_per_sample"]), int(info.get("pad_id", -1)),
                   str(info.get("sha256", "")), dict(info), int(time.get("steps", 0)), str(time.get("of", "")))

    @property
    def per_step(self) -> int:
        """Tokens per time step (all of them when there is no time axis)."""
        return self.length // max(self.time_steps, 1)


@dataclass
class Unit:
    keys: np.ndarray  # (n,) str
    index: np.ndarray  # (n,) int64, position in the token store
    crops: np.ndarray  # (n, n_crops, 5) int32
    tokens: dict[str, np.ndarray]  # (n, n_crops, L); rows without the modality hold padding
    present: dict[str, np.ndarray]  # (n,) bool

    def __len__(self) -> int:
        return len(self.keys)

    def live(self) -> np.ndarray:
        """Samples that have at least one chosen modality."""
        return np.logical_or.reduce(list(self.present.values())) if self.present else np.zeros(len(self), bool)

    def sample(self, i: int) -> dict:
        """One sample as a dict (`__key__`, `__index__`, `__crops__`, present modalities)."""
        return {"__key__": str(self.keys[i]), "__index__": int(self.index[i]), "__crops__": self.crops[i],
                **{m: t[i] for m, t in self.tokens.items() if self.present[m][i]}}


class Source:
    uri: str
    modalities: dict[str, Modality]
    n_crops: int
    units: list[int]  # samples per read unit

    def read_unit(self, unit: int) -> Unit:
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
        from omnimill.store.tokens import TokenStore

        self.store = TokenStore.open(uri, "r", storage_options)
        self.uri, self.n_crops = uri, self.store.n_crops
        self.modalities = {m: Modality.from_info(m, self._record(m)) for m in self.store.modalities()}
        for m in self.modalities.values():
            m.info["dtype"] = str(self.store.array_info(f"{m.name}/tokens")[1])
        # Read several chunks at a time: each Zarr read costs about a millisecond before any data moves,
        # so 1024-sample reads; but keep at least 16 read units so ranks x workers all get some.
        chunks = self.store.n_units
        self.read_size = self.store.unit_size * max(1, min(-(-READ_SAMPLES // self.store.unit_size), chunks // 16))
        self.units = [min(self.store.n, start + self.read_size) - start
                      for start in range(0, self.store.n, self.read_size)]
        self.created = self.store.created
        self.labels = self.store.source.get("store")
        self._choose(modalities)

    def _record(self, modality: str) -> dict:
        """The tokenizer record, plus the modality's `time` attribute when it has a time axis."""
        info, time = self.store.tokenizer_info(modality), self.store.time_axis(modality)
        return {**info, "time": time} if time else info

    def incomplete_units(self) -> dict[str, list[int]]:
        return {m: np.flatnonzero(~self.store.done_units(m)).tolist() for m in self.modalities}

    def read_unit(self, unit: int) -> Unit:
        start = unit * self.read_size
        stop = start + self.units[unit]
        columns = {name: array[start:stop] for name, array in self._arrays.items()}
        return Unit(keys=columns["keys"].astype(object), index=np.arange(start, stop), crops=columns["crops"],
                    tokens={m: columns[f"{m}/tokens"] for m in self.modalities},
                    present={m: columns[f"{m}/ok"] for m in self.modalities})

    @property
    def _arrays(self) -> dict:
        """Array handles opened once (opening a Zarr array reads its metadata: one request each)."""
        if getattr(self, "_handles", None) is None:
            names = ["keys", "crops"] + [f"{m}/{a}" for m in self.modalities for a in ("tokens", "ok")]
            self._handles = {name: self.store.reader(name) for name in names}
        return self._handles


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

    def read_unit(self, unit: int) -> Unit:
        shard = self.manifest["shards"][unit]
        name = shard["name"]
        with fsspec.open(join(self.uri, name), "rb", **self.options) as f:
            data = f.read()  # one request per shard; the tar is parsed from memory
        damaged = f"differs from the manifest; run `omnimill shards verify {self.uri}`"
        if len(data) != shard["bytes"]:
            raise DamagedSample(name, "-", f"has {len(data)} bytes, not {shard['bytes']}: {damaged}")
        if "index" not in shard:  # tars without an offset index: check the whole tar, walk it
            if "crc32" in shard and zlib.crc32(data) != shard["crc32"]:
                raise DamagedSample(name, "-", damaged)
            return unit_from_tar(data, name, shard["samples"], self.modalities, self.n_crops)
        with fsspec.open(join(self.uri, shard["index"]), "rb", **self.options) as f:
            raw = f.read()
        if hashlib.sha256(raw).hexdigest() != shard["index_sha256"]:
            raise DamagedSample(shard["index"], "-", damaged)
        index = np.load(io.BytesIO(raw), allow_pickle=False)
        index = {k: index[k] for k in index.files}
        return unit_from_index(data, index, name, self.modalities, self.n_crops, shard.get("payload_crc32"))


def unit_from_index(data: bytes, index: dict, where: str, modalities: dict[str, Modality], n_crops: int,
                    payload_crc: dict | None = None) -> Unit:
    """A shard and its offset index -> columns: per modality one gather of fixed-size payloads, checked
    against the crc32 the export recorded for exactly those bytes (a fifth of the tar: the rest is headers
    and padding the loader never uses)."""
    n = len(index["keys"])
    tokens, present = {}, {}
    for m, spec in modalities.items():
        dtype = np.dtype(spec.info.get("dtype", "uint16"))
        out = np.full((n, n_crops, spec.length), max(spec.pad_id, 0), dtype)
        offsets = index.get(f"{m}.offset", np.full(n, -1, np.int64))
        rows = np.flatnonzero(offsets >= 0)
        count = n_crops * spec.length
        if len(rows):
            starts = offsets[rows]
            if starts.max() + count * dtype.itemsize > len(data) or (starts % dtype.itemsize).any():
                raise DamagedSample(where, "-", f"its index points outside the tar for {m}; re-export it")
            items = np.frombuffer(data, dtype, count=len(data) // dtype.itemsize)
            first, steps = starts[0] // dtype.itemsize, np.diff(starts) // dtype.itemsize
            if len(steps) and (steps == steps[0]).all() and steps[0] >= count:
                # Every sample has the same members, so payloads sit at a constant stride: a strided view.
                view = np.lib.stride_tricks.as_strided(items[first:], (len(rows), count),
                                                       (int(steps[0]) * dtype.itemsize, dtype.itemsize))
            else:
                view = items[(starts // dtype.itemsize)[:, None] + np.arange(count)]
            block = np.ascontiguousarray(view)
            if payload_crc and m in payload_crc and zlib.crc32(block.data) != payload_crc[m]:
                raise DamagedSample(where, "-", f"{m} tokens damaged (crc32 mismatch); run `omnimill shards verify`")
            out[rows] = block.reshape(len(rows), n_crops, spec.length)
        tokens[m], present[m] = out, offsets >= 0
    return Unit(keys=index["keys"].astype(object), index=index["index"], crops=index["crops"], tokens=tokens,
                present=present)


def unit_from_tar(data: bytes, where: str, expected: int, modalities: dict[str, Modality], n_crops: int) -> Unit:
    """A whole shard -> columns. Headers are walked once; each modality's token payloads are then cut out
    of the buffer with one vectorised gather (all its members have the same npy header and size)."""
    samples = list(group_members(scan_tar(data, where)))
    if len(samples) != expected:
        raise DamagedSample(where, "-", f"holds {len(samples)} samples, the manifest says {expected}; "
                                        f"run `omnimill shards verify`")
    n = len(samples)
    keys = np.empty(n, object)
    index = np.empty(n, np.int64)
    crops = np.zeros((n, n_crops, 5), np.int32)
    spans = {m: [] for m in modalities}  # (row, offset, size) of each present member
    for row, (key, members) in enumerate(samples):
        if "json" not in members:
            raise DamagedSample(where, key, "no json member")
        offset, size = members["json"]
        try:
            meta = json.loads(data[offset:offset + size])
        except ValueError as e:
            raise DamagedSample(where, key, f"unreadable json member ({e})") from None
        keys[row], index[row], crops[row] = key, meta["index"], meta["crops"]
        for m in meta["modalities"]:
            if m not in spans:
                continue
            member = members.get(f"{m}.npy")
            check_member(where, key, meta, m, None if member is None else
                         memoryview(data)[member[0]:member[0] + member[1]])
            spans[m].append((row, *member))
    buffer = np.frombuffer(data, np.uint8)
    tokens, present = {}, {}
    for m, spec in modalities.items():
        dtype = np.dtype(spec.info.get("dtype", "uint16"))
        out = np.full((n, n_crops, spec.length), max(spec.pad_id, 0), dtype)
        mask = np.zeros(n, bool)
        if spans[m]:
            rows, offsets, sizes = (np.array(c, np.int64) for c in zip(*spans[m]))
            payload = n_crops * spec.length * dtype.itemsize
            if (sizes != sizes[0]).any() or sizes[0] < payload:
                bad = int(rows[np.argmax(sizes != sizes[0])]) if (sizes != sizes[0]).any() else int(rows[0])
                raise DamagedSample(where, str(keys[bad]), f"{m} member has an unexpected size")
            header = int(sizes[0]) - payload  # npy magic + header dict, the same for every member
            cut = buffer[(offsets + header)[:, None] + np.arange(payload)]
            out[rows] = cut.view(dtype).reshape(len(rows), n_crops, spec.length)
            mask[rows] = True
        tokens[m], present[m] = out, mask
    return Unit(keys=keys, index=index, crops=crops, tokens=tokens, present=present)


def scan_tar(data: bytes, where: str = "") -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of every regular file in an in-memory tar (ustar/GNU, GNU long names), in
    order; DamagedSample at the first damaged header or truncation (naming the sample before it).

    A plain header walk: tarfile's per-member objects cost more than the small token members themselves."""
    pos, long_name, end, last = 0, None, len(data), "-"

    def damaged(what: str) -> DamagedSample:
        return DamagedSample(where, last.split(".")[0], f"{what} after this sample")

    while pos + 512 <= end:
        header = data[pos:pos + 512]
        if header[0] == 0:  # two zero blocks end the archive
            return
        try:
            size = int(header[124:136].rstrip(b"\0 ").decode() or "0", 8)
            checksum = int(header[148:156].rstrip(b"\0 ").decode() or "-1", 8)
        except ValueError:
            raise damaged("damaged tar header") from None
        if sum(header[:148]) + sum(header[156:]) + 8 * 32 != checksum:  # the checksum field counts as spaces
            raise damaged("damaged tar header (checksum)")
        kind, start = header[156:157], pos + 512
        if start + size > end:
            raise damaged("tar truncated")
        if kind == b"L":  # GNU long name: the next member's name is this member's data
            long_name = data[start:start + size].rstrip(b"\0").decode()
        elif kind in (b"0", b"\0"):
            name = long_name or header[:100].rstrip(b"\0").decode()
            prefix = header[345:500].rstrip(b"\0").decode() if header[257:263] == b"ustar\0" else ""
            if prefix and not long_name:  # POSIX ustar splits long paths into prefix/name
                name = f"{prefix}/{name}"
            yield name, start, size
            last, long_name = name, None
        pos = start + (size + 511) // 512 * 512


def group_members(members: Iterable[tuple[str, int, int]]) -> Iterator[tuple[str, dict[str, tuple[int, int]]]]:
    """Adjacent members of one key -> (key, {extension: (offset, size)}); webdataset's key rule."""
    key, spans = None, {}
    for name, offset, size in members:
        base = name.rsplit("/", 1)[-1]
        stem, _, ext = base.partition(".")
        member_key = name[:len(name) - len(base)] + stem
        if member_key != key and key is not None:
            yield key, spans
            spans = {}
        key = member_key
        spans[ext] = (offset, size)
    if key is not None:
        yield key, spans


def check_member(where: str, key: str, meta: dict, modality: str, data):
    """A modality member the sample's json lists: present, and with the crc32 the json recorded."""
    if data is None:
        raise DamagedSample(where, key, f"missing modality {modality} (the json lists it)")
    if zlib.crc32(data) != meta["crc32"][modality]:
        raise DamagedSample(where, key, f"{modality} bytes damaged (crc32 mismatch)")
    return data


def decode_sample(key: str, members: dict[str, bytes], modalities: list[str], where: str = "") -> dict:
    """Tar members of one sample -> sample dict; checks the crc32 the json recorded for every modality."""
    try:
        meta = json.loads(members["json"])
    except (KeyError, ValueError) as e:
        raise DamagedSample(where, key, f"no readable json member ({e!r})") from None
    sample = {"__key__": key, "__index__": int(meta["index"]), "__crops__": np.asarray(meta["crops"], np.int32)}
    for m in meta["modalities"]:
        if m not in modalities:
            continue
        data = check_member(where, key, meta, m, members.get(f"{m}.npy"))
        sample[m] = np.load(io.BytesIO(data), allow_pickle=False)
    return sample


class DamagedSample(UserError):
    def __init__(self, shard: str, key: str, reason: str):
        super().__init__(f"{shard}: sample {key}: {reason}")
        self.shard, self.key, self.reason = shard, key, reason


def is_shard_set(uri: str, storage_options: dict | None = None) -> bool:
    if uri.endswith(MANIFEST):
        return True
    fs, path = url_to_fs(uri, storage_options)  # local paths literal: `[`, `*`, `::` are characters
    return fs.exists(join(path, MANIFEST))


def open_source(uri: str, storage_options: dict | None = None, modalities: list[str] | None = None) -> Source:
    """A shard set when `uri` holds manifest.json, else a token store."""
    if is_shard_set(uri, storage_options):
        return ShardSetSource(uri, storage_options, modalities)
    try:
        source = TokenStoreSource(uri, storage_options, modalities)
    except UserError:
        raise UserError(f"{uri} is neither a token store nor a shard set (no {MANIFEST}); make one with "
                        f"`omnimill tokenize` or `omnimill shards export`") from None
    incomplete = {m: units for m, units in source.incomplete_units().items() if units}
    if incomplete:  # read only what tokenize committed: an uncommitted unit's samples would look absent
        detail = "; ".join(f"{m}: {len(units)} units" for m, units in incomplete.items())
        raise UserError(f"{uri} is not fully tokenized ({detail}); finish `omnimill tokenize` first")
    return source
