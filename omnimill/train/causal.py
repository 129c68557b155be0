"""The causal objective (`omnimill train SET --objective causal`): next-token prediction over packed
interleaved sequences, beside 4M masking in train/loop.py, sharing its checkpoints, schedule and signals.

The data is one packed shard set (format omnimill.interleaved/1, written by shards/interleave.py): one id
space per set, text ids [0, v_text), image ids [v_text, v_text + v_image) (or one IMG_SLOT id repeated
`slots` times per image in placeholder mode), then the specials BOI, EOI, PAD, IMG_SLOT, EOD. A sample is
`<key>.tokens` (seq_len little-endian int32, PAD after the content) and `<key>.json` ({"images", "docs",
"n_content"}) in a tar listed by manifest.json.

Each target token has a kind, and losses are reported per kind:
    text    ids below v_text
    image   image ids, and IMG_SLOT (in placeholder mode a slot says nothing: set causal_image_loss=false)
    marker  BOI, EOI, EOD
PAD targets never count. The loss is the mean cross-entropy over counted targets: every kind, or text and
markers only with `causal_image_loss=false` (image kinds are still evaluated and logged).
The model (model.CausalModel) sees a whole packed sample: a document may attend to the end of the document
before it in the same sample (EOD between them), as in GPT-style packing.

The loader (PackedLoader) is shards.interleave.InterleavedDataset's order over one split of the set; its
position is the checkpoint's loader state, so a resumed run reads what a straight run would have read.
The split (`split_sequences`): a set packed with a "holdout" record in its manifest was split by DOC_KEY
before packing (fraction and seed chosen at pack time; data.holdout does not apply): no sequence mixes the
two, and a document cut across sequences is in one split whole. A set packed before that has no record and
is split by sequence key (store.base.held_out with data.holdout and the run's seed, as for 4M): there a
document cut across two sequences may have one part in each split.

MM1's mixture (data.pairs, data.text): image-caption pairs and text-only token shard sets (or token stores:
the 4M trainer's data) beside the packed set, one kind per batch by weight (shards/mixture.MixtureLoader,
data.preset mm1 = 45/45/10 or data.mix), each pair or text sample turned into the packed set's ids
(shards/mixture.CausalRows: BOI image EOI caption EOD; text EOD), padded to its batch's longest row.
Their modalities must come from the tokenizers the packed set names (`check_source`: the text modality from
its text tokenizer, the image modality from its image tokenizer with as many tokens per image, its manifest's
image_tokens), or the run is refused. Pairs and text are held out by sample key (store.base.held_out with
data.holdout and the seed, as the 4M trainer holds out token shards), except the images of documents
(keys DOC_KEY/img_NN, as pairs made from the packed documents' own images have): those go where their
document went in the packed set's split by document, so a held-out document is not trained on as pairs. Held-out loss is reported per kind over
all sources, and per source (`source/interleaved`, `source/pairs`, `source/text`: every non-PAD target of that
source), each beside the unigram model of that source's own training tokens; the training log's per-kind
records carry the per-source training loss too, so each kind's batches show in it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from omnimill.errors import UserError
from omnimill.store.base import held_out
from omnimill.train.config import TrainConfig, to_dict

KINDS = ("text", "image", "marker")
SOURCE = "source/"  # prefix of the per-source losses: source/interleaved, source/pairs, source/text


# ---------------------------------------------------------------------------- the packed shard set
def open_packed(uri: str) -> dict:
    """manifest.json of a packed set (shards/interleave.py), its specials checked, with `root` (its URI)."""
    from omnimill.shards.interleave import read_manifest, vocab_of

    manifest = read_manifest(str(uri))
    vocab_of(manifest)  # the specials follow v_text + v_image, or a UserError says so
    return {**manifest, "root": str(uri)}


def token_kinds(tokens: torch.Tensor, manifest: dict) -> torch.Tensor:
    """Kind of each id: 0 text, 1 image (image ids, IMG_SLOT), 2 marker (BOI, EOI, EOD), -1 PAD."""
    s, v_text = manifest["specials"], manifest["v_text"]
    kinds = torch.full_like(tokens, 2)
    kinds[tokens < v_text] = 0
    kinds[((tokens >= v_text) & (tokens < s["BOI"])) | (tokens == s["IMG_SLOT"])] = 1
    kinds[tokens == s["PAD"]] = -1
    return kinds


def reading_ranks(manifest: dict, split: str, rank: int, world: int) -> tuple[int, int]:
    """(rank, world) a process reads the packed set's `split` as. A held-out split by document is read whole
    by every rank: it is small (5% of the sequences fill one shard, and shards are what ranks divide), and
    evaluation sums loss and count over ranks, so every rank scoring the same sequences gives the same means.
    Everything else is divided between the ranks."""
    return (0, 1) if split == "heldout" and "holdout" in manifest else (rank, world)


class KeySplit:
    """One split of an InterleavedDataset by sequence key (store.base.held_out with `holdout` and `seed`): how
    sets packed without a "holdout" record are split. Streams the dataset's samples of `split` only, with
    its position (state_dict), epochs, rank and world_size, so MixtureLoader reads it as the dataset."""

    def __init__(self, dataset, split: str, holdout: float, seed: int):
        self.dataset, self.split, self.holdout, self.seed = dataset, split, holdout, seed
        self.manifest, self.epochs = dataset.manifest, dataset.epochs
        self.rank, self.world_size = dataset.rank, dataset.world_size

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)

    def __iter__(self):
        skipped = 0
        for sample in self.dataset:
            if held_out([sample["key"]], self.holdout, self.seed)[0] != (self.split == "heldout"):
                skipped += 1
                if skipped > self.manifest["n"]:  # a whole pass without one: it would never end
                    raise UserError(f"{self.dataset.uri} has no {self.split} sequences for this process "
                                    f"(data.holdout={self.holdout})")
                continue
            skipped = 0
            yield sample


def split_sequences(uri: str, split: str, holdout: float, seed: int, rank: int = 0, world: int = 1,
                    epochs: int | None = None, shuffle: bool = True):
    """The sequences of one split of a packed set, in InterleavedDataset's order for this rank: the split
    recorded at pack time (manifest "holdout", by document) when the set has one, else by sequence key."""
    from omnimill.shards.interleave import InterleavedDataset, read_manifest

    if "holdout" in read_manifest(uri):
        return InterleavedDataset(uri, seed=seed, shuffle=shuffle, rank=rank, world_size=world, epochs=epochs,
                                  split=split)
    dataset = InterleavedDataset(uri, seed=seed, shuffle=shuffle, rank=rank, world_size=world, epochs=epochs)
    return KeySplit(dataset, split, holdout, seed)


class PackedLoader:
    """Batches {"tokens": (B, seq_len) long, "keys": [...]} of one split (train / heldout: `split_sequences`) of
    a packed set, for one rank: shards.interleave.InterleavedDataset's order (shards per epoch in a seeded
    order, split over ranks; sequences of a shard in a seeded order). Its position is the dataset's, taken
    between batches (a checkpoint keeps it). `epochs=None` repeats forever; `shuffle=False` reads in written
    order (evaluation)."""

    def __init__(self, uri: str, split: str, holdout: float, seed: int, batch_size: int, rank: int = 0,
                 world: int = 1, epochs: int | None = None, shuffle: bool = True):
        self.dataset = split_sequences(uri, split, holdout, seed, rank, world, epochs, shuffle)
        self.uri, self.split, self.holdout, self.seed, self.batch_size = uri, split, holdout, seed, batch_size

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)

    def __iter__(self):
        batch = []
        for sample in self.dataset:
            batch.append((sample["key"], sample["tokens"]))
            if len(batch) == self.batch_size:
                yield _batch(batch)
                batch = []
        if batch:  # a finite loader's last, short batch
            yield _batch(batch)


def _batch(rows: list[tuple[str, torch.Tensor]]) -> dict:
    return {"keys": [k for k, _ in rows], "tokens": torch.stack([t for _, t in rows])}


# ---------------------------------------------------------------------------- MM1's mixture: pairs and text
def mixing(config: TrainConfig) -> bool:
    """Whether the run mixes pair or text sets into the packed set."""
    return bool(config.data.pairs or config.data.text)


def same_tokenizer(recorded: str | None, modality) -> bool:
    """Whether a shard set's modality was made by the tokenizer a packed set's manifest names (a path: an
    omnimill tokenizer folder, or an HF tokenizer.json). The token store records each modality's tokenizer
    folder and its sha256 (tokenize.base.directory_hash): when the named folder is here, its hash is
    compared; when it is not (another machine's path), the paths are."""
    from omnimill.tokenize.base import directory_hash

    if not recorded:
        return False
    folder = Path(recorded).parent if recorded.endswith(".json") else Path(recorded)
    if folder.is_dir() and modality.sha256:
        return directory_hash(folder) == modality.sha256
    return Path(recorded) == Path(str(modality.info.get("path", "")))


def text_ends(manifest: dict) -> set[int]:
    """The ids of `<eos>` and `<cut>` in the packed set's text tokenizer: what ends a caption's row in a token
    store (sequence tokenizer: items, then <eos> or <cut>, then <pad>)."""
    from tokenizers import Tokenizer

    path = Path(manifest.get("text_tokenizer") or "")
    path = path if path.suffix == ".json" else path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"the packed set's text tokenizer {path} is not here: mixing pairs or text needs it (to "
                        f"know its <eos>); run where it is")
    tokenizer = Tokenizer.from_file(str(path))
    return {i for i in (tokenizer.token_to_id("<eos>"), tokenizer.token_to_id("<cut>")) if i is not None}


