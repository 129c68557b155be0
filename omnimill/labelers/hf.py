"""Shared plumbing for teachers built on a transformers checkpoint (DINOv2, depth, segmentation, ...).

A subclass names the model types it accepts and an example checkpoint; this base finds the checkpoint
(local directory or hub id), reads its config without loading weights, refuses a checkpoint of another
model with a clear message, fingerprints it for provenance, loads it onto the device, and turns canonical
views into normalised pixel tensors. The subclass only writes `fields()`, `load()` and `__call__()`.
"""

from __future__ import annotations

import json

import numpy as np
from typing import ClassVar

from omnimill.errors import UserError
from omnimill.labelers import checkpoints
from omnimill.labelers.base import Teacher, TeacherSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HFTeacher(Teacher):
    needs_checkpoint = True
    model_types: ClassVar[tuple[str, ...]] = ()  # accepted `config.model_type` values
    example: ClassVar[str] = ""  # e.g. "dinov2=/models/dinov2-base", shown when a checkpoint is wrong
    title: ClassVar[str] = ""  # the model family as people write it ("DINOv2"), for messages

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        from transformers import AutoConfig

        example = self.example or f"{self.name}=/models/{self.name}"
        self.path = checkpoints.resolve(spec.checkpoint or self.default_checkpoint, self.name,
                                        f"{example} (a save_pretrained directory)")
        try:
            self.hf_config = AutoConfig.from_pretrained(self.path)
        except Exception as e:
            raise self.bad_checkpoint(e) from None
        if self.model_types and self.hf_config.model_type not in self.model_types:
            raise self.bad_checkpoint(ValueError(f"model_type is {self.hf_config.model_type!r}, "
                                                 f"expected {' or '.join(self.model_types)}"))
        self.model = None

    def bad_checkpoint(self, error: Exception) -> UserError:
        first_line = next((line for line in str(error).splitlines() if line.strip()), "")[:200]
        return UserError(f"teacher {self.name}: {self.path} is not a loadable {self.title or self.name} checkpoint "
                         f"({type(error).__name__}: {first_line}); pass a directory written by save_pretrained")

    def config(self) -> dict:
        return {**super().config(), "model_type": self.hf_config.model_type}

    def provenance(self) -> dict:
        import torch
        import transformers

        info = super().provenance()
        info.update(checkpoints.fingerprint(self.path))
        info["libraries"].update(torch=torch.__version__, transformers=transformers.__version__)
        return info

    def load_model(self, auto_class, device: str, dtype: str):
        """Load weights with `auto_class` (AutoModel, AutoModelForDepthEstimation, ...) onto the device."""
        from transformers.utils import logging as hf_logging

        from omnimill.labelers.torch_device import pick_device, pick_dtype

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        hf_logging.disable_progress_bar()  # one bar per worker per load is noise in a labelling log
        try:
            model, info = auto_class.from_pretrained(self.path, dtype=self.dtype, output_loading_info=True)
            # transformers only warns about missing weights and draws them at random: a segmentation
            # checkpoint loaded for depth would label a whole corpus with a random head. Refuse instead.
            params = dict(model.named_parameters())
            missing = sorted(k for k in info["missing_keys"] if k in params)  # buffers are rebuilt, weights not
            if missing:
                raise ValueError(f"{len(missing)} weights missing from the checkpoint, e.g. {', '.join(missing[:3])}")
            self.model = model.to(self.device).eval()
        except Exception as e:
            raise self.bad_checkpoint(e) from None
        mean, std = self.normalisation()
        import torch

        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        return self.model

    def processor(self) -> dict:
        """The checkpoint's preprocessor_config.json (input size, mean/std), {} when it has none."""
        config = self.path / "preprocessor_config.json" if self.path.is_dir() else None
        return json.loads(config.read_text()) if config is not None and config.exists() else {}

    def normalisation(self) -> tuple[tuple, tuple]:
        """Mean/std from the checkpoint's preprocessor_config.json, ImageNet's when it has none."""
        data = self.processor()
        if not data:
            return IMAGENET_MEAN, IMAGENET_STD
        if data.get("do_normalize", True) is False:  # RT-DETR, D-FINE: raw 0..1 pixels
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return tuple(data.get("image_mean", IMAGENET_MEAN)), tuple(data.get("image_std", IMAGENET_STD))

    def pixels(self, views, size: int | tuple[int, int]):
        """(B, S, S, 3) uint8 views -> (B, 3, h, w) normalised tensor on the device, in the model's dtype."""
        import torch
        import torch.nn.functional as F

        h, w = (size, size) if isinstance(size, int) else size
        x = torch.from_numpy(np.ascontiguousarray(views)).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float() / 255.0  # b h w c -> b c h w, 0..1
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return ((x - self.mean) / self.std).to(self.dtype)


def processor_size(processor: dict) -> int | None:
    """The square input side a processor asks for: `"size": 640`, `{"height": 518, ...}` or `{"shortest_edge": 384}`."""
    size = processor.get("size")
    return size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
