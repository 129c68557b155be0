"""The MM1 mixture: interleaved packed sequences, image-caption pairs and text-only, mixed by weight, resumable.

    loader = MixtureLoader(interleaved=InterleavedDataset("docs-packed"), pairs=TokenDataset("pair-shards"),
                           text=TokenDataset("text-shards"), preset="mm1", batch_size=16, seed=0)
    for batch in loader:
        batch["kind"]  "interleaved": batch["tokens"] (B, seq_len) int64, "images", "docs", "keys", "n_content"
                       "pairs" / "text": a TokenLoader batch (per-modality tokens, masks, present, keys)
        state = loader.state_dict()     # MixtureLoader(...same...).load_state_dict(state) goes on exactly
    rows = CausalRows(vocab_of(manifest), "rgb_image", "caption", {eos_id, cut_id})
    rows(batch)                         # {"kind", "keys", "tokens" (B, T)}: every kind in the packed set's ids

Each batch holds one kind. Batch b's kind is drawn with probability weights[kind] / sum(weights) from a
generator seeded with (seed, b // MIX_BLOCK): the draws are a pure function of (seed, b), so the position of
the mixture is the number of batches handed out plus each source's own position (InterleavedDataset's
(epoch, consumed); TokenLoader's state_dict). `mm1` = 45/45/10 (McKinlay et al., MM1, 2024: interleaved,
captioned images, text-only). Every rank draws the same kind for batch b, so data-parallel ranks run the
same objective at each step. **Weights count batches**, and so samples of the batch size: a packed
interleaved sample is seq_len tokens, a caption pair far fewer; divide by tokens per sample for a token share.

Why its own loader and not one more TokenDataset in TokenLoader: TokenLoader's batches are columns of
fixed-length per-modality token rows (a source's Unit with crops), gathered per sample into one batch; a
packed interleaved sample is one seq_len row with lists of image and document keys, and a trainer runs a
different objective on it (causal over the sequence vs 4M's masking of modalities). One batch of mixed
kinds would pad a caption pair to 4096 tokens or give an interleaved sequence modalities it has not. So
each kind keeps its own reader, unchanged, and this module only chooses which one gives the next batch.

One id space for a causal model (`CausalRows`): pairs and text batches become rows of the interleaved set's
ids, the set's own rules for an image and a document end:

    pair   BOI <image tokens + v_text> EOI <caption text ids> EOD
    text   <text ids> EOD

The caption's `<pad>` (its modality's pad_id) and its end tokens (`<eos>`, `<cut>`: the sequence
tokenizer's, given as `text_ends`) are dropped; EOD ends the sample as it ends a document. A part the sample
lacks (absent in its batch) is left out. Rows are padded with PAD to the batch's longest row, not to
seq_len: a 16-token caption pair in a 4096-token row would be 99% padding. Interleaved batches pass
unchanged. Whether the pairs' tokenizers are the interleaved set's is the caller's check (train/causal.py).
"""

from __future__ import annotations

import numpy as np
import torch

from omnimill.errors import UserError
from omnimill.shards.interleave import InterleavedDataset, Vocab
from omnimill.shards.loader import TokenDataset, TokenLoader

KINDS = ("interleaved", "pairs", "text")
PRESETS = {"mm1": {"interleaved": 0.45, "pairs": 0.45, "text": 0.10}}
MIX_BLOCK = 1024  # kinds are drawn in seeded blocks of this many batches


