"""The training data loader: token stores and shard sets in, padded per-modality batches out, resumable exactly.

    loader = TokenLoader([TokenDataset("tokens.zarr"), TokenDataset("s3://bucket/text-shards")],
                         weights=[0.8, 0.2], batch_size=64, num_workers=4, seed=0)
    for batch in loader:            # infinite unless epochs=N
        batch["tokens"]["rgb_image"]   (B, L) int64, pad id (or 0) where absent
        batch["masks"]["rgb_image"]    (B, L) bool: the sample has the modality and the token is not padding
        batch["present"]["rgb_image"]  (B,) bool
        ...
        state = loader.state_dict()  # put it in the checkpoint; TokenLoader(...).load_state_dict(state) goes on
                                     # with exactly the batch that would have come next

How samples are split and ordered. Every (rank, DataLoader worker) pair is a *slot*; there are
world_size x max(num_workers, 1) of them. Each epoch a dataset's read units (token-store chunks or tar
shards) are permuted with (seed, dataset, epoch), and slot s takes every n_slots-th unit of that
permutation: no two slots read the same unit, and every unit is read once per epoch. Within a slot the
units are read in that order and their samples pass through a shuffle buffer (`shuffle_buffer` samples);
the buffer is drained at the end of each epoch. Each sample contributes one of its aligned crops, drawn
per sample and epoch (`crops="random"`) or always the whole view (`crops="first"`).

Mixing. With several datasets each slot keeps one stream per dataset and draws the next sample's dataset
with probability weights[i] / sum(weights). **Weights count samples, not tokens**: to give a text corpus
a share s of the tokens, divide each weight by that dataset's mean tokens per sample. A modality a
dataset does not have is marked absent (mask false, `present` false); it is never filled with made-up tokens.
Two datasets may share a modality name only if the same tokenizer (sha256) made both, with the same time
axis (`Modality.time_steps`, `time_of`: a clip's frames or audio segments, L = steps x per_step tokens,
time-major; none for an image's modalities).

Images and clips. A clip dataset and an image dataset mix like any two datasets: an image sample has no
audio or per-clip modalities, a clip sample none of the image-only ones, and each lacking modality is absent.
The same tokenizer run on images (`rgb_image`, g x g tokens) and on a clip's frames (T x g x g, `time:
frames`) gives one name two layouts, which one batch cannot hold: give one side another name,
`TokenDataset("clips", rename={"rgb_image": "rgb_frames"})`; the model then learns them as two modalities
that share a vocabulary.

Exact resume. The order of everything above is a pure function of (seed, slot, epoch, position), so a
slot's position is two small numbers per dataset (epoch, positions consumed) plus the number of mixture
draws. Each batch carries its slot's position after the batch; the loader keeps the latest one per slot
and the number of batches handed out. On restore the shuffle plan of the current epoch is recomputed
(integers only, no reading) and the samples still waiting in the buffer are read back from their units.
DataLoader hands batches out round-robin over its workers, so on restore worker w serves logical slot
(w + batches) mod num_workers: the next batch comes from the slot that was due.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from omnimill.errors import UserError
from omnimill.shards.sources import Modality, Source, Unit, open_source

MIX_BLOCK = 1024  # mixture draws are made in seeded blocks of this many


class TokenDataset:
    """One token store or shard set (path or fsspec URL), optionally limited to some modalities and to one
    side of a held-out split: `split="train"` or `"heldout"` keeps the samples whose key hashes (with
    `holdout_seed`) below / above `holdout` (the same rule the tokenizers use, omnimill.store.base.held_out).
    `rename` ({stored name: name in batches}) gives modalities other names in this dataset's batches, for
    a modality another dataset holds under the same name with another layout (image rgb vs clip frames).
    `modalities` takes the stored names. `document_split` (fraction, seed): a key of a document's image,
    `DOC_KEY/img_NN`, goes where its document went when a packed interleaved set was split by document
    (shards/interleave.py: held_out(DOC_KEY, fraction, seed)), so a held-out document's images are never
    trained on as pairs; other keys split as above."""

    def __init__(self, uri: str, storage_options: dict | None = None, modalities: list[str] | None = None,
                 name: str | None = None, split: str | None = None, holdout: float = 0.0, holdout_seed: int = 0,
                 rename: dict[str, str] | None = None, document_split: tuple[float, int] | None = None):
        if split not in (None, "train", "heldout"):
            raise UserError(f"split must be 'train', 'heldout' or None, not {split!r}")
        if split and not 0 < holdout < 1:
            raise UserError(f"a {split} split needs 0 < holdout < 1, not {holdout}")
        self.uri, self.storage_options, self.chosen = str(uri), storage_options, modalities
        self.split, self.holdout, self.holdout_seed = split, holdout, holdout_seed
        self.document_split = tuple(document_split) if document_split is not None else None
        self.name = name or self.uri.rstrip("/").rsplit("/", 1)[-1]
        self.rename = dict(rename or {})
        self._source: Source | None = None
        self.source  # open now: a wrong path fails here, in the main process
        unknown = sorted(set(self.rename) - set(self.source.modalities))
        names = [self.rename.get(m, m) for m in self.source.modalities]
        if unknown:
            raise UserError(f"rename: {self.uri} has no modality {', '.join(unknown)}; it has "
                            f"{', '.join(self.source.modalities)}")
        if len(set(names)) != len(names):
            raise UserError(f"rename {self.rename} gives two modalities of {self.uri} one name")

    @property
    def source(self) -> Source:
        if self._source is None:
            self._source = open_source(self.uri, self.storage_options, self.chosen)
        return self._source

    @property
    def modalities(self) -> dict[str, Modality]:
        """The dataset's modalities under their names in batches (after `rename`)."""
        return {self.rename.get(m, m): replace(spec, name=self.rename.get(m, m))
                for m, spec in self.source.modalities.items()}

    def read_unit(self, unit: int) -> Unit:
        """A read unit of the source, its modalities under their names in batches."""
        got = self.source.read_unit(unit)
        if self.rename:
            got.tokens = {self.rename.get(m, m): t for m, t in got.tokens.items()}
            got.present = {self.rename.get(m, m): p for m, p in got.present.items()}
        return got

    def keep_mask(self, keys: np.ndarray) -> np.ndarray:
        """Which of these keys belong to the dataset's split (all when there is no split)."""
        if not self.split:
            return np.ones(len(keys), bool)
        from omnimill.corpus.documents import document_of
        from omnimill.store.base import held_out

        held = held_out(keys, self.holdout, self.holdout_seed)
        if self.document_split is not None:
            docs = [document_of(str(k)) for k in keys]
            mine = np.array([d is not None for d in docs], bool)
            if mine.any():
                fraction, seed = self.document_split
                held[mine] = held_out([d for d in docs if d is not None], fraction, seed)
        return held == (self.split == "heldout")

    def __getstate__(self):  # workers reopen the store themselves (zarr / fsspec handles do not travel)
        return {**self.__dict__, "_source": None}


