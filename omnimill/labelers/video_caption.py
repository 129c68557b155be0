"""video_captioner: captions of a clip from its frames, with the image captioner's BLIP or GIT model.

A teacher that sees whole clips (`sees = "clips"`): a batch row is one clip's T frames (the clip kind's
`--frames`, default 8, each the middle frame of T equal parts of the clip). The model is labelers/caption.py's
`Captioner` (BLIP `BlipForConditionalGeneration` or GIT `GitForCausalLM`, same checkpoint, same
normalisation, same beam search); this module only chooses frames and puts their captions together.
Which of two ways it runs is decided by the checkpoint:

- **frames** (any image captioner, e.g. Salesforce/blip-image-captioning-base, microsoft/git-base-coco):
  option `frames` = F (default 1) frames are captioned one by one, F picked evenly among the clip's T frames:
  frame `floor((j + 0.5) * T / F)` for j < F (F = 1: the middle frame; F = T: every frame; F = T / k: every
  k-th frame). Stored per clip:
    `caption`        () str      the distinct frame captions in frame order, joined by "; "
    `frame_captions` (F,) str    the distinct captions, in frame order ("" = padding)
    `frame_index`    (F,) int32  the frame (0..T-1) each caption was first seen on (-1 = padding); its time
                                 in clip seconds is the store's `frame_times[clip, frame_index]`
    `count`          () int32    distinct non-empty captions
- **video** (a GIT checkpoint trained on several frames, `num_image_with_embedding` = n in its config, e.g.
  microsoft/git-base-vatex with n = 6): GIT encodes n frames, adds each one's temporal embedding and
  captions the clip at once (transformers' own video path: pixel_values (B, n, 3, h, w)). The n frames are
  picked the same way (a clip of fewer than n frames repeats some). Stored per clip: `caption` () str, and
  `frame_index` (n,) int32, the frames the model saw. Option `frames` must be n or left out.

A clip without video (an audio file: has_video False) gets the absent value: caption "", count 0, indices
-1; the model is not run on it. Options: frames, num_beams, max_new_tokens (as the captioner's).
"""

from __future__ import annotations

import numpy as np

from omnimill.errors import UserError
from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.caption import MAX_NEW_TOKENS, NUM_BEAMS, Captioner
from omnimill.labelers.hf import HFTeacher

JOIN = "; "  # between distinct frame captions in `caption`
MAX_FRAMES = 64  # more captioned frames than any clip setting gives is a typo