def tokens_per_image(manifest: dict) -> int | None:
    """Image tokens between BOI and EOI in the packed set: its manifest's image_tokens; for a set packed
    without one (before it was recorded, or from a dict of tokens), measured on its first image, or None:
    no image in it."""
    from omnimill.shards.interleave import read_shard

    if manifest.get("image_tokens") is not None:
        return int(manifest["image_tokens"])
    s = manifest["specials"]
    for shard in range(len(manifest["shards"])):
        for _, tokens, meta in read_shard(manifest["root"], manifest, shard):
            starts, ends = np.flatnonzero(tokens == s["BOI"]), np.flatnonzero(tokens == s["EOI"])
            if len(starts) and len(ends):
                return int(ends[0] - starts[0] - 1)
    return None


def check_source(manifest: dict, kind: str, uri: str, config: TrainConfig, per_image: int | None) -> list[str]:
    """Refuse (UserError, one line) a pair or text set whose text modality (and, for pairs, image modality)
    was not made by the packed set's tokenizers, or whose images have another token count; returns the
    modalities to read."""
    from omnimill.shards.loader import TokenDataset

    d = config.data
    wanted = [d.image_modality, d.text_modality] if kind == "pairs" else [d.text_modality]
    have = TokenDataset(uri).modalities
    fix = "tokenize it with that one, or pack the interleaved set with this one"
    for role, name in zip(("image", "text") if kind == "pairs" else ("text",), wanted):
        if name not in have:
            raise UserError(f"{kind} set {uri} has no modality {name} (it has {', '.join(have)}); name its {role} "
                            f"modality with --data.{role}_modality")
    text = have[d.text_modality]
    if not same_tokenizer(manifest.get("text_tokenizer"), text) or text.vocab_size != manifest["v_text"]:
        raise UserError(f"{kind} set {uri}: {d.text_modality} was tokenized by {text.info.get('path')} "
                        f"({text.vocab_size} ids), not by the interleaved set's text tokenizer "
                        f"{manifest.get('text_tokenizer')} ({manifest['v_text']} ids): {fix}")
    if kind == "pairs":
        image = have[d.image_modality]
        if manifest["image_mode"] != "tokens":
            raise UserError(f"{manifest['root']} holds image placeholders, not image tokens: pairs need an "
                            f"interleaved set packed with image tokens (the image modality of a token store)")
        if (not same_tokenizer(manifest.get("image_tokenizer"), image) or image.vocab_size != manifest["v_image"]
                or image.time_steps):
            raise UserError(f"pairs set {uri}: {d.image_modality} was tokenized by {image.info.get('path')} "
                            f"({image.vocab_size} ids), not by the interleaved set's image tokenizer "
                            f"{manifest.get('image_tokenizer')} ({manifest['v_image']} ids): {fix}")
        if per_image is not None and image.length != per_image:
            raise UserError(f"pairs set {uri}: {d.image_modality} has {image.length} tokens per image, the "
                            f"interleaved set's images {per_image}: {fix}")
    longest = (image.length + 2 if kind == "pairs" else 0) + text.length  # caption's <eos> becomes EOD
    if longest > manifest["seq_len"]:
        raise UserError(f"{kind} set {uri}: a sample of up to {longest} tokens does not fit the interleaved "
                        f"set's seq_len {manifest['seq_len']}")
    return wanted


