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

The loader (PackedLoader) is shards.interleave.InterleavedDataset's order with a train / held-out split by
sequence key (store.base.held_out, as for 4M); its position is the checkpoint's loader state, so a resumed
run reads what a straight run would have read. A document cut across two sequences may have one part in
each split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from omnimill.errors import UserError
from omnimill.store.base import held_out
from omnimill.train.config import TrainConfig, to_dict

KINDS = ("text", "image", "marker")


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


class PackedLoader:
    """Batches {"tokens": (B, seq_len) long, "keys": [...]} of one split (train / heldout, by sequence key) of a
    packed set, for one rank: shards.interleave.InterleavedDataset's order (shards per epoch in a seeded order,
    split over ranks; sequences of a shard in a seeded order), the other split's sequences skipped. Its
    position is the dataset's, taken between batches (a checkpoint keeps it). `epochs=None` repeats forever;
    `shuffle=False` reads in written order (evaluation)."""

    def __init__(self, uri: str, split: str, holdout: float, seed: int, batch_size: int, rank: int = 0,
                 world: int = 1, epochs: int | None = None, shuffle: bool = True):
        from omnimill.shards.interleave import InterleavedDataset

        self.dataset = InterleavedDataset(uri, seed=seed, shuffle=shuffle, rank=rank, world_size=world, epochs=epochs)
        self.uri, self.split, self.holdout, self.seed, self.batch_size = uri, split, holdout, seed, batch_size

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)

    def __iter__(self):
        batch, skipped = [], 0
        for sample in self.dataset:
            if held_out([sample["key"]], self.holdout, self.seed)[0] != (self.split == "heldout"):
                skipped += 1
                if skipped > self.dataset.manifest["n"]:  # a whole pass without one: it would never end
                    raise UserError(f"{self.uri} has no {self.split} sequences for this process "
                                    f"(data.holdout={self.holdout})")
                continue
            skipped = 0
            batch.append((sample["key"], sample["tokens"]))
            if len(batch) == self.batch_size:
                yield _batch(batch)
                batch = []
        if batch:  # a finite loader's last, short batch
            yield _batch(batch)


def _batch(rows: list[tuple[str, torch.Tensor]]) -> dict:
    return {"keys": [k for k, _ in rows], "tokens": torch.stack([t for _, t in rows])}


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


def unigram_baseline(config: TrainConfig, manifest: dict, train: PackedLoader, heldout: PackedLoader,
                     session) -> dict[str, float]:
    """Held-out cross-entropy (nats/token) per kind of predicting every target from the training tokens'
    frequencies over the whole vocabulary (add-one smoothed; PAD never predicted), the model's own id space:
    the loss of a model that ignores all context. Under several processes each counts its own shards and
    the counts and totals are summed, so every rank gets one baseline."""
    from omnimill.train.loop import BASELINE_BATCHES

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
    totals: dict[str, list[float]] = {}
    for _, batch in zip(range(config.eval_batches), heldout):
        targets = batch["tokens"][:, 1:]
        kinds = token_kinds(targets, manifest)
        for i, kind in enumerate(KINDS):
            ids = targets[kinds == i].numpy()
            if len(ids):
                total = totals.setdefault(kind, [0.0, 0.0])
                total[0] += float(nll[ids].sum())
                total[1] += len(ids)
    totals = session.sum(totals)
    return {k: a / b for k, (a, b) in sorted(totals.items()) if b}


@torch.no_grad()
def evaluate(model, config: TrainConfig, manifest: dict, heldout: PackedLoader, session) -> dict[str, float]:
    """Held-out loss per kind (nats/token) on each rank's first eval_batches batches in stored order, summed
    over ranks."""
    model.eval()
    totals: dict[str, list[float]] = {}
    for _, batch in zip(range(config.eval_batches), heldout):
        _, per = causal_loss(model, batch["tokens"].to(session.device), manifest)
        for kind, (loss, n) in per.items():
            total = totals.setdefault(kind, [0.0, 0.0])
            total[0] += float(loss)
            total[1] += n
    model.train()
    totals = session.sum(totals)
    return {k: a / b for k, (a, b) in sorted(totals.items()) if b}


