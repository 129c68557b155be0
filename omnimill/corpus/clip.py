"""The clip sample kind: a span of a video or audio file, seen as T frames on the canonical view, K audio
segments and its subtitles (corpus/media.py decodes it; corpus/clip_index.py lists a corpus into clips).

`ClipKind` lists media files by extension, fetches a pointer (never the file's bytes: a clip seeks in its
file), decodes one clip row of the clip index and gives its per-sample arrays. It is registered in corpus/kinds.py:
its `batch_fields` are the B*T frames of B clips as images (one ImageInfo per frame), so every image teacher
runs on frames unchanged, and the engine stores their outputs as (N, T, ...) (`frame_axes` = (T,)). The
clip index's columns (video, start, end, cues, errors) are kept in the label store (`index_columns`), and
the kind's settings (frames, audio segments) in its attributes, so workers decode the same clips. This
module imports nothing from corpus/listing.py at import time: listing imports the kind registry, which
imports this module.
"""

from __future__ import annotations

import io
import json
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from omnimill.corpus.media import (DEFAULT_AUDIO_SECONDS, DEFAULT_AUDIO_SEGMENTS, DEFAULT_FRAMES, DecodedClip,
                                   decode_clip)
from omnimill.corpus.image import ImageInfo
from omnimill.corpus.sample import DecodeSettings, SampleArray, SampleKind
from omnimill.corpus.subtitles import Cue
from omnimill.errors import SampleError

VIDEO_EXTS = frozenset({"mp4", "mkv", "webm", "mov", "avi"})
AUDIO_EXTS = frozenset({"wav", "flac", "mp3", "ogg", "m4a"})
MEMBER_SEP = "::"  # as corpus/listing.py writes a tar member's source: "<tar url>::<member name>"

DEFAULT_CLIPS = "scenes"  # how videos are cut when --clips is not given: at shot boundaries (content detector)
DEFAULT_MIN_SECONDS = 0.5  # a shorter clip (the tail of a fixed cut) carries too little to label
DEFAULT_MAX_SECONDS = 60.0  # a longer one is split in equal parts: frames stay dense enough to mean the clip


def is_audio_file(source: str) -> bool:
    """An audio file by its extension (its clips have no frames); anything else is decoded as a video."""
    return posixpath.splitext(source.rsplit(MEMBER_SEP, 1)[-1])[1].lower().lstrip(".") in AUDIO_EXTS


@contextmanager
def open_media_file(source: str, offset: int = -1, size: int = -1, storage_options: dict | None = None):
    """A seekable binary file of one media file: a local or fsspec file, or a tar member's bytes in place
    (a window over the tar: a 2-hour video in a shard is never read whole)."""
    from omnimill.corpus.listing import TAR_OF_SOURCE, url_to_fs  # not at import: listing imports the registry

    if offset >= 0:
        tar = TAR_OF_SOURCE.match(source)
        url = tar.group(1) if tar else source.split(MEMBER_SEP, 1)[0]
        fs, path = url_to_fs(url, storage_options)
        with fs.open(path, "rb") as f:
            yield io.BufferedReader(_Window(f, offset, size))
        return
    fs, path = url_to_fs(source, storage_options)
    with fs.open(path, "rb") as f:
        yield f


class _Window(io.RawIOBase):
    """Bytes [offset, offset + size) of a seekable file, as a file of their own."""

    def __init__(self, f, offset: int, size: int):
        self.f, self.offset, self.size, self.pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        if not n:
            return 0
        self.f.seek(self.offset + self.pos)
        data = self.f.read(n)
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


@dataclass(frozen=True)
class MediaPointer:
    """Where one clip's media file is: what `ClipKind.fetch` returns instead of bytes."""

    source: str
    offset: int = -1
    size: int = -1
    storage_options: dict | None = None


