"""semseg: semantic segmentation (SegFormer, Mask2Former) via transformers: a class id per pixel of the view.

SegFormer (Xie et al., 2021) predicts per-pixel class logits at 1/4 of its input; Mask2Former (Cheng et
al., 2022) predicts Q masks (at 1/4 of its input) and a class distribution for each, whose semantic
reading is score(c, pixel) = Σ_q softmax(class_q)[c] · sigmoid(mask_q(pixel)), the "no object" class
dropped. Either way the argmax is taken on the view (S × S), after bilinear resizing of the logits
(SegFormer's class logits; Mask2Former's mask logits, before the sigmoid, as its reference inference
does), so class boundaries are drawn at view resolution rather than as blown-up 4-pixel blocks.

The view is resized to the checkpoint's input size (preprocessor_config.json: 640 for SegFormer-B5
ADE-640, 384 for the Mask2Former ADE/COCO checkpoints), normalised with its mean/std. Stored: `classes`
(S, S) uint16 (150 ADE20K or 133 COCO-panoptic classes fit; 65,536 at most). The names, in id order,
are `config.class_names` in the teacher's attributes (from the checkpoint's id2label). For SegFormer
ADE, id 0 is "wall": ADE's "other" label was dropped in training (reduce_labels), so every pixel gets
one of the 150 classes.
"""

from __future__ import annotations

from omnimill.errors import UserError
from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.hf import HFTeacher, processor_size

DEFAULT_INPUT = {"segformer": 512, "mask2former": 384}  # when a checkpoint has no preprocessor_config.json
MULTIPLE = {"segformer": 32, "mask2former": 32}  # both downsample 32x; Mask2Former's Swin windows need it


class SemSeg(HFTeacher):
    name = "semseg"
    renderer = "semseg"
    default_checkpoint = "nvidia/segformer-b5-finetuned-ade-640-640"
    model_types = ("segformer", "mask2former")
    example = "semseg=/models/segformer-b5-finetuned-ade-640-640"
    title = "semantic-segmentation (SegFormer / Mask2Former)"
    options = {"image_size": (int, None)}  # None: the checkpoint's

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        kind = self.hf_config.model_type
        size = processor_size(self.processor())
        self.image_size = int(self.option("image_size") or size or DEFAULT_INPUT[kind])
        if self.image_size % MULTIPLE[kind]:
            raise UserError(f"teacher semseg: image_size {self.image_size} is not a multiple of {MULTIPLE[kind]}")
        labels = self.hf_config.id2label
        self.class_names = [labels[i] for i in range(len(labels))]
        if len(self.class_names) > 65536:
            raise UserError(f"teacher semseg: {len(self.class_names)} classes do not fit the uint16 class map")

    def fields(self):
        s, n = self.view_size, len(self.class_names)
        return [Field("classes", (s, s), "uint16", dense=True,
                      doc=f"class id (0..{n - 1}) per pixel of the view; names in config.class_names",
                      kind="classes")]

    def config(self):
        return {**super().config(), "image_size": self.image_size, "class_names": self.class_names}

    def load(self, device="auto", dtype="auto"):
        from transformers import AutoModelForSemanticSegmentation, Mask2FormerForUniversalSegmentation

        kind = self.hf_config.model_type
        auto = Mask2FormerForUniversalSegmentation if kind == "mask2former" else AutoModelForSemanticSegmentation
        self.load_model(auto, device, dtype)

    def __call__(self, batch: Batch):
        import torch

        if self.model is None:
            self.load()
        with torch.inference_mode():
            out = self.model(pixel_values=self.pixels(batch.views, self.image_size))
            if self.hf_config.model_type == "mask2former":
                maps = [self._mask2former(c, m) for c, m in zip(out.class_queries_logits, out.masks_queries_logits)]
            else:
                maps = [self._argmax_on_view(logits) for logits in out.logits]
            return {"classes": torch.stack(maps).cpu().numpy().astype("uint16")}

    # One image at a time: the scores on the view (C × S × S) take 150 × 384² × 4 B = 88 MB per image.

    def _argmax_on_view(self, scores):
        """(C, h, w) class scores -> (S, S) class ids, resizing the scores (not the ids) to the view."""
        import torch.nn.functional as F

        s = self.view_size
        return F.interpolate(scores[None].float(), size=(s, s), mode="bilinear", align_corners=False)[0].argmax(0)

    def _mask2former(self, class_logits, mask_logits):
        """(Q, C + 1) class logits and (Q, h, w) mask logits -> (S, S) class ids."""
        import torch
        import torch.nn.functional as F

        s = self.view_size
        probs = class_logits.float().softmax(-1)[:, :-1]  # drop the last class: "no object"
        masks = F.interpolate(mask_logits[None].float(), size=(s, s), mode="bilinear", align_corners=False)[0]
        return torch.einsum("qc,qhw->chw", probs, masks.sigmoid()).argmax(0)
