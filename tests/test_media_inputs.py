"""Clips from demanding and bad media: 4K frames, a 2-hour file, an old-style `rotate` tag, media behind
fsspec (memory:// and a tar member in it), variable frame rate with long stills, and a folder of bad files
seen the way the label job sees them (index row, then the clip kind's decode: one SampleError per bad clip).
Decode-level cases already in tests/test_corpus_clip.py (zero-length bytes, audio-only .mp4, unsupported
codec, subtitles that do not parse) are not repeated. Every file is written here with PyAV."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest

av = pytest.importorskip("av")

from test_corpus_clip import SRT, grey, write_audio, write_tone, write_video  # noqa: E402

from omnimill.corpus.clip import ClipKind  # noqa: E402
from omnimill.corpus.clip_index import index_clips  # noqa: E402
from omnimill.corpus.image import DEFAULT_MAX_PIXELS  # noqa: E402
from omnimill.corpus.listing import ByteReader  # noqa: E402
from omnimill.corpus.media import decode_clip, probe  # noqa: E402
from omnimill.corpus.sample import DecodeSettings  # noqa: E402
from omnimill.corpus.subtitles import Cue  # noqa: E402
from omnimill.errors import SampleError  # noqa: E402


def peak_rss_growth_mb(fn):
    """(fn(), MB the process's peak RSS rose above its RSS before fn): Linux resets the peak on "5" written to
    /proc/self/clear_refs, so the figure is this call's own."""
    def status(name: str) -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(name)) / 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS:")
    result = fn()
    return result, status("VmHWM:") - before


def kind_rows(index) -> list[dict]:
    """The index's rows as the worker hands them to the clip kind."""
    return [{"keys": k, "source": s, "offset": o, "size": z, "caption": c, **e}
            for k, s, o, z, c, e in zip(index.keys, index.sources, index.offsets, index.sizes, index.captions,
                                        index.extras)]


def decode_rows(index, storage_options=None, view_size=16):
    """key -> DecodedClip, or the SampleError's stage and reason."""
    kind, settings, out = ClipKind(frames=2, audio_segments=1, audio_seconds=0.5), DecodeSettings(view_size, 10**8), {}
    with ByteReader(storage_options) as reader:
        for row in kind_rows(index):
            try:
                out[row["keys"]] = kind.decode(kind.fetch(reader, row), row, settings)
            except SampleError as e:
                out[row["keys"]] = (e.stage, e.reason)
    return out


# ------------------------------------------------------------------------------------------------ 4K


def test_4k_frames_label_under_the_default_pixel_limit():
    """3840x2160 = 8.3 MP, far under the default --max-pixels (89 MP, PIL's bomb limit): 4K passes by default.
    The frame is scaled to the view inside swscale (short side -> view size) before it becomes RGB, so the
    full-size RGB picture (25 MB a frame) never exists."""
    w, h = 3840, 2160
    assert w * h < DEFAULT_MAX_PIXELS
    picture = np.zeros((h, w, 3), np.uint8)
    picture[:, :w // 2], picture[:, w // 2:] = (255, 0, 0), (0, 0, 255)  # red | blue, split at the centre
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=2, options={"preset": "ultrafast"})
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        for _ in range(3):
            for p in v.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
    row = {"keys": "uhd/clip_0000", "source": "uhd.mp4", "start": 0.0, "end": 1.5}
    kind = ClipKind(frames=3, audio_segments=1)
    started = time.perf_counter()
    clip, grown = peak_rss_growth_mb(lambda: kind.decode(buf.getvalue(), row, DecodeSettings(64, DEFAULT_MAX_PIXELS)))
    seconds = time.perf_counter() - started
    assert clip.frames.shape == (3, 64, 64, 3) and clip.crop_box == (840, 0, 3000, 2160)
    left, right = clip.frames[:, :, :28].reshape(-1, 3).mean(0), clip.frames[:, :, 36:].reshape(-1, 3).mean(0)
    assert left[0] > 230 and left[2] < 25 and right[2] > 230 and right[0] < 25, (left, right)
    assert seconds < 5.0 and grown < 400, (seconds, grown)  # measured: ~0.06 s, decoder buffers only


