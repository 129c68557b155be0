"""pose: human keypoints (COCO-17) of every detected person, top-down with ViTPose.

Paper: Xu et al., ViTPose: Simple Vision Transformer Baselines for Human Pose Estimation (NeurIPS 2022).
Requires the `detection` teacher: its person boxes (class `person_class`, best score first) are the people.

Each person box is grown to the model's aspect ratio (W/H = 192/256 = 3:4) and by 1.25, as ViTPose was
trained, and cropped from the canonical view (bilinear) to H x W = 256 x 192. All crops of a batch go through
the model together; it predicts one heatmap per keypoint at 1/4 of the crop, 64 x 48. A keypoint is the
heatmap's maximum, refined to sub-pixel precision by DARK (Zhang et al., CVPR 2020), mapped back to view
pixels; its score is the heatmap's value there. The decoding follows transformers' VitPoseImageProcessor
(unbiased data processing: pixel centres at integer coordinates, a crop's first and last pixel on its edges).
Per sample, P = max_people (20), J = 17 keypoints (nose, eyes, ears, shoulders, elbows, wrists, hips,
knees, ankles; names in config["keypoints"]; COCO's names, skeleton and visibility threshold, which the
pose serializer and picture use, are in schema.py):

    keypoints        (P, J, 2) float32  x, y in view pixels; 0 where padded
    keypoint_scores  (P, J)    float32  heatmap maximum (about 0..1); 0 where padded
    boxes            (P, 4)    float32  the person's detection box x0, y0, x1, y1 in view pixels
    count            ()        int32    people labelled, <= P
"""

from __future__ import annotations

import numpy as np

from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.hf import HFTeacher

MAX_PEOPLE = 20  # people kept per image, highest detection score first
CROP_BATCH = 64  # person crops per model call: bounds memory on crowded batches
BOX_PADDING = 1.25  # ViTPose grows each person box by 25% before cropping, as in training
DARK_SIGMA, DARK_RADIUS = 0.8, 5  # the heatmap blur before DARK (transformers' kernel 11)


