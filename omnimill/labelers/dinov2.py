"""dinov2: DINOv2 features (Oquab et al., 2023) via transformers: a global CLS embedding and a patch grid.

The canonical view is resized to `image_size` (default 224, as 4M-21 does), normalised with the
checkpoint's mean/std, and encoded. With patch size p the grid is g × g, g = image_size / p:
224 / 14 = 16, so ViT-B/14 gives patches of shape (16, 16, 768), stored in float16.
"""

from __future__ import annotations

import json

from omnimill.labelers import checkpoints
from omnimill.labelers.base import Batch, Field, Teacher, TeacherSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DINOv2(Teacher):
    name = "dinov2"
    needs_checkpoint = True
    default_checkpoint = "facebook/dinov2-base"

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        from transformers import AutoConfig

        self.path = checkpoints.resolve(spec.checkpoint or self.default_checkpoint, self.name,
                                        "dinov2=/models/dinov2-base (a save_pretrained directory)")
        try:
            self.hf_config = AutoConfig.from_pretrained(self.path)
        except Exception as e:
            raise _bad_checkpoint(self.path, e) from None
        if self.hf_config.model_type not in ("dinov2", "dinov2_with_registers"):
            raise _bad_checkpoint(self.path, ValueError(f"model_type is {self.hf_config.model_type!r}, not dinov2"))
        self.image_size = int(spec.options.get("image_size", 224))
        patch = self.hf_config.patch_size
        if self.image_size % patch:
            raise ValueError(f"dinov2 image_size {self.image_size} is not a multiple of patch size {patch}")
        self.grid = self.image_size // patch
        self.model = None

    def fields(self):
        d, g = self.hf_config.hidden_size, self.grid
        return [
            Field("cls", (d,), "float32", doc="layer-normed CLS token (global embedding)"),
            Field("patches", (g, g, d), "float16", dense=True, doc=f"patch tokens on a {g}x{g} grid over the view"),
        ]

    def config(self):
        return {**super().config(), "image_size": self.image_size, "model_type": self.hf_config.model_type,
                "hidden_size": self.hf_config.hidden_size, "patch_size": self.hf_config.patch_size}

    def provenance(self):
        import torch
        import transformers

        info = super().provenance()
        info["checkpoint_sha256"] = checkpoints.sha256(self.path)
        info["checkpoint_path"] = str(self.path)
        info["libraries"].update(torch=torch.__version__, transformers=transformers.__version__)
        return info

    def load(self, device="auto", dtype="auto"):
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        from omnimill.labelers.torch_device import pick_device, pick_dtype

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        hf_logging.disable_progress_bar()  # one bar per worker per load is noise in a labelling log
        try:
            self.model = AutoModel.from_pretrained(self.path, dtype=self.dtype).to(self.device).eval()
        except Exception as e:
            raise _bad_checkpoint(self.path, e) from None
        mean, std = _normalisation(self.path)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def __call__(self, batch: Batch):
        import torch
        import torch.nn.functional as F

        if self.model is None:
            self.load()
        with torch.inference_mode():
            x = torch.from_numpy(batch.views).to(self.device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float() / 255.0  # b h w c -> b c h w, 0..1
            if x.shape[-1] != self.image_size:
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                                  antialias=True, align_corners=False)
            x = ((x - self.mean) / self.std).to(self.dtype)
            tokens = self.model(pixel_values=x).last_hidden_state  # (b, 1 + g*g, d), layer-normed
            cls = tokens[:, 0].float()
            patches = tokens[:, -self.grid * self.grid:].reshape(len(batch), self.grid, self.grid, -1)
            return {"cls": cls.cpu().numpy(), "patches": patches.to(torch.float16).cpu().numpy()}


def _normalisation(path) -> tuple[tuple, tuple]:
    """Mean/std from the checkpoint's preprocessor_config.json, ImageNet's when it has none."""
    config = path / "preprocessor_config.json" if path.is_dir() else None
    if config is not None and config.exists():
        data = json.loads(config.read_text())
        return tuple(data.get("image_mean", IMAGENET_MEAN)), tuple(data.get("image_std", IMAGENET_STD))
    return IMAGENET_MEAN, IMAGENET_STD


def _bad_checkpoint(path, error):
    from omnimill.errors import UserError

    return UserError(f"teacher dinov2: {path} is not a loadable DINOv2 checkpoint ({type(error).__name__}: "
                     f"{str(error).splitlines()[0][:200]}); pass a directory written by save_pretrained")