def time_problems(span, frame_times, audio_spans, audio_seconds: float) -> list[str]:
    """What is wrong with one clip's stored times (empty: nothing): the invariants corpus/media.py keeps, for
    a store's verify. The span is non-empty in file time; frame times (clip seconds) are in time order (equal
    ones are a still shown for several targets, as variable frame rate video does) and none is past the
    clip's end; every audio segment lasts `audio_seconds` and lies inside the clip, or starts at 0 when the
    clip is shorter than a segment. A frame time may be below 0: the frame on screen at the clip's first
    target may have been shown since before the clip began."""
    (start, end), tol = (float(v) for v in span), 1e-6
    duration = end - start
    if not (end > start >= 0):
        return [f"span ({start:.3f}, {end:.3f}) is empty or negative"]
    times, segments, problems = np.asarray(frame_times, np.float64), np.asarray(audio_spans, np.float64), []
    if not np.isfinite(times).all() or (np.diff(times) < -tol).any():
        problems.append(f"frame times not in time order: {np.round(times, 3).tolist()}")
    if times.size and times.max() > duration + tol:
        problems.append(f"a frame at {times.max():.3f}s, past the clip's end ({duration:.3f}s)")
    for k, (a, b) in enumerate(segments):
        if abs((b - a) - audio_seconds) > tol or a < -tol or b > max(duration, audio_seconds) + tol:
            problems.append(f"audio segment {k} ({a:.3f}, {b:.3f})s is not {audio_seconds:g}s inside the clip "
                            f"(0, {duration:.3f})s")
    return problems