def mixture_sets(manifest: dict, config: TrainConfig) -> dict[str, list[tuple[str, list[str]]]]:
    """{"pairs" | "text": [(uri, modalities to read)]} of the run's mixture, every set checked (`check_source`)."""
    per_image = tokens_per_image(manifest) if config.data.pairs else None
    return {kind: [(uri, check_source(manifest, kind, uri, config, per_image)) for uri in uris]
            for kind, uris in (("pairs", config.data.pairs), ("text", config.data.text)) if uris}


def token_datasets(sets: list[tuple[str, list[str]]], split: str, config: TrainConfig,
                   manifest: dict | None = None) -> list:
    """One split of pair or text sets: by sample key, data.holdout and the seed, as the 4M trainer's; a key of
    a document's image (DOC_KEY/img_NN, as pairs made from the packed documents' own images have) goes where
    its document went when the packed set was split by document (manifest "holdout"): never a held-out
    document's image in training pairs."""
    from omnimill.shards.loader import TokenDataset

    record = (manifest or {}).get("holdout")
    by_document = (float(record["fraction"]), int(record["seed"])) if record else None
    return [TokenDataset(uri, modalities=names, split=split, holdout=config.data.holdout, holdout_seed=config.seed,
                         document_split=by_document) for uri, names in sets]


