"""Multi-crop geometry shared by every modality of a sample (4M's pre-computed crops).

A crop is (top, left, h, w, flip) in canonical-view pixels (the view is S × S). Crop 0 is the whole
view, unflipped; crops 1..n-1 are random square crops covering 50–100% of the view's side, flipped
with probability 1/2, drawn from a generator seeded by (seed, key) so the same sample always gets the
same crops, whatever the order or the machine.

Applying a crop: dense maps are cut and resized (`crop_dense`), points are moved into the crop's
frame (`crop_points`), global values are left alone.

A clip's crops are drawn the same way from its key, on its frames' canonical view, and one spatial crop
applies to all T frames of the clip (`frame_crops`): the frames, their per-frame labels and the clip's audio
and texts (which crops leave alone) stay aligned in every crop, as an image's modalities do. There is no
crop in time: every crop holds the whole clip.
"""

from __future__ import annotations

import hashlib

import numpy as np

MIN_SCALE = 0.5  # smallest crop side as a share of the view side


def make_crops(keys, view_size: int, n_crops: int, seed: int = 0) -> np.ndarray:
    """(N, n_crops, 5) int32."""
    crops = np.zeros((len(keys), n_crops, 5), np.int32)
    for i, key in enumerate(keys):
        crops[i, 0] = (0, 0, view_size, view_size, 0)
        rng = np.random.default_rng(_key_seed(str(key), seed))
        for c in range(1, n_crops):
            side = int(round(view_size * rng.uniform(MIN_SCALE, 1.0)))
            top = int(rng.integers(0, view_size - side + 1))
            left = int(rng.integers(0, view_size - side + 1))
            crops[i, c] = (top, left, side, side, int(rng.random() < 0.5))
    return crops


def frame_crops(crops: np.ndarray, frames: int) -> np.ndarray:
    """(B, 5) crops of B clips -> (B * frames, 5): each clip's crop once per frame, in the order frames are read."""
    return np.repeat(np.asarray(crops), frames, axis=0)


def _key_seed(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")


def crop_dense(maps: np.ndarray, crops: np.ndarray, view_size: int, size: int, mode: str = "bilinear"):
    """Cut each crop out of a dense map and resize it to size × size.

    maps: (B, H, W) or (B, H, W, C) on a grid over the view (H may differ from the view size: a 16 × 16
    DINOv2 grid over a 384 px view). crops: (B, 5) in view pixels, scaled here by H / view_size.
    mode: "bilinear" for continuous values, "nearest" for ids, "max" for masks and edges (a cell is on if any
    pixel under it is: nearest sampling would drop thin edges when shrinking). Returns float32 (B, size, size[, C]).
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(maps))
    squeeze = x.ndim == 3
    if squeeze:
        x = x[..., None]
    x = x.permute(0, 3, 1, 2).float()  # b h w c -> b c h w
    scale = x.shape[-1] / view_size
    out = []
    for i, (top, left, h, w, flip) in enumerate(np.asarray(crops)):
        t, l = int(round(top * scale)), int(round(left * scale))
        hh, ww = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        patch = x[i:i + 1, :, t:t + hh, l:l + ww]
        if patch.shape[-2:] != (size, size):
            if mode == "max" and patch.shape[-1] > size:
                patch = F.adaptive_max_pool2d(patch, (size, size))
            else:
                kwargs = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
                patch = F.interpolate(patch, size=(size, size), mode="nearest" if mode == "max" else mode, **kwargs)
        if flip:
            patch = patch.flip(-1)
        out.append(patch)
    y = torch.cat(out).permute(0, 2, 3, 1).numpy()
    return y[..., 0] if squeeze else y


def crop_points(xy: np.ndarray, crop, view_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Move (..., 2) view-pixel points into a crop's frame, normalised to 0..1; also return which are inside.

    A flipped crop mirrors x. Points outside the crop keep their (out-of-range) coordinates; `inside`
    says which ones a serializer should keep.
    """
    top, left, h, w, flip = (int(v) for v in crop)
    x = (xy[..., 0] - left) / w
    y = (xy[..., 1] - top) / h
    if flip:
        x = 1.0 - x
    inside = (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
    return np.stack([x, y], -1).astype(np.float32), inside


def crop_boxes(boxes: np.ndarray, crop) -> tuple[np.ndarray, np.ndarray]:
    """(K, 4) x0,y0,x1,y1 view-pixel boxes -> boxes in the crop's frame, 0..1, clipped; and which survive.

    A box survives if some of it lies inside the crop. Flipping swaps x0 and x1 so x0 <= x1 still holds.
    """
    corners = boxes.reshape(-1, 2, 2)
    moved, _ = crop_points(corners, crop)
    x = np.sort(moved[..., 0], axis=1)
    y = np.sort(moved[..., 1], axis=1)
    out = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], -1).clip(0, 1)
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out.astype(np.float32), keep
