"""Mask tokenizer: one instance's mask inside its box (m x m bool, 64 x 64 as 4M-21) -> g x g tokens, and back.

    (n, 64, 64) bool --conv encoder, 4 stages--> (n, 32, 4, 4) --FSQ [8,5,5,5]--> tokens (n, 16) in 0..999
    tokens --codes--> conv decoder --> logits (n, 64, 64) --> on where > 0

4M-21 (Bachmann et al., 2024) tokenizes each SAM instance the same way: its mask cut out by its box and
resampled to 64 x 64, 16 tokens from a ~1k codebook (EPFL-VILAB/4M_tokenizers_sam-instance_1k_64), so an
instance costs 4 box + 16 mask tokens in a sequence. 16 tokens x log2(1000) = 160 bits for a 4096-bit mask:
enough for the smooth outlines SAM makes, few enough that 10+ instances fit a 256-token sequence.
The autoencoder is spatial.py's (ConvAutoencoder: residual conv stages, FSQ from quantizer.py) with one
channel in and one logit out; loss: binary cross-entropy + soft Dice (1 - Dice follows IoU, which is the
metric, and does not let small masks vanish under the background).

Data: the instances of a label store's `masks64` field, count-aware (rows past a sample's `count` are
padding, not masks: they are never trained on nor measured). Training flips half the masks, as crops do.

Two faces:
  per instance  encode_masks (n, m, m) bool -> (n, g²) int32, decode_masks back: what the `sam_instances`
                sequence structure (serialize.py) calls for each instance it keeps.
  per sample    encode(values, crops) -> (B, K·g²) over all K rows of masks64 (padding rows encode empty
                masks), a flipped crop mirrors every mask; decode -> {"masks64": (B, K, m, m)}. Crops that
                cut a box need the boxes too: that is the sequence structure's job (`crop_instances`).

`evaluate_mask_tokenizer` measures mask IoU after the round trip on held-out instances against the
box-filled mask (the box alone, as if each mask filled it), and codebook usage; it writes metrics.json,
reconstructions.png and usage.png into the tokenizer directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from omnimill.errors import UserError
from omnimill.tokenize.base import FORMAT, ModelTokenizer, TokenizerConfig
from omnimill.tokenize.spatial import ConvAutoencoder

MASK_GRID = 4  # tokens per side of a mask: 4 x 4 = 16 tokens, as 4M-21
MAX_TRAINING_INSTANCES = 200_000  # instances held in memory for training: 200k x 4096 bool = 0.8 GB
READ_ROWS = 256  # samples read from the store at a time while collecting instances


class MaskTokenizer(ModelTokenizer):
    kind = "mask"

    def __init__(self, config: TokenizerConfig, model: ConvAutoencoder | None = None):
        super().__init__(config)
        o = config.options
        self.mask_size, self.grid = int(o["mask_size"]), int(o["grid"])
        self.max_instances = int(o["sample_shape"][0])
        n_down = int(round(math.log2(self.mask_size / self.grid)))
        if 2 ** n_down * self.grid != self.mask_size:
            raise UserError(f"mask tokenizer: mask side {self.mask_size} / grid {self.grid} must be a power of 2")
        self.model = model or ConvAutoencoder(1, 1, n_down, o.get("width", 32), o.get("vocab", 1024),
                                              o.get("quantizer", "fsq"))
        config.vocab_size = self.model.quantizer.vocab_size
        config.tokens_per_sample = self.max_instances * self.tokens_per_instance

    @property
    def field(self) -> str:
        return self.config.fields[0]

    @property
    def tokens_per_instance(self) -> int:
        return self.grid * self.grid

    # ------------------------------------------------------------------ per instance
    def _input(self, masks: np.ndarray, flips=None) -> torch.Tensor:
        masks = np.asarray(masks, bool)
        if masks.ndim != 3 or masks.shape[1:] != (self.mask_size, self.mask_size):
            raise UserError(f"the mask tokenizer takes (n, {self.mask_size}, {self.mask_size}) masks, "
                            f"not {masks.shape}")
        if flips is not None and np.any(flips):
            masks = np.where(np.asarray(flips, bool)[:, None, None], masks[:, :, ::-1], masks)
        return torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None].to(self.device)

    def loss(self, values: dict, crops=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: a batch of instances values["masks64"] (n, m, m); a crop's flip mirrors its mask."""
        target = self._input(values[self.field], None if crops is None else np.asarray(crops)[:, 4])
        logits, indices, aux = self.model(target)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * target).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
        return bce + dice.mean() + aux, indices

    @torch.inference_mode()
    def encode_masks(self, masks: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(n, m, m) bool -> (n, g²) int32 tokens."""
        self.model.eval()
        out = [np.zeros((0, self.tokens_per_instance), np.int32)]
        for i in range(0, len(masks), batch_size):
            _, indices, _, _ = self.model.encode(self._input(masks[i:i + batch_size]))
            out.append(indices.cpu().numpy().astype(np.int32))
        return np.concatenate(out)

    @torch.inference_mode()
    def decode_masks(self, tokens: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(n, g²) tokens -> (n, m, m) bool."""
        self.model.eval()
        tokens = np.asarray(tokens, np.int64).reshape(-1, self.tokens_per_instance)
        out = [np.zeros((0, self.mask_size, self.mask_size), bool)]
        for i in range(0, len(tokens), batch_size):
            codes = self.model.quantizer.indices_to_codes(torch.from_numpy(tokens[i:i + batch_size]).to(self.device))
            out.append((self.model.decode_codes(codes, self.grid)[:, 0] > 0).cpu().numpy())
        return np.concatenate(out)

    def round_trip(self, values: dict, crops=None) -> tuple[np.ndarray, np.ndarray]:
        """(masks, decode(encode(masks))) for instances values["masks64"] (n, m, m)."""
        masks = np.asarray(values[self.field], bool)
        return masks, self.decode_masks(self.encode_masks(masks))

    # ------------------------------------------------------------------ per sample (the Tokenizer interface)
    def encode(self, values: dict[str, np.ndarray], crops: np.ndarray | None = None) -> np.ndarray:
        """values["masks64"] (B, K, m, m) -> (B, K·g²) int32, every row of K (padding rows are empty masks)."""
        masks = np.asarray(values[self.field], bool)
        if masks.ndim != 4 or masks.shape[1] != self.max_instances:
            raise UserError(f"tokenizer for {self.config.modality} expects samples of shape "
                            f"({self.max_instances}, {self.mask_size}, {self.mask_size}), got {masks.shape[1:]}")
        b, k = masks.shape[:2]
        if crops is not None and np.asarray(crops)[:, 4].any():
            flips = np.asarray(crops)[:, 4].astype(bool)
            masks = np.where(flips[:, None, None, None], masks[..., ::-1], masks)
        return self.encode_masks(masks.reshape(b * k, *masks.shape[2:])).reshape(b, -1)

    def decode(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        tokens = np.asarray(tokens)
        masks = self.decode_masks(tokens.reshape(-1, self.tokens_per_instance))
        return {self.field: masks.reshape(len(tokens), -1, self.mask_size, self.mask_size)}


def load_mask_tokenizer(directory: str | Path) -> MaskTokenizer:
    """A mask tokenizer directory -> MaskTokenizer; a UserError for anything else."""
    directory = Path(directory)
    try:
        data = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{directory} holds no tokenizer (no readable config.json); train a mask tokenizer with "
                        "`omnimill tokenizer train STORE --field sam/masks64 --kind mask`") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind != "mask" or data.pop("format", None) != FORMAT:
        raise UserError(f"{directory} is not a mask tokenizer (kind {kind!r})")
    try:
        return MaskTokenizer.from_directory(directory, TokenizerConfig(**data))
    except UserError:
        raise
    except Exception as e:  # safetensors and torch each raise their own kind
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UserError(f"the mask tokenizer in {directory} is damaged ({reason}); retrain it") from None


def new_mask_tokenizer(config: TokenizerConfig, spec: dict, width: int, vocab: int, quantizer: str,
                          grid: int = MASK_GRID) -> MaskTokenizer:
    """A new (untrained) mask tokenizer for a stored field of kind instance_masks, (K, m, m) bool."""
    from omnimill.tokenize.quantizer import levels_for

    shape = tuple(spec["shape"])
    if len(shape) != 3 or shape[1] != shape[2] or spec["dtype"] != "bool":
        raise UserError(f"a mask tokenizer reads (K, m, m) bool instance masks (e.g. sam/masks64), not "
                        f"{list(shape)} {spec['dtype']}")
    config.normalization = {"mode": "binary"}
    config.options.update(sample_shape=list(shape), mask_size=shape[1], grid=grid, width=width, vocab=vocab,
                          quantizer=quantizer, levels=levels_for(quantizer, vocab))
    return MaskTokenizer(config)


# ---------------------------------------------------------------------- instances out of a store


def instance_pool(source, rows: np.ndarray, limit: int = MAX_TRAINING_INSTANCES, seed: int = 0) -> np.ndarray:
    """The real instances (rows before each sample's `count`) of samples `rows`: (n, m, m) bool.

    At most `limit`, drawn uniformly at random among all of them (in store order); read READ_ROWS samples at a
    time so that K padded rows per sample never sit in memory at once.
    """
    field = source.fields[0]
    rows = np.asarray(rows, np.int64)
    count_path = source.path("count")
    if not source.store.has(count_path):
        raise UserError(f"{source.name}: its teacher has no `count` field, so real instances cannot be told from "
                        "padding")
    counts = np.zeros(0, np.int64) if not len(rows) else source.store.read(count_path, rows).astype(np.int64)
    counts = np.minimum(counts, int(source.specs[field]["shape"][0]))
    total = int(counts.sum())
    chosen = np.ones(total, bool)
    if total > limit:
        chosen[:] = False
        chosen[np.random.default_rng(seed).choice(total, limit, replace=False)] = True
    side = tuple(source.specs[field]["shape"][1:])
    out, at = [np.zeros((0, *side), bool)], 0
    for i in range(0, len(rows), READ_ROWS):
        part, n = rows[i:i + READ_ROWS], counts[i:i + READ_ROWS]
        if not n.sum():
            continue
        masks = source.read(part)[field]
        real = np.concatenate([masks[j, :c] for j, c in enumerate(n)])
        out.append(real[chosen[at:at + len(real)]])
        at += len(real)
    return np.concatenate(out)


# ---------------------------------------------------------------------- crops


def crop_instances(boxes: np.ndarray, masks: np.ndarray, crop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instances into a crop's frame: (n, 4) view-pixel boxes and their (n, m, m) masks -> boxes 0..1 of the
    crop (clipped; crop_boxes), the masks of what is left of each box, and which instances survive.

    A box the crop cuts keeps the part of its mask inside the crop, resampled to m x m again (the same area
    shares as the teacher's: labelers.sam.area_resample); a flipped crop mirrors every mask, as it mirrors
    the boxes.
    """
    from omnimill.labelers.sam import HALF, area_resample
    from omnimill.tokenize.crops import crop_boxes

    top, left, h, w, flip = (int(v) for v in crop)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    masks = np.asarray(masks, bool)
    m = masks.shape[-1]
    clipped = boxes.copy()
    clipped[:, [0, 2]] = boxes[:, [0, 2]].clip(left, left + w)
    clipped[:, [1, 3]] = boxes[:, [1, 3]].clip(top, top + h)
    framed, keep = crop_boxes(clipped.astype(np.float32), crop)
    side = np.maximum(boxes[:, 2:] - boxes[:, :2], 1e-9)  # (n, 2) box width, height
    window = np.concatenate([(clipped[:, :2] - boxes[:, :2]) / side, (clipped[:, 2:] - boxes[:, :2]) / side], 1) * m
    cut = keep & (np.abs(window - [0, 0, m, m]) > 1e-6).any(1)  # survivors the crop cuts: resample those
    out = masks.copy()
    if cut.any():
        idx = np.flatnonzero(cut)
        out[idx] = (area_resample(torch.from_numpy(masks[idx]), window[idx], m) >= HALF).numpy()
    if flip:
        out = out[..., ::-1]
    return framed, np.ascontiguousarray(out), keep


# ---------------------------------------------------------------------- evaluation


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m, m) bool pairs -> (n,) IoU; two empty masks agree fully (1)."""
    inter = (a & b).sum((1, 2))
    union = (a | b).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def evaluate_mask_tokenizer(directory: str | Path, store: str, max_samples: int = 256, usage_samples: int = 2000,
                            batch_size: int = 256) -> dict:
    """Held-out mask IoU after the round trip, beside the box-filled baseline; codebook usage and perplexity
    over held-out and training instances. Writes metrics.json, reconstructions.png and usage.png."""
    from omnimill.files import write_atomic
    from omnimill.tokenize.data import check_source, open_field, split

    directory = Path(directory)
    tokenizer = load_mask_tokenizer(directory)
    config = tokenizer.config
    source = open_field(store, config.modality)
    check_source(config, source)
    train_idx, heldout_idx = split(source, config.options.get("holdout", 0.1), config.options.get("seed", 0))
    heldout = instance_pool(source, heldout_idx[:max_samples])
    if not len(heldout):
        raise UserError(f"{store} has no held-out instances for {config.modality}; evaluate on a larger store")
    recon = tokenizer.decode_masks(tokenizer.encode_masks(heldout, batch_size), batch_size)
    iou = mask_iou(heldout, recon)
    box_filled = heldout.mean((1, 2))  # IoU of the whole box with the mask = the share of the box it fills
    metrics = {"modality": config.modality, "kind": config.kind, "store": source.store.uri,
               "heldout_samples": int(min(len(heldout_idx), max_samples)), "heldout_instances": int(len(heldout)),
               "vocab_size": tokenizer.vocab_size, "tokens_per_instance": tokenizer.tokens_per_instance,
               "mask_iou": float(iou.mean()), "mask_iou_median": float(np.median(iou)),
               "pixel_accuracy": float((heldout == recon).mean()),
               "baseline_iou_box_filled": float(box_filled.mean())}
    usage_rows = np.sort(np.concatenate([heldout_idx, train_idx[:max(0, usage_samples - len(heldout_idx))]]))
    tokens = tokenizer.encode_masks(instance_pool(source, usage_rows), batch_size).ravel()
    counts = np.bincount(tokens, minlength=tokenizer.vocab_size)
    p = counts / max(counts.sum(), 1)
    metrics.update(codebook_usage=float((counts > 0).mean()), usage_instances=int(len(tokens)
                                                                                   // tokenizer.tokens_per_instance),
                   perplexity=float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())))
    _plot(heldout, recon, iou, counts, metrics, directory)
    write_atomic(directory / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def _plot(masks, recon, iou, counts, metrics: dict, directory: Path, n: int = 8) -> None:
    from matplotlib.figure import Figure

    pick = np.linspace(0, len(masks) - 1, min(n, len(masks))).round().astype(int)
    fig = Figure(figsize=(1.6 * len(pick), 3.6), dpi=100)
    for col, i in enumerate(pick):
        for row, (data, label) in enumerate(((masks, "mask in its box"), (recon, "decode(encode(x))"))):
            ax = fig.add_subplot(2, len(pick), row * len(pick) + col + 1)
            ax.imshow(data[i], cmap="gray", interpolation="nearest", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if row:
                ax.set_xlabel(f"IoU {iou[i]:.2f}")
            if col == 0:
                ax.set_ylabel(label)
    fig.suptitle(f"{metrics['modality']}: held-out instances, mean IoU {metrics['mask_iou']:.3f} "
                 f"(box-filled {metrics['baseline_iou_box_filled']:.3f})")
    fig.tight_layout()
    fig.savefig(directory / "reconstructions.png")

    from omnimill.tokenize.plots import plot_usage

    plot_usage(counts, directory / "usage.png", metrics)