def rows_of(manifest: dict, config: TrainConfig):
    from omnimill.shards.interleave import vocab_of
    from omnimill.shards.mixture import CausalRows

    return CausalRows(vocab_of(manifest), config.data.image_modality, config.data.text_modality, text_ends(manifest))


class MixedBatches:
    """The MixtureLoader's batches as rows of the packed set's ids (CausalRows), with its position."""

    def __init__(self, mixture, rows):
        self.mixture, self.rows = mixture, rows

    def state_dict(self) -> dict:
        return self.mixture.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.mixture.load_state_dict(state)

    def __iter__(self):
        return map(self.rows, self.mixture)


def token_batches(datasets: list, kind: str, rows, config: TrainConfig, session):
    """One pass over pair or text datasets in stored order, whole views, as rows: baseline and evaluation."""
    from omnimill.shards.loader import TokenLoader

    for ds in datasets:
        loader = TokenLoader(ds, batch_size=config.data.batch_size, epochs=1, shuffle_buffer=0, crops="first",
                             rank=session.rank, world_size=session.world)
        for batch in loader:
            yield rows({"kind": kind, **batch})


class CausalData:
    """A causal run's data for this rank: the packed set alone, or MM1's mixture with the pair and text sets
    (checked: `mixture_sets`). `train()`: the training batches, with their position; `heldout()` and
    `baseline_sources()`: new loaders per call, {source: batches} in stored order (the same first batches
    every time)."""

    def __init__(self, config: TrainConfig, manifest: dict, session):
        self.config, self.manifest, self.session = config, manifest, session
        self.sets = mixture_sets(manifest, config) if mixing(config) else {}
        self.rows = rows_of(manifest, config) if self.sets else None
        d = config.data
        if self.sets and not d.mix:
            from omnimill.shards.mixture import PRESETS

            lacking = [k for k in PRESETS.get(d.preset, {}) if k != "interleaved" and k not in self.sets]
            if lacking:
                raise UserError(f"data.preset={d.preset} weighs {', '.join(lacking)}, which this run does not give "
                                f"(--data.{lacking[0]}); give it, or weights for what you have: "
                                f"--data.mix='{{\"interleaved\": 0.9, \"{next(iter(self.sets))}\": 0.1}}'")

    def packed(self, split: str, **kw) -> PackedLoader:
        c, s = self.config, self.session
        rank, world = reading_ranks(self.manifest, split, s.rank, s.world)
        return PackedLoader(self.manifest["root"], split, c.data.holdout, c.seed, c.data.batch_size, rank, world,
                            **kw)

    def train(self):
        """PackedLoader of the train split, or the mixture (one kind per batch, by weight; pairs and text as
        rows of the packed set's ids)."""
        if not self.sets:
            return self.packed("train")
        from omnimill.shards.mixture import MixtureLoader

        c, d, s = self.config, self.config.data, self.session
        return MixedBatches(MixtureLoader(
            d.batch_size, interleaved=split_sequences(self.manifest["root"], "train", d.holdout, c.seed, s.rank,
                                                      s.world),
            weights=d.mix or None, preset=None if d.mix else d.preset, seed=c.seed, num_workers=d.num_workers,
            shuffle_buffer=d.shuffle_buffer, rank=s.rank, world_size=s.world, crops=d.crops,
            **{kind: token_datasets(given, "train", c, self.manifest) for kind, given in self.sets.items()}),
            self.rows)

    def _sources(self, split: str, packed: PackedLoader) -> dict:
        sources = {"interleaved": packed}
        for kind, given in self.sets.items():
            sources[kind] = token_batches(token_datasets(given, split, self.config, self.manifest), kind, self.rows,
                                          self.config,
                                          self.session)
        return sources

    def heldout(self) -> dict:
        return self._sources("heldout", self.packed("heldout", epochs=1, shuffle=False))

    def baseline_sources(self) -> dict:
        """{source: (training batches, held-out batches)}: what unigram_baseline counts and scores."""
        train, held = self._sources("train", self.packed("train", epochs=1)), self.heldout()
        return {kind: (train[kind], held[kind]) for kind in train}