class Pose(HFTeacher):
    name = "pose"
    serializer = "pose"
    renderer = "pose"
    requires = ("detection",)
    default_checkpoint = "usyd-community/vitpose-base-simple"
    model_types = ("vitpose",)
    example = "pose=/models/vitpose-base-simple"
    title = "ViTPose"
    options = {"max_people": (int, MAX_PEOPLE), "person_class": (int, None)}  # None: the detector's "person"

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        backbone = self.hf_config.backbone_config
        size = backbone.image_size
        self.crop = (size, size) if isinstance(size, int) else tuple(size)  # (H, W) = (256, 192)
        self.max_people = self.option("max_people")
        self.person_class = self.option("person_class")  # None: the detector's own id of "person"
        self.experts = getattr(backbone, "num_experts", 1)  # ViTPose+ has one MLP expert per dataset
        self.keypoints = [self.hf_config.id2label[i] for i in range(self.hf_config.num_labels)]

    def fields(self):
        p, j = self.max_people, len(self.keypoints)
        return [
            Field("keypoints", (p, j, 2), "float32", doc="x, y in view pixels, one row per person; 0 = padding", kind="keypoints"),
            Field("keypoint_scores", (p, j), "float32", doc="heatmap maximum per keypoint; 0 = padding", kind="scores"),
            Field("boxes", (p, 4), "float32", doc="the person's detection box x0, y0, x1, y1 in view pixels", kind="boxes"),
            Field("count", (), "int32", doc="people labelled", kind="count"),
        ]

    def config(self):
        return {**super().config(), "crop": list(self.crop), "max_people": self.max_people,
                "person_class": self.person_class, "keypoints": self.keypoints, "box_padding": BOX_PADDING}

    def load(self, device="auto", dtype="auto"):
        from transformers import VitPoseForPoseEstimation

        self.load_model(VitPoseForPoseEstimation, device, dtype)

    def __call__(self, batch: Batch):
        import torch

        if self.model is None:
            self.load()
        owner, boxes = self.people(batch.upstream["detection"])
        n, p, j = len(batch), self.max_people, len(self.keypoints)
        out = {"keypoints": np.zeros((n, p, j, 2), np.float32), "keypoint_scores": np.zeros((n, p, j), np.float32),
               "boxes": np.zeros((n, p, 4), np.float32), "count": np.bincount(owner, minlength=n).astype(np.int32)}
        if not len(owner):
            return out
        slot = np.concatenate([np.arange(c) for c in out["count"]])  # row of each person within its image
        out["boxes"][owner, slot] = boxes

        views = torch.from_numpy(batch.views).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        centres, sizes = person_regions(torch.from_numpy(boxes).to(self.device), self.crop)
        index = torch.from_numpy(owner).to(self.device)
        keypoints, scores = [], []
        with torch.inference_mode():
            for s in range(0, len(owner), CROP_BATCH):
                part = slice(s, s + CROP_BATCH)
                crops = crop(views[index[part]], centres[part], sizes[part], self.crop)
                pixels = ((crops - self.mean) / self.std).to(self.dtype)
                extra = {}
                if self.experts > 1:  # ViTPose+: one MLP expert per training dataset; 0 is COCO's
                    extra["dataset_index"] = torch.zeros(len(pixels), dtype=torch.long, device=self.device)
                heatmaps = self.model(pixel_values=pixels, **extra).heatmaps.float()
                k, sc = decode(heatmaps, centres[part], sizes[part])
                keypoints.append(k)
                scores.append(sc)
        out["keypoints"][owner, slot] = torch.cat(keypoints).cpu().numpy()
        out["keypoint_scores"][owner, slot] = torch.cat(scores).cpu().numpy()
        return out

    def people(self, detection: dict) -> tuple[np.ndarray, np.ndarray]:
        """(image index, box) of every person to label: the first max_people person boxes of each image."""
        boxes, classes, count = detection["boxes"], detection["classes"], detection["count"]
        person = detection["person_class"] if self.person_class is None else np.full(len(count), self.person_class)
        detected = np.arange(classes.shape[1])[None, :] < count[:, None]
        is_person = detected & (classes == person[:, None]) & (person[:, None] >= 0)
        # detections are sorted best first, so the first max_people persons are the most confident ones
        keep = is_person & (np.cumsum(is_person, axis=1) <= self.max_people)
        owner, which = np.nonzero(keep)  # row-major: image by image, best first
        return owner, boxes[owner, which].astype(np.float32)


def person_regions(boxes, crop: tuple[int, int]):
    """Person boxes (N, 4) x0, y0, x1, y1 -> the regions ViTPose crops: centre (N, 2) and size (N, 2) as (w, h).

    The box keeps its centre, grows its short side to the crop's aspect ratio, then grows by BOX_PADDING.
    """
    import torch

    aspect = crop[1] / crop[0]  # W / H
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    w, h = torch.maximum(w, h * aspect), torch.maximum(h, w / aspect)
    return centre, torch.stack([w, h], -1) * BOX_PADDING


def crop(views, centres, sizes, crop: tuple[int, int]):
    """Cut each region from its view (N, 3, S, S) into an H x W crop, bilinear, zeros outside the view.

    Crop pixel (u, v) samples view point x = cx - w/2 + u * w / (W - 1) (and alike for y): the region's edges
    land on the first and last crop pixels, as in ViTPose's training (UDP); grid_sample with
    align_corners=True puts view pixel centres at integers 0..S-1, as the boxes' coordinates assume.
    """
    import torch
    import torch.nn.functional as F

    (h_out, w_out), side = crop, views.shape[-1]
    u = torch.linspace(0, 1, w_out, device=views.device)
    v = torch.linspace(0, 1, h_out, device=views.device)
    x = centres[:, 0, None] + sizes[:, 0, None] * (u[None] - 0.5)  # (n, W) view x of each crop column
    y = centres[:, 1, None] + sizes[:, 1, None] * (v[None] - 0.5)  # (n, H)
    grid = torch.stack(torch.broadcast_tensors(x[:, None, :], y[:, :, None]), -1)  # (n, H, W, 2) as (x, y)
    return F.grid_sample(views, grid / (side - 1) * 2 - 1, mode="bilinear", padding_mode="zeros",
                         align_corners=True)


