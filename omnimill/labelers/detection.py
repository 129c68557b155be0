"""detection: object boxes, classes and scores from a DETR-family detector (RT-DETR, D-FINE, DETR, ...).

Paper: Carion et al., End-to-End Object Detection with Transformers (DETR, 2020). The default checkpoint is
RT-DETRv2 with a ResNet-50-vd backbone (Lv et al., 2024, after Zhao et al., "DETRs Beat YOLOs on Real-time
Object Detection", 2023), trained on COCO's 80 classes. Any transformers checkpoint of model type rt_detr,
rt_detr_v2, d_fine, detr, conditional_detr, deformable_detr or yolos works; DETR-style hub checkpoints that
use a timm backbone need `pip install timm`.

The canonical view (S x S) is resized to the detector's input size I (640 for RT-DETR, from the checkpoint's
preprocessor_config.json), the model predicts for each of Q queries C class logits and one box
(centre x, centre y, width, height as fractions of the input), boxes are scaled to view pixels (x S), and
the K best (query, class) pairs above the score threshold are kept, best first. Per sample, K = 100:

    boxes         (K, 4) float32  x0, y0, x1, y1 in view pixels, 0..S; 0 where padded
    classes       (K,)   int32    the checkpoint's class ids (names: config["id2label"]); -1 where padded
    scores        (K,)   float32  0 where padded
    count         ()     int32    detections kept, <= K
    person_class  ()     int32    the checkpoint's id of "person" (-1 if it has none): the pose teacher reads it
"""

from __future__ import annotations


import numpy as np

from omnimill.errors import UserError
from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.hf import HFTeacher, processor_size

MAX_DETECTIONS = 100  # COCO's evaluation keeps 100 boxes per image
THRESHOLD = 0.3  # score below which a detection is dropped (ViTPose's person detector uses 0.3 too)
DEFAULT_IMAGE_SIZE = 640  # input side when the checkpoint has no preprocessor_config.json
UNNORMALISED = ("rt_detr", "rt_detr_v2", "d_fine")  # trained on 0..1 pixels: their processor skips mean/std


class Detection(HFTeacher):
    name = "detection"
    serializer = "detection"
    renderer = "detection"
    default_checkpoint = "PekingU/rtdetr_v2_r50vd"
    model_types = ("rt_detr", "rt_detr_v2", "d_fine", "detr", "conditional_detr", "deformable_detr", "yolos")
    example = "detection=/models/rtdetr_v2_r50vd"
    title = "DETR-family detector"
    options = {"image_size": (int, None), "max_detections": (int, MAX_DETECTIONS), "threshold": (float, THRESHOLD)}

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        backbone = getattr(self.hf_config, "backbone_config", None)
        if getattr(backbone, "model_type", None) == "timm_backbone":
            try:
                import timm  # noqa: F401
            except ImportError:
                raise UserError(f"teacher detection: {self.path} uses a timm backbone; pip install timm, "
                                "or pick a checkpoint without one (e.g. PekingU/rtdetr_v2_r50vd)") from None
        self.preprocessor = self.processor()
        self.image_size = int(self.option("image_size") or processor_size(self.preprocessor) or DEFAULT_IMAGE_SIZE)
        anchors = getattr(self.hf_config, "anchor_image_size", None)  # RT-DETR may fix its anchors to one size
        if anchors and list(np.broadcast_to(anchors, 2)) != [self.image_size] * 2:
            raise UserError(f"teacher detection: {self.path} has anchors for {anchors} inputs; "
                            f"image_size {self.image_size} does not fit them")
        self.max_detections = self.option("max_detections")
        self.threshold = self.option("threshold")
        self.id2label = {int(i): str(n) for i, n in self.hf_config.id2label.items()}
        self.person_class = next((i for i, n in sorted(self.id2label.items()) if n.lower() == "person"), -1)

    def fields(self):
        k = self.max_detections
        return [
            Field("boxes", (k, 4), "float32", doc="x0, y0, x1, y1 in view pixels, best score first; 0 = padding", kind="boxes"),
            Field("classes", (k,), "int32", doc="class id (provenance config id2label); -1 = padding", kind="classes"),
            Field("scores", (k,), "float32", doc="detection confidence; 0 = padding", kind="scores"),
            Field("count", (), "int32", doc="detections kept (score > threshold)", kind="count"),
            Field("person_class", (), "int32", doc="the class id of 'person', -1 if the detector has none", kind="scalar"),
        ]

    def config(self):
        return {**super().config(), "image_size": self.image_size, "max_detections": self.max_detections,
                "threshold": self.threshold, "id2label": {str(i): n for i, n in self.id2label.items()},
                "person_class": self.person_class}

    def normalisation(self):
        """RT-DETR and D-FINE see plain 0..1 pixels; the older DETRs ImageNet-normalised ones."""
        if not self.preprocessor.get("do_normalize", self.hf_config.model_type not in UNNORMALISED):
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return super().normalisation()

    def load(self, device="auto", dtype="auto"):
        from transformers import AutoModelForObjectDetection

        self.load_model(AutoModelForObjectDetection, device, dtype)

    def __call__(self, batch: Batch):
        import torch

        if self.model is None:
            self.load()
        with torch.inference_mode():
            out = self.model(pixel_values=self.pixels(batch.views, self.image_size))
            result = postprocess(out.logits.float(), out.pred_boxes.float(), self.hf_config.num_labels,
                                 self.view_size, self.max_detections, self.threshold)
        result = {k: v.cpu().numpy() for k, v in result.items()}
        result["person_class"] = np.full(len(batch), self.person_class, np.int32)
        return result