class ClipKind(SampleKind):
    """A clip of a video or audio file: T frames on the canonical view, K audio segments, its subtitles."""

    name = "clip"
    noun = "video or audio"
    plural = "videos or audio files"
    extensions = VIDEO_EXTS | AUDIO_EXTS
    # The clip index's columns, kept per sample in the label store (cues: JSON [[start, end, text], ...])
    index_columns = (
        SampleArray("video", (), "str", "key of the clip's media file"),
        SampleArray("start", (), "float64", "clip start in file seconds"),
        SampleArray("end", (), "float64", "clip end in file seconds"),
        SampleArray("cues", (), "str", "subtitles cut to the clip, clip time, as JSON"),
        SampleArray("error", (), "str", "why the file did not open when listed (the clip fails)"),
        SampleArray("subtitle_error", (), "str", "why its subtitles did not parse (the clip fails)"),
    )
    index_options = {"clips": DEFAULT_CLIPS, "min_seconds": DEFAULT_MIN_SECONDS, "max_seconds": DEFAULT_MAX_SECONDS}

    def __init__(self, frames: int = DEFAULT_FRAMES, audio_segments: int = DEFAULT_AUDIO_SEGMENTS,
                 audio_seconds: float = DEFAULT_AUDIO_SECONDS):
        self.frames, self.audio_segments, self.audio_seconds = int(frames), int(audio_segments), float(audio_seconds)
        self.frame_axes = (self.frames,)
        self.sample_arrays = (
            SampleArray("span", (2,), "float64", "clip (start, end) in file seconds"),
            SampleArray("frame_times", (frames,), "float64", "each frame's pts in clip seconds"),
            SampleArray("audio_spans", (audio_segments, 2), "float64", "each audio segment in clip seconds"),
            SampleArray("has_video", (), "bool", "frames came from a video stream (false: an audio file)"),
            SampleArray("has_audio", (), "bool", "the file has an audio stream (false: audio is zeros)"),
            SampleArray("rotation", (), "int16", "degrees counter-clockwise the picture was turned upright"),
            SampleArray("crop_box", (4,), "int32", "the frames' square (x0, y0, x1, y1) in upright pixels"),
        )

    def settings(self) -> dict:
        return {"frames": self.frames, "audio_segments": self.audio_segments, "audio_seconds": self.audio_seconds}

    def configured(self, settings: dict) -> "ClipKind":
        return ClipKind(**settings) if settings and settings != self.settings() else self

    def index(self, uri: str, storage_options: dict | None = None, **options):
        """The corpus's clips (corpus/clip_index.py); options: clips ("scenes[:DETECTOR]", "fixed:10"
        or "spans"), cuts (scenes: {video key: cut times or error}, from the cut store), min_seconds,
        max_seconds."""
        from omnimill.corpus.clip_index import index_clips  # imports listing, which imports the registry

        return index_clips(uri, storage_options=storage_options,
                           **{k: v for k, v in options.items() if v is not None})

    def fetch(self, reader, sample: dict) -> MediaPointer:
        return MediaPointer(str(sample["source"]), int(sample.get("offset", -1)), int(sample.get("size", -1)),
                            getattr(reader, "storage_options", None))

    def decode(self, data, sample: dict, settings: DecodeSettings) -> DecodedClip:
        """`data`: a MediaPointer (from fetch), bytes or a path; `sample`: the clip's row (start, end, and
        optionally cues, error, subtitle_error as the clip index wrote them)."""
        if sample.get("error"):
            raise SampleError("decode", str(sample["error"]))
        if sample.get("subtitle_error"):
            raise SampleError("subtitles", str(sample["subtitle_error"]))
        start, end = float(sample["start"]), float(sample["end"])
        options = dict(view_size=settings.view_size, max_pixels=settings.max_pixels, frames=self.frames,
                       audio_segments=self.audio_segments, audio_seconds=self.audio_seconds,
                       need_video=not is_audio_file(str(sample.get("source", ""))))
        if isinstance(data, MediaPointer):
            try:
                with open_media_file(data.source, data.offset, data.size, data.storage_options) as f:
                    clip = decode_clip(f, start, end, **options)
            except OSError as e:  # gone or unreadable between listing and labelling: may be transient
                raise SampleError("read", f"{type(e).__name__}: {e}") from None
        else:
            clip = decode_clip(data, start, end, **options)
        cues = sample.get("cues") or []
        if isinstance(cues, str):  # a store keeps them as JSON text
            cues = json.loads(cues)
        clip.subtitles = [Cue(float(a), float(b), str(t)) for a, b, t in cues]
        clip.caption = str(sample.get("caption", ""))
        return clip

    def batch_fields(self, decoded: list[DecodedClip]) -> dict:
        """The image teachers' Batch arguments: views (B*T, S, S, 3), clip after clip, one ImageInfo per frame
        (the upright picture's size, the clip's caption)."""
        views = np.concatenate([d.frames for d in decoded]) if decoded else np.zeros((0, 0, 0, 3), np.uint8)
        return {"views": views, "infos": [info for d in decoded for info in self.frame_infos(d)]}

    def frame_infos(self, clip: DecodedClip) -> list[ImageInfo]:
        """One ImageInfo per frame of the clip: what an image teacher knows of the picture it sees."""
        upright = (clip.info.height, clip.info.width) if clip.rotation % 180 else (clip.info.width, clip.info.height)
        return [ImageInfo(upright[0], upright[1], "RGB", clip.info.video_codec or "none", 0, bool(clip.rotation),
                          tuple(int(c) for c in clip.crop_box), clip.caption) for _ in clip.frames]

    def clip_fields(self, decoded: list[DecodedClip]) -> dict:
        """What teachers that see whole clips get (`Batch.clips`), row per clip: frames (B, T, S, S, 3),
        frame_times (B, T) and audio_spans (B, K, 2) in clip seconds, spans (B, 2) in file seconds, audio
        (B, K, L) segments, waveforms (B arrays of the span's audio, lengths differ), has_video and has_audio
        (B,), subtitles (B lists of Cue, clip time), captions (B,) the corpus's captions. Audio is mono
        16 kHz float32 (`AUDIO_RATE`)."""
        return {"frames": np.stack([d.frames for d in decoded]),
                "frame_times": np.stack([d.frame_times for d in decoded]),
                "spans": np.stack([d.span for d in decoded]),
                "audio": np.stack([d.audio for d in decoded]),
                "audio_spans": np.stack([d.audio_spans for d in decoded]),
                "waveforms": [d.waveform for d in decoded],
                "has_video": np.array([d.has_video for d in decoded]),
                "has_audio": np.array([d.has_audio for d in decoded]),
                "subtitles": [d.subtitles for d in decoded],
                "captions": np.array([d.caption for d in decoded], dtype=object)}

    def value_problems(self, values: dict) -> list[tuple[str, str]]:
        problems = time_problems(values["span"], values["frame_times"], values["audio_spans"], self.audio_seconds)
        return [("audio_spans" if what.startswith("audio") else "span" if what.startswith("span") else "frame_times",
                 what) for what in problems]

    def sample_values(self, decoded: DecodedClip) -> dict:
        return {"span": decoded.span, "frame_times": decoded.frame_times, "audio_spans": decoded.audio_spans,
                "has_video": decoded.has_video, "has_audio": decoded.has_audio, "rotation": decoded.rotation,
                "crop_box": decoded.crop_box}
