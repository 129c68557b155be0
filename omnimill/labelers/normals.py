"""normals: surface normals from TIPSv2-DPT (Google DeepMind, 2026) via transformers, on the canonical-view grid.

Which model, and why: 4M-21 used Omnidata's DPT-hybrid, but its weights are a Lightning `.ckpt` for
timm code that transformers cannot load; DSINE and Marigold-normals need code (or diffusers) this
project does not carry; Sapiens2 normals are trained on people only. TIPSv2's DPT heads (a frozen
TIPSv2 ViT with depth, normals and ADE20K segmentation heads; normals trained on NYU Depth V2) are
native transformers models (`AutoModelForNormalEstimation`, model type `tipsv2_dpt`): the hub
checkpoint `google/tipsv2-b14-dpt` (B/14; also l14, so400m14, g14) or any `save_pretrained` directory
loads with no conversion of ours (transformers maps the official key names itself).

The view (S × S) is resized to the checkpoint's input size (448 = 32 patches of 14) as pixels in
[0, 1] (TIPS takes no mean/std). The head predicts an unnormalised 3-vector on a grid 8 × finer than
the patches (32 × 8 = 256 for 448); each vector is normalised, the field is resized to S × S
bilinearly and normalised again (as the TIPS demo does), giving unit vectors (S, S, 3) in float16
(components to 2^-11; |n| = 1 ± 1e-3).

Convention: x, y, z are the axes of the checkpoint's camera frame, stored as predicted (never
flipped here): for TIPSv2 that is the frame of its NYU Depth V2 training normals, channel order
x, y, z. Picture them as RGB = (n + 1) / 2, as the TIPS demo does. Frames differ between normal
datasets; compare a floor or wall before mixing stores labelled by different checkpoints.
"""

from __future__ import annotations

from omnimill.errors import UserError
from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.hf import HFTeacher, processor_size


class Normals(HFTeacher):
    name = "normals"
    renderer = "normals"
    default_checkpoint = "google/tipsv2-b14-dpt"
    model_types = ("tipsv2_dpt",)
    example = "normals=/models/tipsv2-b14-dpt"
    title = "TIPSv2-DPT normals"
    options = {"image_size": (int, None)}  # None: the checkpoint's

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        backbone = self.hf_config.backbone_config
        size = processor_size(self.processor())
        self.image_size = int(self.option("image_size") or size or backbone.image_size)
        if self.image_size % backbone.patch_size:
            raise UserError(f"teacher normals: image_size {self.image_size} is not a multiple of the patch "
                            f"size {backbone.patch_size}")

    def fields(self):
        s = self.view_size
        return [Field("normals", (s, s, 3), "float16", dense=True,
                      doc="unit surface normal (x, y, z) per pixel of the view, in the checkpoint's camera frame",
                      kind="unit_vectors")]

    def config(self):
        return {**super().config(), "image_size": self.image_size}

    def normalisation(self):
        # TIPS is trained on [0, 1] pixels (its processor has do_normalize=False); a checkpoint saved
        # without preprocessor_config.json must get them too, not the base class's ImageNet fallback
        processor = self.processor()
        if processor.get("do_normalize", False):
            return super().normalisation()
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def load(self, device="auto", dtype="auto"):
        from transformers import AutoModelForNormalEstimation

        self.load_model(AutoModelForNormalEstimation, device, dtype)

    def __call__(self, batch: Batch):
        import torch
        import torch.nn.functional as F

        if self.model is None:
            self.load()
        s = self.view_size
        with torch.inference_mode():
            raw = self.model(pixel_values=self.pixels(batch.views, self.image_size)).normals  # (b, 3, h', w')
            unit = F.normalize(raw.float(), dim=1)  # direction only: the length means nothing
            unit = F.interpolate(unit, size=(s, s), mode="bilinear", align_corners=False)
            unit = F.normalize(unit, dim=1)  # blending unit vectors shortens them
            return {"normals": unit.permute(0, 2, 3, 1).to(torch.float16).cpu().numpy()}  # b 3 s s -> b s s 3