def postprocess(logits, boxes, num_labels: int, view_size: int, k: int, threshold: float) -> dict:
    """Raw detector output -> the K best detections per image, padded. Batched, on the logits' device.

    logits (B, Q, C) or (B, Q, C + 1), boxes (B, Q, 4) as (cx, cy, w, h) fractions of the input.
    Two families score differently:
    - sigmoid ("focal loss": RT-DETR, D-FINE, Deformable/Conditional DETR): C logits per query, each an
      independent probability, so every (query, class) pair is a candidate; the best K of Q x C are kept.
    - softmax (DETR, YOLOS): C + 1 logits per query, the last one "no object"; the probabilities of the
      real classes give one class per query, and the best K of Q are kept.
    """
    import torch

    b, q, c = logits.shape
    if c == num_labels + 1:
        probs = logits.softmax(-1)[..., :-1]
        scores, classes = probs.max(-1)  # (b, q)
        query = torch.arange(q, device=logits.device).expand(b, q)
    else:
        scores = logits.sigmoid().flatten(1)  # (b, q * c): pair i is query i // c, class i % c
        pair = torch.arange(q * c, device=logits.device).expand(b, -1)
        query, classes = pair // c, pair % c
    n = min(k, scores.shape[1])
    scores, order = scores.topk(n, dim=1)  # sorted, best first
    classes, query = classes.gather(1, order), query.gather(1, order)

    cx, cy, w, h = boxes.gather(1, query[..., None].expand(b, n, 4)).unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * view_size
    xyxy = xyxy.clamp(0, view_size)  # a box reaching past the view is cut at its edge, where the pixels end

    keep = scores > threshold  # scores are sorted, so the kept ones come first
    out_boxes = torch.zeros(b, k, 4, device=logits.device)
    out_classes = torch.full((b, k), -1, dtype=torch.int32, device=logits.device)
    out_scores = torch.zeros(b, k, device=logits.device)
    out_boxes[:, :n] = torch.where(keep[..., None], xyxy, 0.0)
    out_classes[:, :n] = torch.where(keep, classes.int(), -1)
    out_scores[:, :n] = torch.where(keep, scores, 0.0)
    return {"boxes": out_boxes, "classes": out_classes, "scores": out_scores, "count": keep.sum(1).int()}