# ---------------------------------------------------------------------------- loss, baseline, evaluation
def causal_loss(model, tokens: torch.Tensor, manifest: dict, image_loss: bool = True
                ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, int]]]:
    """Mean next-token cross-entropy over the counted targets (not PAD; not images without `image_loss`),
    and (summed loss, count) per kind, every kind."""
    targets = tokens[:, 1:]
    logits = model(tokens[:, :-1])
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, L-1)
    kinds = token_kinds(targets, manifest)
    counted = (kinds >= 0) & (image_loss | (kinds != 1))
    per = {}
    for i, kind in enumerate(KINDS):
        sel = kinds == i
        if sel.any():
            per[kind] = (nll[sel].sum().detach(), int(sel.sum()))
    return nll[counted].sum() / counted.sum().clamp_min(1), per


def unigram_baseline(config: TrainConfig, manifest: dict, sources: dict, session) -> dict[str, float]:
    """Held-out cross-entropy (nats/token) per kind of predicting every target from the training tokens'
    frequencies over the whole vocabulary (add-one smoothed; PAD never predicted), the model's own id space:
    the loss of a model that ignores all context. `sources`: {source: (training batches, held-out batches)},
    each source's unigram counted from its own first BASELINE_BATCHES training batches and scored on its
    held-out batches; per kind over all sources, and per source (SOURCE + name) when there are several.
    Under several processes each counts its own shards and the counts and totals are summed, so every rank
    gets one baseline."""
    from omnimill.train.loop import BASELINE_BATCHES

    totals: dict[str, list[float]] = {}
    for source, (train, heldout) in sources.items():
        counts = np.zeros(manifest["vocab"])
        for _, batch in zip(range(BASELINE_BATCHES), train):
            targets = batch["tokens"][:, 1:]
            counts += np.bincount(targets[token_kinds(targets, manifest) >= 0].numpy(), minlength=len(counts))
        if session.world > 1:
            merged = torch.from_numpy(counts)
            torch.distributed.all_reduce(merged)
            counts = merged.numpy()
        counts += 1
        counts[manifest["specials"]["PAD"]] = 0
        with np.errstate(divide="ignore"):
            nll = -np.log(counts / counts.sum())
        for _, batch in zip(range(config.eval_batches), heldout):
            targets = batch["tokens"][:, 1:]
            kinds = token_kinds(targets, manifest)
            for i, kind in enumerate(KINDS):
                ids = targets[kinds == i].numpy()
                if len(ids):
                    _add(totals, kind, float(nll[ids].sum()), len(ids))
                    if len(sources) > 1:
                        _add(totals, SOURCE + source, float(nll[ids].sum()), len(ids))
    totals = session.sum(totals)
    return {k: a / b for k, (a, b) in sorted(totals.items()) if b}


