"""Teachers by name. `module.path:ClassName` plugs in a teacher of your own (importable on workers).

A label store's provenance names the teacher that made each group, but a store is data: `stored_teacher`
imports only what the user already trusts, never a module a store (or a tokenizer's config) names:
omnimill's own teachers, plug-ins installed for omnimill (entry points in the group `omnimill.teachers`,
`name = "module.path:ClassName"`), and classes whose module this process has already imported (the user's
code, or the teacher named with `--teacher`): taking one of those runs no new code.
"""

from __future__ import annotations

import importlib
import sys

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
    "t5_embed": "omnimill.labelers.t5_embed:T5Embed",
    # clips: teachers that see whole clips (audio, speech, captions of the clip)
    "vad": "omnimill.labelers.vad:VAD",
    "log_mel": "omnimill.labelers.log_mel:LogMel",
    "asr": "omnimill.labelers.asr:ASR",
    "clap": "omnimill.labelers.clap:CLAP",
    "audio_tags": "omnimill.labelers.audio_tags:AudioTags",
    "audio_captioner": "omnimill.labelers.audio_captioner:AudioCaptioner",
    "video_captioner": "omnimill.labelers.video_caption:VideoCaptioner",
    "omni_caption": "omnimill.labelers.omni_caption:OmniCaption",
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


PLUGIN_GROUP = "omnimill.teachers"  # entry points of installed plug-in teachers: name = "module.path:Class"


def installed_plugins() -> dict[str, str]:
    """name -> module.path:Class of every plug-in teacher installed for omnimill (entry points)."""
    from importlib.metadata import entry_points

    return {e.name: e.value for e in entry_points(group=PLUGIN_GROUP)}


def stored_teacher(teacher: str, provenance: dict | None = None) -> type[Teacher] | None:
    """The class of a store's teacher group, from its provenance's spec (else the group's name), if it may be
    imported without trusting the store: a built-in, an installed plug-in, or one this process has already
    imported. None otherwise, or when it cannot be imported: callers then fall back (an option, generic tiles)."""
    name = str((provenance or {}).get("spec") or teacher).partition("=")[0].strip()
    plugins = installed_plugins() if ":" in name or name not in BUILTIN else {}
    target = BUILTIN.get(name) or plugins.get(name) or name
    module = target.partition(":")[0]
    trusted = target in BUILTIN.values() or target in plugins.values() or module in sys.modules
    if ":" not in target or not trusted:
        return None
    try:
        return teacher_class(target)
    except UserError:
        return None
