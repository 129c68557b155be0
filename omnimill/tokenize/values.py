"""What a label's values mean, and how a tokenizer turns them into model inputs and back.

Five modes, picked from the field's kind (labelers/fields.py; override with `--mode`):

  image       uint8 (H, W, 3)            /255, then per-channel mean/std         loss: MSE + L1
  continuous  float (H, W[, C]) or (D,)  per-channel mean/std over the train set  loss: MSE + L1
              a `relative` field (relative depth: no scale shared across images) is standardised per image
  unit        float (H, W, 3) unit normals  as is; decoded vectors renormalised     loss: MSE + (1 - cos)
  binary      bool (H, W)                 0/1                                     loss: BCE, pos_weight = neg/pos
  classes     integer ids (H, W)          an embedding per class                  loss: cross-entropy

Kinds map to modes by MODE_OF_KIND; a kind without a numeric mode (boxes, keypoints, ...) falls back to
its dtype and shape. A field of a store written before kinds existed has none in its provenance: its mode
is then inferred as it always was, from dtype, shape and name ("normal" in the name: unit vectors; depth
and disparity standardised per image).

The normalisation is part of the tokenizer's config, so encode/decode apply it themselves.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from omnimill.labelers.fields import RELATIVE_NAMES

MODES = ("image", "continuous", "unit", "binary", "classes")
MODE_OF_KIND = {"image": "image", "continuous": "continuous", "unit_vectors": "unit", "binary": "binary",
                "classes": "classes", "instances": "classes", "embedding": "continuous",
                "embedding_grid": "continuous"}
PER_IMAGE_FIELDS = RELATIVE_NAMES  # stores without kinds: relative depth by name


def infer_mode(field: str, dtype: str, shape: tuple, kind: str | None = None) -> str:
    """The value mode of a field: from its kind when known, else from dtype, shape and (old stores) name."""
    if kind in MODE_OF_KIND:
        return MODE_OF_KIND[kind]
    code = np.dtype(dtype).kind if dtype != "str" else "U"
    if code == "b":
        return "binary"
    if dtype == "uint8" and len(shape) == 3 and shape[-1] == 3:
        return "image"
    if code in "iu":
        return "classes"
    if code == "f":
        by_name = not kind and "normal" in field  # only a field that declares no kind is judged by its name
        return "unit" if by_name and shape[-1:] == (3,) else "continuous"
    raise ValueError(f"field {field} of dtype {dtype} has no numeric mode; use a sequence tokenizer")


def mode_of(field: str, spec: dict) -> str:
    """The value mode of a stored field, from its provenance entry (shape, dtype, kind when recorded)."""
    return infer_mode(field, spec["dtype"], tuple(spec["shape"]), spec.get("kind"))


def fit(mode: str, samples: np.ndarray, field: str, n_classes: int | None = None,
        relative: bool | None = None) -> dict:
    """Normalisation statistics from training samples (B, ...). `relative`: standardise each image on its own
    (labelers.fields.relative_of gives it from the field's provenance); None: by the field's name, as stores without kinds."""
    norm: dict = {"mode": mode}
    if mode in ("image", "continuous"):
        x = samples.astype(np.float32) / (255.0 if mode == "image" else 1.0)
        channels = x.shape[-1] if x.ndim == 4 or mode == "image" else 1
        flat = x.reshape(-1, channels) if channels > 1 or x.ndim == 4 else x.reshape(-1, 1)
        per_image = field in PER_IMAGE_FIELDS if relative is None else relative
        norm["per_image"] = mode == "continuous" and bool(per_image)
        norm["mean"] = flat.mean(0).tolist()
        norm["std"] = np.maximum(flat.std(0), 1e-6).tolist()
    elif mode == "binary":
        positive = float(samples.mean())
        norm["pos_weight"] = float(np.clip((1 - positive) / max(positive, 1e-6), 1.0, 20.0))
    elif mode == "classes":
        norm["n_classes"] = int(n_classes or int(samples.max()) + 1)
    return norm


def channels_in(norm: dict, sample_shape: tuple) -> int:
    if norm["mode"] == "classes":
        return 0  # embedded, not fed as channels
    return sample_shape[-1] if len(sample_shape) == 3 else 1


def channels_out(norm: dict, sample_shape: tuple) -> int:
    return norm["n_classes"] if norm["mode"] == "classes" else max(1, channels_in(norm, sample_shape))


def to_target(x: np.ndarray, norm: dict) -> torch.Tensor:
    """(B, H, W[, C]) raw (cropped) values -> model target: float (B, C, H, W), or long ids (B, H, W)."""
    mode = norm["mode"]
    if mode == "classes":
        return torch.from_numpy(np.rint(x).astype(np.int64))
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if t.ndim == 3:
        t = t[:, None]
    else:
        t = t.permute(0, 3, 1, 2)
    if mode == "image":
        t = t / 255.0
    if mode in ("image", "continuous"):
        if norm.get("per_image"):
            mean = t.mean(dim=(1, 2, 3), keepdim=True)
            std = t.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        else:
            mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
            std = torch.tensor(norm["std"]).view(1, -1, 1, 1)
        t = (t - mean) / std
    return t


def loss(pred: torch.Tensor, target: torch.Tensor, norm: dict) -> torch.Tensor:
    mode = norm["mode"]
    if mode == "classes":
        return F.cross_entropy(pred, target)
    if mode == "binary":
        return F.binary_cross_entropy_with_logits(pred, target,
                                                  pos_weight=torch.tensor(norm["pos_weight"], device=pred.device))
    base = F.mse_loss(pred, target) + F.l1_loss(pred, target)
    if mode == "unit":
        base = base + (1 - F.cosine_similarity(pred, target, dim=1)).mean()
    return base


def from_output(pred: torch.Tensor, norm: dict) -> np.ndarray:
    """Model output -> values in the field's own units: (B, H, W[, C]). Per-image depth stays standardised."""
    mode = norm["mode"]
    if mode == "classes":
        return pred.argmax(1).numpy().astype(np.int32)
    if mode == "binary":
        return (pred[:, 0] > 0).numpy()
    if mode == "unit":
        pred = F.normalize(pred, dim=1)
    elif not norm.get("per_image"):
        pred = pred * torch.tensor(norm["std"]).view(1, -1, 1, 1) + torch.tensor(norm["mean"]).view(1, -1, 1, 1)
        if mode == "image":
            pred = (pred * 255.0).clamp(0, 255)
    out = pred.permute(0, 2, 3, 1).numpy()
    if mode == "image":
        return np.rint(out).astype(np.uint8)
    return out[..., 0] if out.shape[-1] == 1 else out
