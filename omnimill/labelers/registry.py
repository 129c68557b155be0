"""Teachers by name. `module.path:ClassName` plugs in a teacher of your own (importable on workers)."""

from __future__ import annotations

import importlib

from omnimill.errors import UserError
from omnimill.labelers.base import Teacher, TeacherSpec

BUILTIN = {
    "rgb": "omnimill.labelers.rgb:RGB",
    "metadata": "omnimill.labelers.metadata:Metadata",
    "palette": "omnimill.labelers.palette:Palette",
    "canny": "omnimill.labelers.canny:Canny",
    "dinov2": "omnimill.labelers.dinov2:DINOv2",
    "detection": "omnimill.labelers.detection:Detection",
    "pose": "omnimill.labelers.pose:Pose",
    "sam": "omnimill.labelers.sam:SAM",
    "depth": "omnimill.labelers.depth:Depth",
    "normals": "omnimill.labelers.normals:Normals",
    "semseg": "omnimill.labelers.semseg:SemSeg",
    "clip": "omnimill.labelers.clip:CLIP",
    "imagebind": "omnimill.labelers.imagebind:ImageBind",
    "captioner": "omnimill.labelers.caption:Captioner",
    "caption_embed": "omnimill.labelers.caption_embed:CaptionEmbed",
    "captioner_embed": "omnimill.labelers.caption_embed:CaptionerEmbed",
}


def available() -> list[str]:
    return sorted(BUILTIN)


def teacher_class(name: str) -> type[Teacher]:
    target = BUILTIN.get(name, name)
    if ":" not in target:
        raise UserError(f"unknown teacher {name!r}; choose from {', '.join(available())} "
                        "or give module.path:ClassName for a teacher of your own")
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"teacher {name!r} could not be imported ({e}); is its module on PYTHONPATH?") from None
    if not (isinstance(cls, type) and issubclass(cls, Teacher)):
        raise UserError(f"{name!r} is not an omnimill.labelers.Teacher subclass")
    return cls


def build(spec: TeacherSpec, view_size: int) -> Teacher:
    """Construct (not load) a teacher: reads configs, checks the checkpoint exists, no weights."""
    cls = teacher_class(spec.name)
    if spec.checkpoint and not cls.needs_checkpoint:
        raise UserError(f"teacher {spec.name} takes no checkpoint; drop '={spec.checkpoint}'")
    cls.check_options(spec)  # before the checkpoint is read: a typo costs nothing
    return cls(spec, view_size)  # stored under cls.name; spec.name is how workers find the class