def buffered_shuffle(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """Emission order of read positions 0..n-1 through a shuffle buffer of `buffer` samples.

    Read positions fill the buffer; once full, each new read position replaces a uniformly drawn
    buffered one, which is emitted. At the end the rest leaves in random order. buffer <= 1: read order.
    """
    if buffer <= 1 or n == 0:
        return np.arange(n)
    draws = rng.integers(0, buffer, n)
    held, out = [], []
    for position in range(n):
        if len(held) < buffer:
            held.append(position)
            continue
        j = draws[position]
        out.append(held[j])
        held[j] = position
    out.extend(rng.permutation(held).tolist())
    return np.asarray(out, np.int64)


class _Stream:
    """One dataset as seen by one slot: an endless (or `epochs`-long) sequence of samples, handed out as
    columns (unit, row, crop) in emission order. Loaded units stay cached until their last pending
    position has left."""

    def __init__(self, ds: TokenDataset, dataset: int, slot: int, n_slots: int, seed: int, buffer: int,
                 crops: str, epochs: int | None, state: dict | None = None):
        self.ds, self.source, self.dataset, self.slot, self.n_slots = ds, ds.source, dataset, slot, n_slots
        self.seed, self.buffer, self.crops, self.epochs = seed, buffer, crops, epochs
        self.epoch, self.consumed = (state["epoch"], state["consumed"]) if state else (0, 0)
        self._plan_epoch, self.cache, self.remaining = None, {}, {}

    def state(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def _plan(self) -> None:
        units = np.random.default_rng([self.seed, self.dataset, self.epoch]).permutation(len(self.source.units))
        self.units = units[self.slot::self.n_slots]
        if len(self.units) == 0:
            raise UserError(f"{self.source.uri} has {len(self.source.units)} read units, fewer than the "
                            f"{self.n_slots} loader slots (ranks x workers); use fewer workers or export "
                            f"smaller shards (--samples-per-shard)")
        sizes = np.array([self.source.units[u] for u in self.units], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.unit_of = np.repeat(np.arange(len(self.units)), sizes)  # position -> index into self.units
        rng = np.random.default_rng([self.seed, self.dataset, self.epoch, self.slot, 1])
        self.order = buffered_shuffle(int(self.starts[-1]), self.buffer, rng)
        self.rank = np.empty_like(self.order)
        self.rank[self.order] = np.arange(len(self.order))  # rank[p]: the step at which position p leaves
        self.crop = rng.integers(0, self.source.n_crops, len(self.order)) if self.crops == "random" else np.zeros(
            len(self.order), np.int64)
        self.cache: dict[int, tuple] = {}  # j -> (Unit, live mask)
        self.remaining: dict[int, int] = {}  # j -> positions of unit j not yet consumed
        self._plan_epoch = self.epoch

    def _load(self, j: int) -> None:
        unit = self.ds.read_unit(int(self.units[j]))
        live = unit.live() & self.ds.keep_mask(unit.keys)
        self.cache[j] = (unit, live)
        self.remaining[j] = int((self.rank[self.starts[j]:self.starts[j + 1]] >= self.consumed).sum())

    def _free(self) -> None:
        for j in [j for j, n in self.remaining.items() if n == 0]:
            del self.cache[j], self.remaining[j]

    def take(self, n: int) -> tuple[list[tuple], int]:
        """Up to n live samples as [(Unit, rows, crops)] parts in emission order, and how many."""
        self._free()
        parts, got = [], 0
        while got < n:
            if self.epochs is not None and self.epoch >= self.epochs:
                break
            if self._plan_epoch != self.epoch:
                self._plan()
            if self.consumed == len(self.order):
                self.epoch, self.consumed = self.epoch + 1, 0
                continue
            chunk = self.order[self.consumed:self.consumed + (n - got)]
            crop = self.crop[self.consumed:self.consumed + len(chunk)]
            js = self.unit_of[chunk]
            for j in dict.fromkeys(js.tolist()):
                if j not in self.cache:
                    self._load(j)
            self.consumed += len(chunk)
            # Split the chunk into runs of one unit, keeping order; drop positions with nothing live.
            cuts = np.flatnonzero(np.diff(js)) + 1
            for run in np.split(np.arange(len(chunk)), cuts):
                j = int(js[run[0]])
                unit, live = self.cache[j]
                rows = chunk[run] - self.starts[j]
                keep = live[rows]
                if keep.any():
                    parts.append((unit, rows[keep], crop[run][keep]))
                    got += int(keep.sum())
                self.remaining[j] -= len(run)
        return parts, got


def merge_modalities(datasets: list[TokenDataset]) -> dict[str, Modality]:
    """Every dataset's modalities by name; a name shared by two datasets must mean the same tokens in the
    same layout (tokenizer and time axis)."""
    merged: dict[str, Modality] = {}
    first: dict[str, str] = {}  # name -> the dataset it was first seen in
    for ds in datasets:
        for name, m in ds.modalities.items():
            old = merged.get(name)
            if old is not None and (old.sha256 != m.sha256 or old.vocab_size != m.vocab_size):
                raise UserError(f"modality {name} was made by different tokenizers in {first[name]} and {ds.uri} "
                                f"(sha256 {old.sha256[:12]} vs {m.sha256[:12]}); token ids would not mean the same")
            if old is not None and (old.time_steps, old.time_of) != (m.time_steps, m.time_of):
                raise UserError(f"modality {name} has {_layout(old)} in {first[name]} but {_layout(m)} in {ds.uri}; "
                                f"one batch holds one layout per modality: rename it in one dataset, e.g. "
                                f"TokenDataset({ds.uri!r}, rename={{{name!r}: {name + '_t'!r}}})")
            first.setdefault(name, ds.uri)
            if old is None or m.length > old.length:
                merged[name] = m
    return dict(sorted(merged.items()))


def _layout(m: Modality) -> str:
    return f"{m.time_steps} time steps of {m.time_of}" if m.time_steps else "no time axis"


def collate(parts: list[tuple[int, np.ndarray, list]], size: int, modalities: dict[str, Modality]) -> dict:
    """[(dataset, batch slots, [(Unit, rows, crops)])] -> a packed batch: all modalities side by side in one
    (B, sum L) token array and one mask array, `present` (B, M), and (dataset, index, crop) as (B, 3).
    Few, large arrays because a DataLoader worker hands each tensor over separately (a shared-memory file
    each); `unpack` turns them into per-modality views in the main process. A few numpy gathers per unit
    run, nothing per sample."""
    keys = np.empty(size, object)
    meta = np.zeros((size, 3), np.int64)  # dataset, index, crop
    lengths = [spec.length for spec in modalities.values()]
    packed = np.empty((size, sum(lengths)), np.int64)
    present = np.zeros((size, len(modalities)), bool)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    tokens = {}
    for j, (m, spec) in enumerate(modalities.items()):
        tokens[m] = packed[:, starts[j]:starts[j + 1]]  # a view: writing it fills the packed array
        tokens[m][:] = max(spec.pad_id, 0)
    column = {m: j for j, m in enumerate(modalities)}
    for d, slots, runs in parts:
        start = 0
        for unit, rows, crops in runs:
            dest = slots[start:start + len(rows)]
            start += len(rows)
            keys[dest] = unit.keys[rows]
            meta[dest] = np.stack([np.full(len(rows), d), unit.index[rows], crops], axis=1)
            for m, values in unit.tokens.items():
                has = unit.present[m][rows]
                present[dest, column[m]] = has
                tokens[m][dest[has], :values.shape[2]] = values[rows[has], crops[has]]
    masks = np.empty_like(packed, dtype=bool)
    for j, (m, spec) in enumerate(modalities.items()):
        view = masks[:, starts[j]:starts[j + 1]]
        view[:] = present[:, j:j + 1]
        if spec.pad_id >= 0:
            view &= tokens[m] != spec.pad_id
    return {"keys": keys.tolist(), "meta": torch.from_numpy(meta), "tokens": torch.from_numpy(packed),
            "masks": torch.from_numpy(masks), "present": torch.from_numpy(present)}


def unpack(batch: dict, modalities: dict[str, Modality]) -> dict:
    """A packed batch -> the loader's public form: per-modality (B, L) views, (B,) present, and columns."""
    lengths = [spec.length for spec in modalities.values()]
    names = list(modalities)
    return {"keys": batch["keys"], "dataset": batch["meta"][:, 0], "index": batch["meta"][:, 1],
            "crop": batch["meta"][:, 2],
            "tokens": dict(zip(names, batch["tokens"].split(lengths, dim=1))),
            "masks": dict(zip(names, batch["masks"].split(lengths, dim=1))),
            "present": dict(zip(names, batch["present"].unbind(dim=1)))}


def _reopen_after_fork(datasets: list[TokenDataset]) -> None:
    """A forked DataLoader worker inherits the parent's open stores, whose fsspec clients (s3fs, gcsfs) are
    bound to the parent's event loop; using them hangs or fails. Drop them and the cached filesystems so
    the worker opens its own."""
    import fsspec

    for impl in list(fsspec.registry.values()):
        impl.clear_instance_cache()
    for ds in datasets:
        ds._source = None


class _Slots(torch.utils.data.IterableDataset):
    """What runs in each DataLoader worker (or in-process): one slot's batches, each with its position."""

    def __init__(self, loader: "TokenLoader", offset: int, states: dict):
        self.loader, self.offset, self.states = loader, offset, states

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if info is not None:
            _reopen_after_fork(self.loader.datasets)
        workers = self.loader.slots_per_rank
        logical = ((info.id if info else 0) + self.offset) % workers
        slot = self.loader.rank * workers + logical
        yield from self.loader._slot_batches(slot, logical, self.states.get(logical))


class TokenLoader:
    """Batches from one or more TokenDatasets; see the module docstring for order, mixing and resume."""

    def __init__(self, datasets: TokenDataset | list[TokenDataset], batch_size: int, weights: list[float] | None = None,
                 seed: int = 0, shuffle_buffer: int = 1000, num_workers: int = 0, rank: int | None = None,
                 world_size: int | None = None, epochs: int | None = None, crops: str = "random",
                 drop_last: bool = False, prefetch_factor: int = 2, pin_memory: bool = False):
        self.datasets = [datasets] if isinstance(datasets, TokenDataset) else list(datasets)
        if not self.datasets:
            raise UserError("TokenLoader needs at least one dataset")
        weights = [1.0] * len(self.datasets) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.datasets) or min(weights) < 0 or sum(weights) <= 0:
            raise UserError(f"weights {weights} must be one non-negative number per dataset, not all zero")
        if crops not in ("random", "first"):
            raise UserError(f"crops must be 'random' or 'first', not {crops!r}")
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, not {batch_size}")
        if rank is None or world_size is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if dist else 0
            world_size = torch.distributed.get_world_size() if dist else 1
        self.weights = np.asarray(weights) / sum(weights)
        self.batch_size, self.seed, self.buffer, self.num_workers = batch_size, seed, shuffle_buffer, num_workers
        self.rank, self.world_size, self.epochs, self.crops = rank, world_size, epochs, crops
        self.drop_last, self.prefetch_factor, self.pin_memory = drop_last, prefetch_factor, pin_memory
        self.slots_per_rank = max(num_workers, 1)
        self.n_slots = world_size * self.slots_per_rank
        if epochs is not None and len(self.datasets) > 1:
            raise UserError("a mixture is endless: leave epochs=None and stop after a number of steps")
        for ds in self.datasets:
            if len(ds.source.units) < self.n_slots:
                raise UserError(f"{ds.uri} has {len(ds.source.units)} read units (chunks or shards), fewer than the "
                                f"{self.n_slots} slots (ranks x workers): some would get no data. Use fewer "
                                f"workers, or export smaller shards (--samples-per-shard)")
        self.modalities = merge_modalities(self.datasets)
        self._batches = 0
        self._slots: dict[int, dict] = {}

    # ------------------------------------------------------------------ state
    def _fingerprint(self) -> dict:
        return {"datasets": [[ds.uri, ds.source.n, len(ds.source.units), ds.split, ds.holdout]
                             for ds in self.datasets],
                "weights": self.weights.round(12).tolist(), "seed": self.seed, "batch_size": self.batch_size,
                "shuffle_buffer": self.buffer, "num_workers": self.num_workers, "rank": self.rank,
                "world_size": self.world_size, "crops": self.crops}

    def state_dict(self) -> dict:
        return {"batches": self._batches, "slots": {k: dict(v) for k, v in self._slots.items()},
                "config": self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        mine = self._fingerprint()
        changed = sorted(k for k in mine if state["config"].get(k) != mine[k])
        if changed:
            raise UserError(f"the saved loader position belongs to another loader setup ({', '.join(changed)} "
                            f"differ); resume with the same data, seed, batch size, workers and world size")
        self._batches = int(state["batches"])
        self._slots = {int(k): v for k, v in state["slots"].items()}

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        slots = _Slots(self, self._batches % self.slots_per_rank, dict(self._slots))
        if self.num_workers == 0:
            batches = iter(slots)
        else:
            batches = iter(torch.utils.data.DataLoader(slots, batch_size=None, num_workers=self.num_workers,
                                                       prefetch_factor=self.prefetch_factor,
                                                       pin_memory=self.pin_memory))
        for batch in batches:
            self._slots[batch.pop("slot")] = batch.pop("position")
            self._batches += 1
            yield unpack(batch, self.modalities)

    def _slot_batches(self, slot: int, logical: int, state: dict | None):
        state = state or {"draws": 0, "streams": [None] * len(self.datasets)}
        streams = [_Stream(ds, i, slot, self.n_slots, self.seed, self.buffer, self.crops, self.epochs, s)
                   for i, (ds, s) in enumerate(zip(self.datasets, state["streams"]))]
        draws = state["draws"]
        while True:
            choice = self._choices(slot, draws, self.batch_size)
            parts, size = [], 0
            for d, stream in enumerate(streams):
                slots = np.flatnonzero(choice == d)
                if len(slots) == 0:
                    continue
                runs, got = stream.take(len(slots))
                parts.append((d, slots[:got], runs))
                size += got
            if size < self.batch_size:  # only a finite single dataset runs out: its last, short batch
                if size == 0 or self.drop_last:
                    return
                parts = [(d, np.arange(size), runs) for d, _, runs in parts]
            draws += size
            batch = collate(parts, size, self.modalities)
            batch["slot"] = logical
            batch["position"] = {"draws": draws, "streams": [s.state() for s in streams]}
            yield batch
            if size < self.batch_size:
                return

    def _choices(self, slot: int, draws: int, n: int) -> np.ndarray:
        """The datasets of draws [draws, draws + n): fixed per (seed, slot, block of MIX_BLOCK draws)."""
        if len(self.datasets) == 1:
            return np.zeros(n, np.int64)
        first, last = draws // MIX_BLOCK, (draws + n - 1) // MIX_BLOCK
        blocks = [np.random.default_rng([self.seed, slot, b, 7]).choice(len(self.datasets), MIX_BLOCK, p=self.weights)
                  for b in range(first, last + 1)]
        start = draws - first * MIX_BLOCK
        return np.concatenate(blocks)[start:start + n]