def chosen_frames(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `total` frames: the middle of `count` equal parts (repeats
    when count > total)."""
    return [min(total - 1, int((j + 0.5) * total / count)) for j in range(count)]


def distinct_in_order(captions: list[str], frames: list[int]) -> list[tuple[str, int]]:
    """(caption, first frame) of each distinct non-empty caption, in frame order."""
    first: dict[str, int] = {}
    for caption, frame in zip(captions, frames):
        if caption and caption not in first:
            first[caption] = frame
    return list(first.items())


class VideoCaptioner(HFTeacher):
    name = "video_captioner"
    sees = "clips"
    default_checkpoint = Captioner.default_checkpoint
    model_types = ("blip", "git")
    example = "video_captioner=/models/blip-image-captioning-base"
    title = Captioner.title
    options = {"frames": (int, None), "num_beams": (int, NUM_BEAMS), "max_new_tokens": (int, MAX_NEW_TOKENS)}

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        options = {key: spec.options[key] for key in ("num_beams", "max_new_tokens") if key in spec.options}
        try:
            self.captioner = Captioner(TeacherSpec("captioner", str(self.path), options), view_size)
        except UserError as e:  # its checks (no tokenizer, ...) speak of "teacher captioner": say which teacher
            raise UserError(str(e).replace("teacher captioner", f"teacher {self.name}", 1)) from None
        self.video_frames = getattr(self.hf_config, "num_image_with_embedding", None)  # GIT trained on clips
        frames = self.option("frames")
        if self.video_frames:
            if frames not in (None, self.video_frames):
                raise UserError(f"teacher {self.name}: {self.path} captions {self.video_frames} frames at once "
                                f"(num_image_with_embedding); leave out option frames, or set it to {self.video_frames}")
            frames = self.video_frames
        self.frames = 1 if frames is None else frames
        if not 1 <= self.frames <= MAX_FRAMES:
            raise UserError(f"teacher {self.name}: frames must be 1..{MAX_FRAMES}, not {self.frames}")

    @property
    def mode(self) -> str:
        return "video" if self.video_frames else "frames"

    def fields(self):
        f = self.frames
        if self.mode == "video":
            return [Field("caption", (), "str", doc="the clip's caption, from all its chosen frames at once",
                          kind="text"),
                    Field("frame_index", (f,), "int32", doc="frames the model saw (0..T-1); -1 without video",
                          kind="scalar")]
        return [Field("caption", (), "str", doc=f"distinct frame captions in frame order, joined by {JOIN!r}",
                      kind="text"),
                Field("frame_captions", (f,), "str", doc="distinct frame captions in frame order; '' = padding",
                      kind="text"),
                Field("frame_index", (f,), "int32", doc="frame (0..T-1) of each caption; -1 = padding",
                      kind="scalar"),
                Field("count", (), "int32", doc="distinct non-empty frame captions", kind="count")]

    def config(self):
        inner = self.captioner.config()
        return {**super().config(), "mode": self.mode, "frames": self.frames, "image_size": inner["image_size"],
                "num_beams": inner["num_beams"], "max_new_tokens": inner["max_new_tokens"]}

    def load(self, device="auto", dtype="auto"):
        self.captioner.load(device, dtype)
        self.model, self.device = self.captioner.model, self.captioner.device

    def __call__(self, batch: Batch):
        import torch

        if self.model is None:
            self.load()
        n, total = len(batch), batch.views.shape[1]
        picked = chosen_frames(total, self.frames)
        has_video = np.asarray(batch.clips["has_video"], bool) if batch.clips else np.ones(n, bool)
        rows = np.flatnonzero(has_video)
        captions = np.full(n, "", dtype=object)
        index = np.full((n, self.frames), -1, np.int32)
        frame_captions = np.full((n, self.frames), "", dtype=object)
        count = np.zeros(n, np.int32)
        if self.mode == "video":
            with torch.inference_mode():
                for i, text in zip(rows, self._caption_clips(batch.views[rows][:, picked])):
                    captions[i], index[i] = text, picked
            return {"caption": captions, "frame_index": index}
        picked = sorted(set(picked))  # a clip of fewer frames than F: each frame once
        with torch.inference_mode():
            texts = self._caption_frames(batch.views[rows][:, picked])
        for r, i in enumerate(rows):
            kept = distinct_in_order(texts[r * len(picked):(r + 1) * len(picked)], picked)
            captions[i] = JOIN.join(text for text, _ in kept)
            frame_captions[i, :len(kept)] = [text for text, _ in kept]
            index[i, :len(kept)] = [frame for _, frame in kept]
            count[i] = len(kept)
        return {"caption": captions, "frame_captions": frame_captions, "frame_index": index, "count": count}

    def _caption_frames(self, frames: np.ndarray) -> list[str]:
        """(B, F, S, S, 3) frames -> B*F captions, clip-major, each frame on its own (the captioner's beam search)."""
        if not len(frames):
            return []
        c = self.captioner
        pixels = c.pixels(frames.reshape(-1, *frames.shape[2:]), c.image_size)
        return c.generate(pixels, num_beams=c.num_beams, do_sample=False)

    def _caption_clips(self, frames: np.ndarray) -> list[str]:
        """(B, n, S, S, 3) frames -> B captions, GIT seeing each clip's n frames together."""
        if not len(frames):
            return []
        c = self.captioner
        b, f = frames.shape[:2]
        pixels = c.pixels(frames.reshape(-1, *frames.shape[2:]), c.image_size)
        return c.generate(pixels.reshape(b, f, *pixels.shape[1:]), num_beams=c.num_beams, do_sample=False)