# ------------------------------------------------------------------------------------------------ 2 hours

HOURS_2 = 7200.0  # seconds
TONE_FROM = HOURS_2 - 10  # the audio is silent except its last 10 s


def colour(i: int) -> tuple[int, int, int]:
    """Frame i's flat colour: three base-32 digits of i in steps of 8 (h264 keeps each within 4)."""
    return 8 * (i % 32) + 4, 8 * (i // 32 % 32) + 4, 8 * (i // 1024 % 32) + 4


def index_of(rgb) -> int:
    r, g, b = (round((int(c) - 4) / 8) for c in rgb)
    return r + 32 * g + 1024 * b


@pytest.fixture(scope="module")
def two_hours(tmp_path_factory) -> str:
    """2 hours of 16x16 h264 at 1 fps with a keyframe every 4 s, AAC at 8 kHz: written in ~3 s, 0.9 MB."""
    path = str(tmp_path_factory.mktemp("long") / "two_hours.mp4")
    with av.open(path, "w") as out:
        v = out.add_stream("libx264", rate=1, options={"preset": "ultrafast", "g": "4"})
        v.width, v.height, v.pix_fmt = 16, 16, "yuv420p"
        a = out.add_stream("aac", rate=8000)
        a.layout = "mono"
        for i in range(int(HOURS_2)):
            for p in v.encode(av.VideoFrame.from_ndarray(np.full((16, 16, 3), colour(i), np.uint8), format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        silence = np.zeros((1, 1024), np.float32)
        for s in range(0, int(HOURS_2 * 8000), 1024):
            t = (s + np.arange(1024)) / 8000
            samples = (0.5 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32) if t[0] >= TONE_FROM else silence
            frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            frame.sample_rate, frame.pts = 8000, s
            for p in a.encode(frame):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    return path


class CountingFile(io.FileIO):
    """A real file that counts the bytes read from it."""

    read_bytes = 0

    def read(self, size=-1):
        data = super().read(size)
        self.read_bytes += len(data)
        return data

    def readinto(self, buffer):
        n = super().readinto(buffer)
        self.read_bytes += n or 0
        return n


def test_a_clip_at_the_end_of_a_two_hour_file_seeks_with_flat_memory(two_hours):
    assert abs(probe(two_hours).duration - HOURS_2) < 1

    def timed(start: float):
        started = time.perf_counter()
        with CountingFile(two_hours) as f:
            clip, grown = peak_rss_growth_mb(lambda: decode_clip(f, start, start + 8, view_size=16, frames=4,
                                                                 audio_segments=2, audio_seconds=2.0))
        return clip, time.perf_counter() - started, grown, f.read_bytes

    decode_clip(two_hours, 0.0, 8.0, view_size=16)  # warm: codecs opened once, as in a worker
    first, first_s, _, first_read = timed(0.0)
    last, last_s, grown, last_read = timed(HOURS_2 - 8)
    for clip, start in ((first, 0.0), (last, HOURS_2 - 8)):
        shown = [int(start + t) for t in (1, 3, 5, 7)]  # targets 1, 3, 5, 7 s into the clip; 1 fps
        assert [index_of(view[8, 8]) for view in clip.frames] == shown, start
        np.testing.assert_allclose(clip.frame_times, [1, 3, 5, 7], atol=1e-6)
    assert not first.audio.any() and np.sqrt((last.audio ** 2).mean()) > 0.2  # the tone is in the last 10 s only
    # Measured: ~0.01 s and ~430 KB read for either clip (360 KB of it the mp4 index); reading through to the
    # end reads the whole 0.9 MB file and takes ~0.4 s. The file is written video first, then audio (its
    # streams far apart): media.py demuxes one stream at a time, or every packet read would jump between them.
    assert last_read < first_read + 128 * 1024 < os.path.getsize(two_hours), (first_read, last_read)
    assert last_s < 5 * first_s + 0.5, (first_s, last_s)
    assert grown < 50, grown  # MB: a few frames and 8 s of audio, not the file


def test_a_two_hour_file_is_indexed_from_its_header(two_hours):
    index = index_clips(os.path.dirname(two_hours), "fixed:10")
    assert len(index) == 720 and index.keys[-1] == "two_hours/clip_0719"
    assert (index.extras[-1]["start"], index.extras[-1]["end"]) == (7190.0, 7200.0)


# ------------------------------------------------------------------------------------------------ rotation


def split_picture(i):
    img = np.zeros((32, 64, 3), np.uint8)  # stored landscape: left half red, right half green
    img[:, :32], img[:, 32:] = (255, 0, 0), (0, 255, 0)
    return img


def write_tagged(rotate: str, matrix: float | None = None) -> bytes:
    """Matroska keeps a stream's `rotate` tag as written (mp4's muxer drops it), as old tools wrote it."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        v = out.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 64, 32, "yuv420p"
        v.metadata["rotate"] = rotate
        if matrix is not None:
            v.set_display_rotation(matrix)
        for i in range(10):
            for p in v.encode(av.VideoFrame.from_ndarray(split_picture(i), format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
    return buf.getvalue()


@pytest.mark.parametrize("rotate, matrix", [("90", None), ("90", -90), ("0", -90)])
def test_an_old_style_rotate_tag_stands_the_picture_upright(rotate, matrix):
    """rotate=90 (turn clockwise to show) is what a display matrix of -90 says; PyAV's frame.rotation sees
    only the matrix, so media.py reads the tag; a matrix, when present, is not turned twice."""
    data = write_tagged(rotate, matrix)
    with av.open(io.BytesIO(data)) as c:
        assert next(c.decode(video=0)).rotation == (matrix or 0)  # what PyAV alone sees
    clip = decode_clip(data, 0.0, 1.0, view_size=16, frames=2)
    assert clip.rotation == 270 and clip.crop_box == (0, 16, 32, 48)
    top, bottom = clip.frames[0, :6].reshape(-1, 3).mean(0), clip.frames[0, -6:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[1] < 60 and bottom[1] > 200 and bottom[0] < 60, (top, bottom)


# ------------------------------------------------------------------------------------------------ fsspec


@pytest.fixture
def memory_fs():
    import fsspec

    fs = fsspec.filesystem("memory")
    yield fs
    fs.rm("/media_inputs", recursive=True)


def test_a_folder_on_an_fsspec_file_system_is_indexed_and_decoded(memory_fs):
    memory_fs.pipe("/media_inputs/videos/a.mp4", write_video(seconds=4.0))
    memory_fs.pipe("/media_inputs/videos/a.srt", SRT.encode())
    memory_fs.pipe("/media_inputs/videos/c.wav", write_audio("wav", seconds=2.0, codec="pcm_s16le"))
    index = index_clips("memory://media_inputs/videos", "fixed:2")
    assert index.keys == ["a/clip_0000", "a/clip_0001", "c/clip_0000"]
    assert all(s.startswith("memory://") for s in index.sources) and index.extras[0]["cues"]
    clips = decode_rows(index)
    a1 = clips["a/clip_0001"]  # 2..4 s: frames at 2.5 and 3.5 s
    assert [abs(int(f.mean()) - grey(i)) <= 4 for f, i in zip(a1.frames, (25, 35))] == [True, True]
    assert a1.has_audio and a1.subtitles == [Cue(0.0, 2.0, "second line\ntwo rows")]
    assert not clips["c/clip_0000"].has_video and np.abs(clips["c/clip_0000"].audio).max() > 0.3


def test_a_tar_member_on_an_fsspec_file_system_decodes_in_place(memory_fs):
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("a.mp4", write_video(seconds=4.0)), ("a.srt", SRT.encode()),
                           ("b.mp4", write_video(seconds=2.0, audio=False))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    memory_fs.pipe("/media_inputs/shards/shard-000.tar", buf.getvalue())
    index = index_clips("memory://media_inputs/shards/shard-000.tar", "fixed:2")
    assert index.keys == ["a/clip_0000", "a/clip_0001", "b/clip_0000"] and min(index.offsets) > 0
    clips = decode_rows(index)
    assert all(not isinstance(c, tuple) for c in clips.values()), clips
    assert abs(int(clips["a/clip_0001"].frames[0].mean()) - grey(25)) <= 4 and clips["a/clip_0001"].has_audio
    assert clips["a/clip_0000"].subtitles == [Cue(0.5, 1.5, "Hello there")] and not clips["b/clip_0000"].has_audio


# ------------------------------------------------------------------------------------------------ VFR


def test_variable_frame_rate_with_long_stills_takes_the_frame_on_screen():
    """A screen recording: bursts of frames, then seconds with none (longer than the reseek gap)."""
    pts = [0, 100, 200, 4500, 4600, 9000, 9100, 9900]  # ms
    data = write_video(pts=pts, audio=False, container="matroska")
    clip = decode_clip(data, 0.0, 10.0, view_size=16, frames=8)  # targets 0.625, 1.875, ... 9.375
    on_screen = [2, 2, 2, 2, 4, 4, 4, 6]
    np.testing.assert_allclose(clip.frame_times, [pts[i] / 1000 for i in on_screen], atol=1e-3)
    assert [abs(int(v.mean()) - grey(i)) <= 4 for v, i in zip(clip.frames, on_screen)] == [True] * 8


# ------------------------------------------------------------------------------------------------ a folder of bad files


def test_each_bad_file_of_a_folder_fails_its_own_clips_and_the_good_one_decodes(tmp_path):
    """What the label job does with them: listed (a file that does not open is one row with its error), then
    each bad clip raises SampleError in the clip kind's decode (recorded per sample, the job goes on)."""
    root = tmp_path / "bad"
    root.mkdir()
    write_video(str(root / "good.mp4"), seconds=2.0)
    (root / "empty.mp4").write_bytes(b"")
    (root / "voice.mp4").write_bytes(write_audio("mp4", seconds=2.0))  # audio only, named .mp4
    avi = write_video(codec="mpeg4", container="avi", audio=False, seconds=2.0)
    (root / "alien.avi").write_bytes(avi.replace(b"FMP4", b"ZQ9X"))  # a fourcc no FFmpeg decodes
    write_video(str(root / "subbed.mp4"), seconds=2.0, audio=False)
    (root / "subbed.srt").write_bytes(b"\xff\xfe\x00garbage \x81\x82 no timings here\n")  # not text, not SRT
    index = index_clips(str(root), "fixed:2")
    clips = decode_rows(index)
    failed = {key: value for key, value in clips.items() if isinstance(value, tuple)}
    assert set(clips) - set(failed) == {"good/clip_0000"}
    assert failed["empty/clip_0000"][0] == "decode" and "empty file" in failed["empty/clip_0000"][1]
    assert failed["voice/clip_0000"][0] == "decode" and "no video stream" in failed["voice/clip_0000"][1]
    assert failed["alien/clip_0000"][0] == "decode" and "unsupported video codec" in failed["alien/clip_0000"][1]
    assert failed["subbed/clip_0000"][0] == "subtitles" and "not SRT or WebVTT" in failed["subbed/clip_0000"][1]


def test_a_span_past_the_end_of_the_picture_is_told_apart_from_a_truncated_file():
    """Audio that runs 3 s past the picture: the container says 5 s, the video stream 2 s. A clip whose
    frames lie past 2 s fails with that reason (not "truncated"); one inside the picture decodes."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        for i in range(20):
            for p in v.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), grey(i), np.uint8), format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        write_tone(out, a, 5.0, 440.0)
    data = buf.getvalue()
    assert abs(probe(data).duration - 5.0) < 0.1
    assert decode_clip(data, 0.0, 2.0, view_size=16, frames=4).has_audio
    with pytest.raises(SampleError) as e:
        decode_clip(data, 3.0, 5.0, view_size=16, frames=4)
    assert "span past the end of the video stream (2.000s" in e.value.reason, e.value.reason
