"""dinov2: DINOv2 features (Oquab et al., 2023) via transformers: a global CLS embedding and a patch grid.

The canonical view is resized to `image_size` (default 224, as 4M-21 does), normalised with the
checkpoint's mean/std, and encoded. With patch size p the grid is g × g, g = image_size / p:
224 / 14 = 16, so ViT-B/14 gives patches of shape (16, 16, 768), stored in float16.
"""

from __future__ import annotations

from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.hf import HFTeacher


class DINOv2(HFTeacher):
    name = "dinov2"
    renderer = "dinov2"
    default_checkpoint = "facebook/dinov2-base"
    model_types = ("dinov2", "dinov2_with_registers")
    example = "dinov2=/models/dinov2-base"
    title = "DINOv2"
    options = {"image_size": (int, 224)}

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        self.image_size = self.option("image_size")
        patch = self.hf_config.patch_size
        if self.image_size % patch:
            raise ValueError(f"dinov2 image_size {self.image_size} is not a multiple of patch size {patch}")
        self.grid = self.image_size // patch

    def fields(self):
        d, g = self.hf_config.hidden_size, self.grid
        return [
            Field("cls", (d,), "float32", doc="layer-normed CLS token (global embedding)", kind="embedding"),
            Field("patches", (g, g, d), "float16", dense=True, doc=f"patch tokens on a {g}x{g} grid over the view",
                  kind="embedding_grid"),
        ]

    def config(self):
        return {**super().config(), "image_size": self.image_size, "hidden_size": self.hf_config.hidden_size,
                "patch_size": self.hf_config.patch_size}

    def load(self, device="auto", dtype="auto"):
        from transformers import AutoModel

        self.load_model(AutoModel, device, dtype)

    def __call__(self, batch: Batch):
        import torch

        if self.model is None:
            self.load()
        with torch.inference_mode():
            tokens = self.model(pixel_values=self.pixels(batch.views, self.image_size)).last_hidden_state
            # (b, 1 + registers + g*g, d), layer-normed: CLS first, patches last
            cls = tokens[:, 0].float()
            patches = tokens[:, -self.grid * self.grid:].reshape(len(batch), self.grid, self.grid, -1)
            return {"cls": cls.cpu().numpy(), "patches": patches.to(torch.float16).cpu().numpy()}