def packed_facts(manifest: dict) -> dict:
    """What checkpoint.json records of the data: what the model's id space means and where it came from."""
    keys = ("seq_len", "max_images", "image_mode", "slots", "v_text", "v_image", "specials", "vocab",
            "text_tokenizer", "image_tokenizer")
    return {"root": manifest["root"], **{k: manifest.get(k) for k in keys}}


# ---------------------------------------------------------------------------- training
def train_causal(config: TrainConfig, out: str | Path, progress: bool = True, stop_at: int | None = None) -> dict:
    """loop.train for `objective=causal`: train (or resume from OUT's checkpoint) and return the last held-out
    losses per kind and the unigram baseline. Under torchrun each rank reads its own shards
    (InterleavedDataset splits them), DDP averages gradients, rank 0 writes."""
    from omnimill.train.loop import (CHECKPOINT, Session, _autocast, load_checkpoint, optimizer_state, run_steps,
                                     save_checkpoint)
    from omnimill.train.model import CausalModel

    out = Path(out)
    if len(config.data.datasets) != 1:
        raise UserError(f"--objective causal trains on one packed set, not {len(config.data.datasets)}")
    session = Session(config.device)
    manifest = open_packed(config.data.datasets[0])
    d = config.data

    def loader(split: str, **kw) -> PackedLoader:
        return PackedLoader(manifest["root"], split, d.holdout, config.seed, d.batch_size, session.rank,
                            session.world, **kw)

    batches_of = loader("train")

    def heldout() -> PackedLoader:  # a new one per evaluation: the same first eval_batches batches every time
        return loader("heldout", epochs=1, shuffle=False)

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
    elif session.main:
        out.mkdir(parents=True, exist_ok=True)
    if session.main:
        (out / "config.json").write_text(json.dumps(to_dict(config), indent=1))
    if baseline is None:
        baseline = unigram_baseline(config, manifest, loader("train", epochs=1), heldout(), session)
        if session.main:
            (out / "baseline.json").write_text(json.dumps(baseline, indent=1))
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
        return loss, per, tokens.numel()

    return run_steps(config, session, model, ddp, optimizer, out, progress, stop_at, step, history, baseline,
                     batches_of, micro_step, lambda: evaluate(model, config, manifest, heldout(), session), save,
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


def find_document(manifest: dict, key: str) -> tuple[list[str], np.ndarray]:
    """(the sequences holding it, the document's tokens up to and with its EOD) for a DOC_KEY, or for a
    sequence key its first document. A sequence's `docs` name its content's EOD-separated spans in order;
    a document cut at a sequence's end goes on at the start of the next sequence, so its pieces are joined."""
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
    found, pieces = [], []
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
        pieces.append(content[start:end].astype(np.int64))
        if pieces[-1][-1] == eod:
            break
    if not found:
        raise UserError(f"no document or sequence {key!r} in {manifest['root']}")
    return found, np.concatenate(pieces)


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
    generalisation)."""
    from omnimill.train.config import from_dict

    model, state = load_causal_run(run)
    config, packed = from_dict(state["config"]), state["packed"]
    manifest = open_packed(config.data.datasets[0])
    sequences, doc = find_document(manifest, key)
    cut = len(doc) // 2 if prefix is None else max(1, min(prefix, len(doc) - 1))
    new = sample_next(model, doc[:cut], new_tokens, packed["specials"]["EOD"], packed["specials"]["PAD"],
                      temperature, seed)
    rest = doc[cut:]
    return {"key": key, "sequences": sequences, "held_out": bool(held_out(sequences, config.data.holdout,
                                                                         config.seed).all()),
            "prefix_tokens": doc[:cut].tolist(), "tokens": new.tolist(), "truth_tokens": rest.tolist(),
            "prefix": render(doc[:cut], packed), "continuation": render(new, packed), "truth": render(rest, packed),
            "token_accuracy": float(np.mean(new[:len(rest)] == rest[:len(new)])) if len(new) and len(rest) else None}