def decode(heatmaps, centres, sizes):
    """Heatmaps (N, J, h, w) of the regions (centres, sizes) -> keypoints (N, J, 2) in view pixels, scores (N, J).

    argmax, then DARK: on the log of the lightly blurred heatmap, one Newton step
    x <- x - Hessian^-1 * gradient from finite differences around the maximum (a Gaussian peak's log is a
    parabola, so the step lands on the true sub-pixel peak), at most one heatmap pixel. Then heatmap pixel
    (0 .. w - 1) -> region edge to edge, as the crop was taken.
    """
    import torch
    import torch.nn.functional as F

    n, j, h, w = heatmaps.shape
    scores, flat = heatmaps.flatten(2).max(-1)
    py, px = flat // w, flat % w

    logmap = _blur(heatmaps).clamp(0.001, 50).log()
    padded = F.pad(logmap, (1, 1, 1, 1), mode="replicate")  # (n, j, h + 2, w + 2); the peak sits at (py+1, px+1)

    def at(dy: int, dx: int):
        return padded.flatten(2).gather(-1, ((py + 1 + dy) * (w + 2) + px + 1 + dx)[..., None])[..., 0]

    centre = at(0, 0)
    dx = (at(0, 1) - at(0, -1)) / 2
    dy = (at(1, 0) - at(-1, 0)) / 2
    dxx = at(0, 1) - 2 * centre + at(0, -1)
    dyy = at(1, 0) - 2 * centre + at(-1, 0)
    dxy = (at(1, 1) - at(0, 1) - at(1, 0) + 2 * centre - at(0, -1) - at(-1, 0) + at(-1, -1)) / 2
    eps = torch.finfo(torch.float32).eps  # keeps a flat map's zero Hessian invertible, as transformers does
    dxx, dyy = dxx + eps, dyy + eps
    det = dxx * dyy - dxy * dxy  # 2 x 2 inverse written out: [[dyy, -dxy], [-dxy, dxx]] / det
    step = torch.stack([dyy * dx - dxy * dy, dxx * dy - dxy * dx], -1) / det[..., None]
    step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)  # no peak to refine: keep the argmax
    # a refinement is sub-pixel: a longer step means the parabola fit failed on a flat or noisy map
    # (transformers applies it anyway and can throw a keypoint out of its box); on a real peak it never binds
    step = step.clamp(-1, 1)
    peak = torch.stack([px, py], -1).float() - step  # (n, j, 2) in heatmap pixels

    scale = sizes / torch.tensor([w - 1, h - 1], device=heatmaps.device)  # view pixels per heatmap pixel
    keypoints = peak * scale[:, None] + (centres - sizes / 2)[:, None]
    return keypoints, scores


def _blur(heatmaps):
    """Gaussian blur (sigma 0.8, radius 5), edges mirrored as scipy's gaussian_filter does (mode 'reflect')."""
    import torch
    import torch.nn.functional as F

    r = DARK_RADIUS
    t = torch.arange(-r, r + 1, dtype=heatmaps.dtype, device=heatmaps.device)
    kernel = torch.exp(-0.5 * (t / DARK_SIGMA) ** 2)
    kernel = kernel / kernel.sum()
    n, j, h, w = heatmaps.shape
    x = heatmaps.reshape(n * j, 1, h, w)
    x = torch.cat([x[..., :r].flip(-1), x, x[..., -r:].flip(-1)], -1)  # "dcba|abcd": edge pixel repeated
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], -2)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.view(n, j, h, w)
