"""Decode one clip of a video or audio file with PyAV: T frames on the canonical view, K audio segments,
the subtitles of the span. It seeks: one clip never decodes the whole file, so memory stays flat however
long the file is; and it demuxes one stream at a time (the others discarded), so frames never make the
demuxer read audio packets, nor audio video packets.

Times. Span, frame times, audio segments and subtitles are in seconds. A span (start, end) is in file time,
0 being the container's start; `frame_times`, `audio_spans` and the cut subtitles are in clip time (0 =
span start), so every per-frame and per-segment field lines up with its clip without knowing the file.

Frames (MiCo's rule): target t_i = the middle of the i-th of T equal parts of the span; the frame taken is
the one on screen then (the last with pts <= t_i), which is right for variable frame rates too. Each is cut
like a still image (corpus/image.py): the centre square of the upright picture (display-matrix rotation
honoured, as a phone records portrait video, or an old-style `rotate` stream tag), resized to the view size
(one scaler per clip); `crop_box` is that square in the upright picture's pixels.

Audio: mono, 16 kHz float32 in [-1, 1]. The span's audio is decoded once (`waveform`, what speech teachers
hear); the K segments of `audio_seconds` each are cut from it, centred on the middles of K equal parts of the
span and kept inside it (a clip shorter than a segment is zero-padded at the end). A file without an audio
stream gives zeros and `has_audio=False`: absent, not a failure.

Bad input raises `SampleError("decode", reason)` (or "subtitles"): empty file, not a media file, truncated,
no video stream in a video file, a codec this PyAV build cannot decode, frames above --max-pixels, a span
outside the file, frames wanted past the end of the video stream (its audio running on: told apart from a
truncated file by the stream's header). PyAV is imported inside functions: importing the kind registry
stays cheap.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np

from omnimill.corpus.image import DEFAULT_MAX_PIXELS, centre_square
from omnimill.corpus.subtitles import Cue, cut, parse_subtitles
from omnimill.errors import SampleError

DEFAULT_FRAMES = 8  # MiCo: 8 frames per clip
DEFAULT_AUDIO_SEGMENTS = 3
DEFAULT_AUDIO_SECONDS = 2.0
AUDIO_RATE = 16_000
RESEEK_GAP = 2.0  # seconds: a next target farther ahead than this is reached by seeking, not by decoding through
TRUNCATED_SLACK = 1.0  # seconds: a target this far past the last frame means the file ends early


@dataclass
class MediaInfo:
    """What a file holds, from its header (nothing decoded)."""

    duration: float  # seconds; 0.0 when the container does not say
    has_video: bool
    has_audio: bool
    video_codec: str = ""
    audio_codec: str = ""
    width: int = 0  # stored picture size; see `rotation`
    height: int = 0
    fps: float = 0.0  # average frame rate as the container states it (0 when unknown)


@dataclass
class DecodedClip:
    frames: np.ndarray  # (T, S, S, 3) uint8; zeros when the file has no video (an audio file)
    frame_times: np.ndarray  # (T,) float64, clip time of each frame's pts
    span: np.ndarray  # (2,) float64, file time
    audio: np.ndarray  # (K, audio_seconds * 16000) float32
    waveform: np.ndarray  # (round((end - start) * 16000),) float32: the whole span's audio (ASR, VAD hear it all)
    audio_spans: np.ndarray  # (K, 2) float64, clip time
    has_video: bool
    has_audio: bool
    rotation: int  # degrees counter-clockwise the stored picture was turned to stand upright
    crop_box: tuple[int, int, int, int]  # the view's square in upright-picture pixels (0s without video)
    info: MediaInfo
    subtitles: list[Cue] = field(default_factory=list)  # cut to the span, clip time
    caption: str = ""  # the corpus's caption of the clip (ClipKind.decode sets it from the index row)


def open_media(source):
    """`source` (bytes, a local path, or a seekable binary file object) -> an open PyAV input container."""
    import av

    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise SampleError("decode", "empty file (0 bytes)")
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        if os.path.getsize(source) == 0:
            raise SampleError("decode", "empty file (0 bytes)")
    else:
        head = source.read(1)
        if not head:
            raise SampleError("decode", "empty file (0 bytes)")
        source.seek(0)
    try:
        return av.open(source, mode="r")
    except av.error.FFmpegError as e:
        raise SampleError("decode", f"not a readable media file ({_reason(e)})") from None


def probe(source) -> MediaInfo:
    """The header facts of a media file; SampleError if it does not open."""
    with open_media(source) as container:
        return _info(container)


def _info(container) -> MediaInfo:
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    duration = container.duration / 1_000_000 if container.duration else 0.0
    if not duration:
        for stream in (video, audio):
            if stream is not None and stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
                break
    info = MediaInfo(duration, video is not None, audio is not None)
    if video is not None:  # codec_context is None for a codec this FFmpeg build does not know
        info.video_codec = video.codec_context.name if video.codec_context else "unknown"
        if video.codec_context:
            info.width, info.height = video.codec_context.width, video.codec_context.height
        info.fps = float(video.average_rate) if video.average_rate else 0.0
    if audio is not None:
        info.audio_codec = audio.codec_context.name if audio.codec_context else "unknown"
    return info


def frame_targets(start: float, end: float, count: int) -> np.ndarray:
    """Middles of `count` equal parts of [start, end] (MiCo's frame times)."""
    return start + (np.arange(count) + 0.5) * (end - start) / count


def audio_segment_spans(start: float, end: float, count: int, seconds: float) -> np.ndarray:
    """(count, 2) file-time spans of `seconds` each, centred on the middles of `count` equal parts of
    [start, end] and moved to lie inside it; when the clip is shorter than `seconds` they start at `start`
    (and the decoder zero-pads them past `end`)."""
    centres = frame_targets(start, end, count)
    begins = np.clip(centres - seconds / 2, start, max(start, end - seconds))
    return np.stack([begins, begins + seconds], axis=1)


def decode_clip(
    source,
    start: float,
    end: float,
    *,
    view_size: int = 224,
    frames: int = DEFAULT_FRAMES,
    audio_segments: int = DEFAULT_AUDIO_SEGMENTS,
    audio_seconds: float = DEFAULT_AUDIO_SECONDS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    need_video: bool = True,
    subtitles: str | bytes | None = None,
) -> DecodedClip:
    """Decode the clip [start, end) (file seconds) of `source` (see `open_media`). `need_video=False` is for
    audio files: frames are zeros and `has_video` False. `subtitles` is SRT/VTT text; its cues are cut to the
    span. Raises SampleError for bad input (module docstring)."""
    if not (end > start >= 0):
        raise SampleError("decode", f"empty or negative span ({start:.3f}s, {end:.3f}s)")
    cues = cut(parse_subtitles(subtitles), start, end) if subtitles else []
    import av
    from av.video.reformatter import VideoReformatter

    with open_media(source) as container:
        info = _info(container)
        if info.duration and start >= info.duration:
            raise SampleError("decode", f"span starts at {start:.3f}s, after the file's end ({info.duration:.3f}s)")
        origin = container.start_time / av.time_base if container.start_time else 0.0
        span = np.array([start, end], dtype=np.float64)
        views = np.zeros((frames, view_size, view_size, 3), np.uint8)
        times = frame_targets(0.0, end - start, frames)
        rotation, box = 0, (0, 0, 0, 0)
        has_video = info.has_video and need_video  # an audio file's cover picture is no video
        if has_video:
            stream = container.streams.video[0]
            _check_decodable(stream, "video")
            if info.width * info.height > max_pixels:
                raise SampleError("decode", f"frames of {info.width}x{info.height} = {info.width * info.height:,} "
                                            f"pixels > limit {max_pixels:,} (raise --max-pixels to accept them)")
            stream.thread_type = "SLICE"  # not frame threads: the engine decodes clips in parallel already,
            #                               and a few frames per seek gain nothing from a frame pipeline (~10%)
            _demux_only(container, stream)
            picked = _pick_frames(container, stream, frame_targets(start, end, frames) + origin)
            tagged = rotate_tag(stream.metadata)
            scaler = VideoReformatter()  # one scaler for the clip's frames: built once, not per frame (8x)
            for i, frame in enumerate(picked):
                views[i], rotation, box = _view(frame, view_size, tagged, scaler)
                times[i] = _time(frame) - origin - start
        elif need_video:
            what = f"audio only ({info.audio_codec})" if info.has_audio else "no audio either"
            raise SampleError("decode", f"no video stream in a video file: {what}")
        seg_spans = audio_segment_spans(start, end, audio_segments, audio_seconds)
        waveform = np.zeros(int(round((end - start) * AUDIO_RATE)), np.float32)
        if info.has_audio:
            stream = container.streams.audio[0]
            _check_decodable(stream, "audio")
            _demux_only(container, stream)
            waveform = _audio_segment(container, stream, start + origin, end + origin, waveform.size)
        audio = segments_of(waveform, seg_spans - start, int(round(audio_seconds * AUDIO_RATE)))
    return DecodedClip(views, times, span, audio, waveform, seg_spans - start, has_video, info.has_audio,
                       rotation, box, info, cues)


def segments_of(waveform: np.ndarray, spans: np.ndarray, length: int) -> np.ndarray:
    """(K, length) pieces of a clip's waveform at `spans` (clip seconds), zero-padded past its end."""
    out = np.zeros((len(spans), length), np.float32)
    for k, (a, _) in enumerate(spans):
        first = int(round(a * AUDIO_RATE))
        piece = waveform[first:first + length]
        out[k, :piece.size] = piece
    return out


def _check_decodable(stream, what: str) -> None:
    ctx = stream.codec_context
    if ctx is None or ctx.name in ("", "none") or not getattr(ctx.codec, "is_decoder", True):
        tag = getattr(ctx, "codec_tag", "") if ctx is not None else ""
        raise SampleError("decode", f"unsupported {what} codec{f' {tag!r}' if tag else ''}: this PyAV/FFmpeg "
                                    "build has no decoder for it")


def _demux_only(container, stream) -> None:
    """Read packets of `stream` alone: the demuxer then skips the other streams' packets instead of reading
    them (mp4 picks packets by time across streams, jumping between regions of a file that interleaves badly)."""
    for other in container.streams:
        other.discard = type(other.discard).default if other is stream else type(other.discard).all


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _time(frame) -> float:
    if frame.pts is not None:
        return frame.time  # pts * time_base as a float, computed in C (Fraction arithmetic costs per frame)
    return float(frame.dts * frame.time_base) if frame.dts is not None else 0.0


def _seek(container, stream, t: float) -> None:
    container.seek(max(0, int(t / stream.time_base)), stream=stream, backward=True, any_frame=False)


def _pick_frames(container, stream, targets: np.ndarray) -> list:
    """The frame on screen at each target time (file time incl. origin): one seek per far-apart target,
    decoding forward between near ones."""
    import av

    picked: list = [None] * len(targets)
    targets = [float(t) for t in targets]  # Python floats: compared against every decoded frame
    i = 0
    try:
        while i < len(targets):
            seeked_for = i
            _seek(container, stream, float(targets[i]))
            previous = None
            for frame in container.decode(stream):
                t = _time(frame)
                while i < len(targets) and t > targets[i] + 1e-6:
                    picked[i] = previous if previous is not None else frame  # before the first frame: the first
                    i += 1
                if i == len(targets):
                    break
                previous = frame
                if i != seeked_for and targets[i] - t > RESEEK_GAP:
                    break  # far to the next target: seek there rather than decode the gap
            else:  # the stream ended before target i
                if previous is None or targets[-1] - _time(previous) > TRUNCATED_SLACK:
                    raise SampleError("decode", _ended_early(stream, previous, targets[-1]))
                while i < len(targets):
                    picked[i] = previous
                    i += 1
    except av.error.FFmpegError as e:
        raise SampleError("decode", f"video decode failed ({_reason(e)}): corrupt or truncated file") from None
    return picked


def _ended_early(stream, last, wanted: float) -> str:
    """Why frames stopped before `wanted`: the video stream ends there by its own header (a file whose audio
    runs on past its picture; the span is past the video's end), or the file is cut short."""
    if last is None:
        return f"video ends early (no frame at all, frame wanted at {wanted:.3f}s): truncated file or span past the end"
    end = float((stream.start_time or 0) * stream.time_base + stream.duration * stream.time_base) \
        if stream.duration and stream.time_base else 0.0
    if end and _time(last) >= end - TRUNCATED_SLACK:
        return (f"span past the end of the video stream ({end:.3f}s by its header; frame wanted at {wanted:.3f}s):"
                " the file's audio runs on without picture")
    return f"video ends early (last frame {_time(last):.3f}s, frame wanted at {wanted:.3f}s): truncated file"


def rotate_tag(metadata: dict) -> int:
    """Counter-clockwise degrees from an old-style `rotate` stream tag (0 when absent or not a number).
    Before display matrices, FFmpeg and phones wrote `rotate=90` for "turn 90 degrees clockwise to show";
    FFmpeg's demuxers no longer turn that tag into a display matrix (frame.rotation stays 0), so it is read
    here. A display matrix, when there is one, wins."""
    value = next((v for k, v in metadata.items() if k.lower() == "rotate"), None)
    try:
        return -int(round(float(value) / 90.0)) * 90 % 360 if value is not None else 0
    except ValueError:
        return 0


def _view(frame, view_size: int, tagged: int = 0, scaler=None) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """A decoded frame -> (its canonical view, rotation in degrees, crop box in upright pixels). Scales the
    stored picture so its short side is the view size (so a 4K frame is never converted at full size), cuts
    the centre square, then turns it upright: a rotation maps the centre square onto the centre square.
    `tagged`: the stream's `rotate` tag (see `rotate_tag`), used when the frame's display matrix gives none.
    `scaler`: a VideoReformatter to reuse (frame.reformat builds a new swscale context on every call)."""
    w, h = frame.width, frame.height
    rotation = int(round((frame.rotation or tagged) / 90.0)) * 90 % 360
    scale = view_size / min(w, h)
    sw, sh = max(view_size, round(w * scale)), max(view_size, round(h * scale))
    if scaler is None:
        from av.video.reformatter import VideoReformatter

        scaler = VideoReformatter()
    rgb = scaler.reformat(frame, width=sw, height=sh, format="rgb24", interpolation="BICUBIC").to_ndarray()
    x0, y0 = (sw - view_size) // 2, (sh - view_size) // 2
    view = rgb[y0:y0 + view_size, x0:x0 + view_size]
    view = np.ascontiguousarray(np.rot90(view, k=rotation // 90))  # counter-clockwise, as the display matrix
    upright = (h, w) if rotation in (90, 270) else (w, h)
    return view, rotation, centre_square(*upright)


def _audio_segment(container, stream, a: float, b: float, length: int) -> np.ndarray:
    """Mono 16 kHz samples of [a, b) (file time incl. origin), zero-padded to `length`."""
    import av
    from av.audio.resampler import AudioResampler

    out = np.zeros(length, np.float32)
    want = min(length, int(round((b - a) * AUDIO_RATE)))
    if want <= 0:
        return out
    resampler = AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
    chunks, first, have = [], None, 0
    try:
        _seek(container, stream, a)
        for frame in container.decode(stream):
            if first is None:
                first = _time(frame)  # the resampler's output starts here (its filter delay is a few samples)
            for piece in resampler.resample(frame):
                chunks.append(piece.to_ndarray().reshape(-1))
                have += chunks[-1].size
            if first + have / AUDIO_RATE >= b:
                break
    except av.error.FFmpegError as e:
        raise SampleError("decode", f"audio decode failed ({_reason(e)}): corrupt or truncated file") from None
    if first is None:
        return out  # no audio in this span: silence
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    offset = int(round((a - first) * AUDIO_RATE))  # > 0: seek landed before a; < 0: audio starts after a
    src = samples[max(0, offset):max(0, offset) + want - max(0, -offset)]
    out[max(0, -offset):max(0, -offset) + src.size] = src
    return out