def _add(totals: dict[str, list[float]], name: str, loss: float, n: int) -> None:
    total = totals.setdefault(name, [0.0, 0.0])
    total[0] += loss
    total[1] += n


@torch.no_grad()
def evaluate(model, config: TrainConfig, manifest: dict, sources: dict, session) -> dict[str, float]:
    """Held-out loss per kind (nats/token) on each rank's first eval_batches batches of each source
    ({source: held-out batches}) in stored order, summed over ranks; per source (SOURCE + name, every
    non-PAD target) too when there are several."""
    model.eval()
    totals: dict[str, list[float]] = {}
    for source, heldout in sources.items():
        for _, batch in zip(range(config.eval_batches), heldout):
            _, per = causal_loss(model, batch["tokens"].to(session.device), manifest)
            for kind, (loss, n) in per.items():
                _add(totals, kind, float(loss), n)
                if len(sources) > 1:
                    _add(totals, SOURCE + source, float(loss), n)
    model.train()
    totals = session.sum(totals)
    return {k: a / b for k, (a, b) in sorted(totals.items()) if b}


def packed_facts(manifest: dict) -> dict:
    """What checkpoint.json records of the data: what the model's id space means and where it came from."""
    keys = ("seq_len", "max_images", "image_mode", "slots", "image_tokens", "v_text", "v_image", "specials",
            "vocab", "text_tokenizer", "image_tokenizer")
    return {"root": manifest["root"], **{k: manifest.get(k) for k in keys}}


