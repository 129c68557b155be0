"""depth: monocular depth (Depth Anything V1/V2, DPT) via transformers, on the canonical-view grid.

Depth Anything V2 (Yang et al., 2024) and DPT (Ranftl et al., 2021; the MiDaS models) are trained
scale- and shift-invariantly: what they output is **relative inverse depth** (disparity): larger = nearer,
up to an unknown scale and shift per image, never metres. It is stored as it comes, in a field named
`disparity`, so nobody mistakes it for depth. Checkpoints trained on metric depth (Depth Anything's
metric variants, `depth_estimation_type: metric`; DPT with a DINOv2 backbone, i.e. the DINOv2 paper's
NYU/KITTI heads) output metres instead; their field is `depth`. `config["output"]` records which.

The view (S × S) is resized to the checkpoint's input size (preprocessor_config.json; 518 for Depth
Anything = 37 patches of 14, 384 for DPT ViT-L/16 = 24 patches of 16), normalised with its mean/std,
and the prediction (518 × 518 for Depth Anything) is resized back to S × S bilinearly (a continuous
map: no overshoot below zero, unlike bicubic). Stored as float16: 2^-11 ≈ 0.05% relative precision,
far below the models' own error (AbsRel ≈ 4-8%), at half of float32's size (384² × 2 B = 288 KiB).
"""

from __future__ import annotations


from omnimill.errors import UserError
from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.hf import HFTeacher, processor_size

FLOAT16_MAX = 65504.0  # MiDaS-style disparities reach thousands; clamp rather than store inf


class Depth(HFTeacher):
    name = "depth"
    renderer = "depth"
    default_checkpoint = "depth-anything/Depth-Anything-V2-Small-hf"  # Apache-2.0; Base/Large are CC-BY-NC-4.0
    model_types = ("depth_anything", "dpt")
    example = "depth=/models/Depth-Anything-V2-Small-hf"
    title = "depth-estimation (Depth Anything / DPT)"
    options = {"output": (str, None), "image_size": (int, None)}  # None: what the checkpoint says

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        self.output = self.option("output") or self._output_kind()
        if self.output not in ("disparity", "depth"):
            raise UserError(f"teacher depth: option output={self.output!r}; choose disparity or depth")
        self.image_size = self._input_size()

    def _output_kind(self) -> str:
        """What the checkpoint predicts: relative inverse depth ("disparity") or metres ("depth")."""
        c = self.hf_config
        if c.model_type == "depth_anything":
            return "depth" if c.depth_estimation_type == "metric" else "disparity"
        backbone = getattr(c, "backbone_config", None)  # dpt: ViT/hybrid = MiDaS (relative), DINOv2 = metric heads
        return "depth" if backbone is not None and backbone.model_type.startswith("dinov2") else "disparity"

    def _input_size(self) -> int:
        """Side of the model's square input: option, else preprocessor_config.json, else the config's image_size."""
        backbone = getattr(self.hf_config, "backbone_config", None)  # DINOv2 for Depth Anything, BiT for DPT-hybrid
        size = int(self.option("image_size") or processor_size(self.processor())
                   or getattr(self.hf_config, "image_size", None) or getattr(backbone, "image_size", None) or 384)
        patch = getattr(backbone, "patch_size", None) or getattr(self.hf_config, "patch_size", 16)
        if size % patch:  # the ViT grid must tile the input (518 = 37 x 14)
            raise UserError(f"teacher depth: image_size {size} is not a multiple of the patch size {patch}")
        return size

    def fields(self):
        s = self.view_size
        if self.output == "disparity":
            doc = ("relative inverse depth (disparity) over the view: larger = nearer; unknown scale and shift "
                   "per image (affine-invariant), not metres")
        else:
            doc = "metric depth in metres over the view"
        # relative: tokenizers standardise each sample (disparity has no scale across images; metric depth
        # has always been treated alike, and tokenizers keep doing so)
        return [Field(self.output, (s, s), "float16", dense=True, doc=doc, kind="continuous", relative=True)]

    def config(self):
        return {**super().config(), "image_size": self.image_size, "output": self.output}

    def load(self, device="auto", dtype="auto"):
        from transformers import AutoModelForDepthEstimation

        self.load_model(AutoModelForDepthEstimation, device, dtype)

    def __call__(self, batch: Batch):
        import torch
        import torch.nn.functional as F

        if self.model is None:
            self.load()
        s = self.view_size
        with torch.inference_mode():
            predicted = self.model(pixel_values=self.pixels(batch.views, self.image_size)).predicted_depth
            # (b, h, w) at the model's resolution -> (b, S, S) on the view grid, in float32 before rounding
            on_view = F.interpolate(predicted[:, None].float(), size=(s, s), mode="bilinear", align_corners=False)
            on_view = on_view[:, 0].clamp(-FLOAT16_MAX, FLOAT16_MAX)
            return {self.output: on_view.to(torch.float16).cpu().numpy()}