class MixtureLoader:
    """Batches of one kind each from up to three sources; see the module docstring for order and resume.
    `pairs` and `text` are TokenDatasets (or lists of them) read by a TokenLoader each, with `num_workers`
    and `crops`; `interleaved` is an InterleavedDataset (or anything that streams its samples with its
    epochs, rank, world_size and state_dict: one split of it, train/causal.py) read in this process."""

    def __init__(self, batch_size: int, interleaved: InterleavedDataset | None = None,
                 pairs: TokenDataset | list[TokenDataset] | None = None,
                 text: TokenDataset | list[TokenDataset] | None = None, weights: dict[str, float] | None = None,
                 preset: str | None = None, seed: int = 0, num_workers: int = 0, shuffle_buffer: int = 1000,
                 rank: int | None = None, world_size: int | None = None, crops: str = "random"):
        if (weights is None) == (preset is None):
            raise UserError("MixtureLoader: give weights {kind: weight} or a preset (mm1), one of them")
        if preset is not None and preset not in PRESETS:
            raise UserError(f"unknown mixture preset {preset!r}; presets: {', '.join(PRESETS)}")
        weights = dict(PRESETS[preset] if preset else weights)
        given = {"interleaved": interleaved, "pairs": pairs, "text": text}
        unknown = sorted(set(weights) - set(KINDS))
        if unknown or any(float(w) < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise UserError(f"weights {weights}: kinds are {', '.join(KINDS)}, each weight >= 0, not all zero")
        missing = [k for k, w in weights.items() if w > 0 and given[k] is None]
        if missing:
            raise UserError(f"the mixture weighs {', '.join(missing)} but no source was given for it")
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, not {batch_size}")
        self.kinds = [k for k in KINDS if weights.get(k, 0) > 0]
        total = sum(float(weights[k]) for k in self.kinds)
        self.p = np.array([float(weights[k]) / total for k in self.kinds])
        self.batch_size, self.seed = batch_size, seed
        self.sources: dict = {}
        for kind in self.kinds:
            if kind == "interleaved":
                if interleaved.epochs is not None:
                    raise UserError("a mixture is endless: give an InterleavedDataset with epochs=None")
                self.sources[kind] = interleaved
            else:
                self.sources[kind] = TokenLoader(given[kind], batch_size, seed=seed, num_workers=num_workers,
                                                 shuffle_buffer=shuffle_buffer, rank=rank, world_size=world_size,
                                                 crops=crops)
        loaders = [s for s in self.sources.values() if isinstance(s, TokenLoader)]
        if "interleaved" in self.sources and loaders:  # every source reads this rank's share, not another's
            ranks = {(interleaved.rank, interleaved.world_size), (loaders[0].rank, loaders[0].world_size)}
            if len(ranks) > 1:
                raise UserError(f"the InterleavedDataset reads rank {interleaved.rank} of {interleaved.world_size} "
                                f"but the loaders rank {loaders[0].rank} of {loaders[0].world_size}; "
                                f"give both the same")
        self._batches = 0
        self._iters: dict = {}

    def state_dict(self) -> dict:
        return {"batches": self._batches, "kinds": self.kinds, "p": self.p.round(12).tolist(), "seed": self.seed,
                "batch_size": self.batch_size, "sources": {k: s.state_dict() for k, s in self.sources.items()}}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        changed = [k for k in ("kinds", "p", "seed", "batch_size") if state[k] != mine[k]]
        if changed:
            raise UserError(f"the saved mixture position belongs to another mixture ({', '.join(changed)} differ); "
                            f"resume with the same sources, weights, seed and batch size")
        for kind, source in self.sources.items():
            source.load_state_dict(state["sources"][kind])
        self._batches = int(state["batches"])
        self._iters = {}  # sources restart from their restored positions

    def kind_of(self, batch: int) -> str:
        """The kind of batch number `batch`: fixed by (seed, batch)."""
        block = np.random.default_rng([self.seed, batch // MIX_BLOCK, 15]).choice(len(self.kinds), MIX_BLOCK, p=self.p)
        return self.kinds[int(block[batch % MIX_BLOCK])]

    def __iter__(self):
        while True:
            kind = self.kind_of(self._batches)
            if kind not in self._iters:
                self._iters[kind] = iter(self.sources[kind])
            batch = self._interleaved_batch() if kind == "interleaved" else next(self._iters[kind])
            self._batches += 1
            yield {"kind": kind, **batch}

    def _interleaved_batch(self) -> dict:
        samples = [next(self._iters["interleaved"]) for _ in range(self.batch_size)]
        return {"keys": [s["key"] for s in samples], "tokens": torch.stack([s["tokens"] for s in samples]),
                "n_content": torch.tensor([s["n_content"] for s in samples]),
                "images": [s["images"] for s in samples], "docs": [s["docs"] for s in samples]}


class CausalRows:
    """MixtureLoader batches -> {"kind", "keys", "tokens": (B, T) int64} in one id space (see the module
    docstring): interleaved batches as they are (T = seq_len), pairs and text as rows padded with PAD to
    their longest (T <= 1 + image tokens + 1 + caption length). `image` is the pairs' image modality (its
    tokens in [0, v_image)), `caption` the text modality of both (ids in [0, v_text))."""

    def __init__(self, vocab: Vocab, image: str, caption: str, text_ends: set[int]):
        self.vocab, self.image, self.caption, self.ends = vocab, image, caption, np.array(sorted(text_ends), np.int64)

    def __call__(self, batch: dict) -> dict:
        if batch["kind"] == "interleaved":
            return {"kind": "interleaved", "keys": batch["keys"], "tokens": batch["tokens"]}
        rows = [self.row(batch, i, with_image=batch["kind"] == "pairs") for i in range(len(batch["keys"]))]
        tokens = torch.full((len(rows), max(len(r) for r in rows)), self.vocab.PAD, dtype=torch.int64)
        for i, row in enumerate(rows):
            tokens[i, :len(row)] = torch.from_numpy(row)
        return {"kind": batch["kind"], "keys": batch["keys"], "tokens": tokens}

    def row(self, batch: dict, i: int, with_image: bool) -> np.ndarray:
        v = self.vocab
        parts = []
        if with_image and bool(batch["present"][self.image][i]):
            image = batch["tokens"][self.image][i].numpy()
            parts.append(np.concatenate([[v.BOI], image + v.v_text, [v.EOI]]))
        if bool(batch["present"][self.caption][i]):
            text = batch["tokens"][self.caption][i][batch["masks"][self.caption][i]].numpy()
            parts.append(text[~np.isin(text, self.ends)])
        parts.append(np.array([v.EOD]))
        return np.concatenate(parts).astype(np.int64)