# ---------------------------------------------------------------------------- training
def train_causal(config: TrainConfig, out: str | Path, progress: bool = True, stop_at: int | None = None) -> dict:
    """loop.train for `objective=causal`: train (or resume from OUT's checkpoint) on the packed set, or on MM1's
    mixture (CausalData), and return the last held-out losses per kind (and per source) and the unigram
    baseline. Under torchrun each rank reads its own shards (InterleavedDataset and TokenLoader split them),
    DDP averages gradients, rank 0 writes."""
    from omnimill.train.loop import (CHECKPOINT, Session, _autocast, load_checkpoint, optimizer_state, run_steps,
                                     save_checkpoint, start_files)
    from omnimill.train.model import CausalModel

    out = Path(out)
    if len(config.data.datasets) != 1:
        raise UserError(f"--objective causal trains on one packed set, not {len(config.data.datasets)} (mix in "
                        f"pair and text shard sets with --data.pairs / --data.text)")
    session = Session(config.device)
    manifest = open_packed(config.data.datasets[0])
    if not manifest.get("holdout", {"n": {"heldout": 1}})["n"].get("heldout"):
        raise UserError(f"{config.data.datasets[0]} holds no held-out documents (packed with --holdout "
                        f"{manifest['holdout']['fraction']}, or too few documents for it): pack it again with a "
                        "larger --holdout; a run needs held-out loss to say whether it learns")
    data = CausalData(config, manifest, session)
    batches_of = data.train()
    torch.manual_seed(config.seed)
    model = CausalModel(config.model, manifest["vocab"], manifest["seq_len"]).to(session.device)
    optimizer = torch.optim.AdamW(model.parameter_groups(config.optim.weight_decay), lr=config.optim.lr,
                                  betas=(config.optim.beta1, config.optim.beta2))
    step, history, baseline = 0, [], None
    loaded = load_checkpoint(out)
    if loaded:
        state, tensors = loaded
        if state.get("packed", {}).get("vocab") != manifest["vocab"] or \
                state["packed"]["seq_len"] != manifest["seq_len"]:
            raise UserError(f"{out / CHECKPOINT} was trained on another id space or length; use a new --out")
        model.load_state_dict(tensors["model"])
        optimizer.load_state_dict(optimizer_state(state, tensors["state"]))
        if len(state["loader"]) != session.world:
            raise UserError(f"{out / CHECKPOINT} was written by {len(state['loader'])} process(es); resume it with "
                            f"as many, not {session.world}")
        batches_of.load_state_dict(state["loader"][session.rank])
        # dropout's draws (CPU) continue where they stopped; on CUDA they are drawn by the CUDA RNG, not kept
        torch.set_rng_state(tensors["state"][f"generator/{session.rank}"])
        step, history, baseline = state["step"], state["history"], state["baseline"]
    baseline = start_files(out, config, session, baseline,
                           lambda: unigram_baseline(config, manifest, data.baseline_sources(), session))
    ddp = torch.nn.parallel.DistributedDataParallel(model) if session.world > 1 else model
    n_params = sum(p.numel() for p in model.parameters())
    if session.main and progress:
        print(f"model: {n_params / 1e6:.2f} M parameters; causal over {manifest['vocab']} ids x {manifest['seq_len']} "
              f"positions; {session.world} process(es) on {session.device}; starting at step {step}", flush=True)

    def save(step: int) -> None:
        loaders, generators = session.gather(batches_of.state_dict()), session.gather(torch.get_rng_state())
        if session.main:
            meta = {"config": to_dict(config), "step": step, "loader": loaders, "baseline": baseline,
                    "modalities": [], "history": history, "datasets": {}, "packed": packed_facts(manifest)}
            save_checkpoint(out, model.state_dict(), optimizer.state_dict(), generators, meta)

    def micro_step(batch: dict):
        tokens = batch["tokens"].to(session.device)
        with _autocast(config, session):
            loss, per = causal_loss(ddp, tokens, manifest, config.causal_image_loss)
        if data.sets:  # which source this batch came from, in the log: its loss over every non-PAD target
            per[SOURCE + batch["kind"]] = (sum(v for v, _ in per.values()), sum(n for _, n in per.values()))
        return loss, per, tokens.numel()

    return run_steps(config, session, model, ddp, optimizer, out, progress, stop_at, step, history, baseline,
                     batches_of, micro_step, lambda: evaluate(model, config, manifest, data.heldout(), session), save,
                     "per_kind")


# ---------------------------------------------------------------------------- continuing a document
def load_causal_run(run: str | Path, device: str = "cpu"):
    """(CausalModel, checkpoint.json) of a causal run."""
    from omnimill.train.config import from_dict
    from omnimill.train.loop import CHECKPOINT, load_checkpoint
    from omnimill.train.model import CausalModel

    loaded = load_checkpoint(run)
    if loaded is None:
        raise UserError(f"{run} holds no {CHECKPOINT}; train one with `omnimill train SET --objective causal`")
    state, tensors = loaded
    if "packed" not in state:
        raise UserError(f"{run} is a 4M run: generate with --from/--to, not --continue")
    packed = state["packed"]
    model = CausalModel(from_dict(state["config"]).model, packed["vocab"], packed["seq_len"])
    model.load_state_dict(tensors["model"])
    return model.to(device).eval(), state


def find_document(manifest: dict, key: str) -> tuple[list[str], np.ndarray, list[str | None]]:
    """(the sequences holding it, the document's tokens up to and with its EOD, each sequence's pack-time
    split or None) for a DOC_KEY, or for a sequence key its first document. A sequence's `docs` name its
    content's EOD-separated spans in order; a document cut at a sequence's end goes on at the start of the
    next sequence, so its pieces are joined."""
    from omnimill.shards.interleave import read_shard

    eod = manifest["specials"]["EOD"]

    def sequences():
        for shard in range(len(manifest["shards"])):
            yield from read_shard(manifest["root"], manifest, shard)

    doc = key
    for sequence, _, meta in sequences():  # a sequence key names its first document
        if sequence == key and meta.get("docs"):
            doc = meta["docs"][0]
            break
    found, pieces, splits = [], [], []
    for sequence, tokens, meta in sequences():
        docs = list(meta.get("docs", []))
        if doc not in docs:
            if found:
                break
            continue
        content = tokens[:meta.get("n_content", len(tokens))]
        ends = np.flatnonzero(content == eod)
        i = docs.index(doc)
        start = int(ends[i - 1]) + 1 if i > 0 else 0
        end = int(ends[i]) + 1 if i < len(ends) else len(content)
        found.append(sequence)
        splits.append(meta.get("split"))
        pieces.append(content[start:end].astype(np.int64))
        if pieces[-1][-1] == eod:
            break
    if not found:
        raise UserError(f"no document or sequence {key!r} in {manifest['root']}")
    return found, np.concatenate(pieces), splits


@torch.no_grad()
def sample_next(model, context: np.ndarray, n: int, stop: int, never: int, temperature: float = 0.0,
                seed: int = 0) -> np.ndarray:
    """Up to n tokens after `context`, one at a time (the argmax at temperature 0), stopping after `stop`;
    `never` (PAD) is never drawn. The model sees the last seq_len - 1 tokens."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    tokens = list(context)
    new = []
    for _ in range(n):
        window = torch.tensor(tokens[-(model.seq_len - 1):], device=device)[None]
        logits = model(window)[0, -1].float().cpu()
        logits[never] = -float("inf")
        if temperature > 0:
            token = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
        else:
            token = int(logits.argmax())
        tokens.append(token)
        new.append(token)
        if token == stop:
            break
    return np.array(new, np.int64)


def render(tokens: np.ndarray, packed: dict) -> str:
    """Tokens as text: text ids through the set's text tokenizer (its tokenizer.json, or the manifest's path
    when that is the file; `<id>` when it is not there), each image as [image], markers other than EOD
    dropped, EOD as ⏎."""
    s = packed["specials"]
    path = Path(packed.get("text_tokenizer") or "")  # omnimill's sequence tokenizer folder, or the HF file
    path = path if path.suffix == ".json" else path / "tokenizer.json"
    decode = None
    if packed.get("text_tokenizer") and path.is_file():
        from tokenizers import Tokenizer

        decode = Tokenizer.from_file(str(path)).decode
    parts, text = [], []

    def flush():
        if text:
            parts.append(decode(text) if decode else " ".join(f"<{t}>" for t in text))
            text.clear()

    for t in tokens.tolist():
        if t < packed["v_text"]:
            text.append(t)
            continue
        flush()
        if t == s["BOI"]:
            parts.append("[image]")
        elif t == s["EOD"]:
            parts.append("⏎")
    flush()
    return " ".join(parts)


def continue_document(run: str | Path, key: str, new_tokens: int = 64, prefix: int | None = None,
                      temperature: float = 0.0, seed: int = 0) -> dict:
    """Continue the document `key` (a DOC_KEY, or a sample key: its first document) of the run's data: the
    model sees the document's first `prefix` tokens (default: half) and samples up to `new_tokens` more
    (stopping at EOD); returns the prefix, the continuation and the true rest, as tokens and rendered text,
    and whether every sequence of the document was held out (a training sequence is no evidence of
    generalisation). A mixture run's document is one of its packed set's."""
    from omnimill.train.config import from_dict

    model, state = load_causal_run(run)
    config, packed = from_dict(state["config"]), state["packed"]
    manifest = open_packed(config.data.datasets[0])
    sequences, doc, splits = find_document(manifest, key)
    if "holdout" in manifest:  # split by document at pack time: its sequences say which
        held = all(split == "heldout" for split in splits)
    else:
        held = bool(held_out(sequences, config.data.holdout, config.seed).all())
    cut = len(doc) // 2 if prefix is None else max(1, min(prefix, len(doc) - 1))
    new = sample_next(model, doc[:cut], new_tokens, packed["specials"]["EOD"], packed["specials"]["PAD"],
                      temperature, seed)
    rest = doc[cut:]
    return {"key": key, "sequences": sequences, "held_out": held,
            "prefix_tokens": doc[:cut].tolist(), "tokens": new.tolist(), "truth_tokens": rest.tolist(),
            "prefix": render(doc[:cut], packed), "continuation": render(new, packed), "truth": render(rest, packed),
            "token_accuracy": float(np.mean(new[:len(rest)] == rest[:len(new)])) if len(new) and len(rest) else None}
