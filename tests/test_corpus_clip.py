"""Clips: decoding one clip with PyAV (frames on the canonical view, audio segments, subtitles), bad input as
per-sample errors, and the clip index. Every media file is written here with PyAV: no fixtures, no mocks."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from omnimill.corpus.clip import ClipKind, open_media_file  # noqa: E402
from omnimill.corpus.clip_index import index_clips, parse_clips, spans_from_cuts  # noqa: E402
from omnimill.corpus.listing import ByteReader  # noqa: E402
from omnimill.corpus.media import audio_segment_spans, decode_clip, frame_targets, probe  # noqa: E402
from omnimill.corpus.sample import DecodeSettings  # noqa: E402
from omnimill.corpus.subtitles import Cue, cut, parse_subtitles  # noqa: E402
from omnimill.errors import SampleError, UserError  # noqa: E402

FPS = 10


def grey(i: int) -> int:
    """Frame i's grey level: frames tell their index back through the codec (steps of 12 survive h264)."""
    return 16 + (12 * i) % 224


def write_video(path=None, *, seconds=4.0, fps=FPS, size=(64, 48), codec="libx264", audio=True, tone=440.0,
                rotation=None, pts=None, container="mp4", picture=None) -> bytes:
    """A real video file: frame i is flat grey(i) (or `picture(i)`), optional mono AAC tone; `pts` gives
    irregular frame times in ms (variable frame rate); `rotation` sets the display matrix."""
    buf = io.BytesIO()
    with av.open(path or buf, "w", format=container) as out:
        v = out.add_stream(codec, rate=fps)
        v.width, v.height = size
        v.pix_fmt = "yuv420p"
        if pts is not None:
            v.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            v.set_display_rotation(rotation)
        a = None
        if audio:
            a = out.add_stream("aac", rate=16000)
            a.layout = "mono"
        n = len(pts) if pts is not None else int(seconds * fps)
        for i in range(n):
            img = picture(i) if picture else np.full((size[1], size[0], 3), grey(i), np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for p in v.encode(frame):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        if a is not None:
            write_tone(out, a, seconds, tone)
    return b"" if path else buf.getvalue()


def write_tone(out, stream, seconds: float, tone: float) -> None:
    t = np.arange(int(seconds * 16000)) / 16000
    samples = (0.5 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
    for s in range(0, samples.size, 1024):
        frame = av.AudioFrame.from_ndarray(samples[None, s:s + 1024], format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, s
        for p in stream.encode(frame):
            out.mux(p)
    for p in stream.encode():
        out.mux(p)


def write_audio(container="mp4", seconds=3.0, codec="aac") -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        a = out.add_stream(codec, rate=16000)
        a.layout = "mono"
        write_tone(out, a, seconds, 440.0)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ frames


def test_frames_are_the_middles_of_equal_parts_with_their_times():
    data = write_video(seconds=4.0)
    clip = decode_clip(data, 1.0, 3.0, view_size=32, frames=4)
    assert clip.frames.shape == (4, 32, 32, 3) and clip.frames.dtype == np.uint8
    np.testing.assert_allclose(frame_targets(1.0, 3.0, 4), [1.25, 1.75, 2.25, 2.75])
    # frame on screen at t is floor(t * fps); its pts, in clip time, is that index / fps - start
    expected = [12, 17, 22, 27]
    np.testing.assert_allclose(clip.frame_times, [i / FPS - 1.0 for i in expected], atol=1e-6)
    for view, i in zip(clip.frames, expected):
        assert abs(int(view.mean()) - grey(i)) <= 4, (view.mean(), grey(i))
    assert clip.has_video and clip.has_audio and clip.rotation == 0
    np.testing.assert_allclose(clip.span, [1.0, 3.0])
    assert clip.crop_box == (8, 0, 56, 48)  # centre square of 64x48


def test_default_is_eight_frames_and_centre_square_of_a_wide_picture():
    def picture(i):  # left third red, middle green, right third blue: the centre square is mostly green
        img = np.zeros((48, 96, 3), np.uint8)
        img[:, :32], img[:, 32:64], img[:, 64:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
        return img

    clip = decode_clip(write_video(size=(96, 48), picture=picture, audio=False), 0.0, 4.0, view_size=24)
    assert clip.frames.shape == (8, 24, 24, 3)
    middle = clip.frames[0, :, 8:16].reshape(-1, 3).mean(0)
    assert middle[1] > 200 and middle[0] < 60 and middle[2] < 60
    assert clip.crop_box == (24, 0, 72, 48)


def test_rotated_phone_video_stands_upright():
    def picture(i):  # stored landscape: left half red, right half green
        img = np.zeros((32, 64, 3), np.uint8)
        img[:, :32], img[:, 32:] = (255, 0, 0), (0, 255, 0)
        return img

    # a phone held upright stores a landscape picture turned 90 degrees clockwise to show it (matrix: -90)
    data = write_video(size=(64, 32), picture=picture, rotation=-90, audio=False)
    clip = decode_clip(data, 0.0, 2.0, view_size=16, frames=2)
    assert clip.rotation == 270
    top, bottom = clip.frames[0, :6].reshape(-1, 3).mean(0), clip.frames[0, -6:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[1] < 60, top  # the stored left side is the top once upright
    assert bottom[1] > 200 and bottom[0] < 60, bottom
    assert clip.crop_box == (0, 16, 32, 48)  # upright picture is 32 wide, 64 tall


def test_variable_frame_rate_takes_the_frame_on_screen():
    pts = [0, 40, 100, 900, 950, 1000, 1700, 1990]  # ms, irregular
    data = write_video(pts=pts, audio=False)
    clip = decode_clip(data, 0.0, 2.0, view_size=16, frames=4)  # targets 0.25 0.75 1.25 1.75
    on_screen = [2, 2, 5, 6]  # the frame at 0.1 s stays on screen until 0.9 s
    np.testing.assert_allclose(clip.frame_times, [pts[i] / 1000 for i in on_screen], atol=1e-3)
    for view, i in zip(clip.frames, on_screen):
        assert abs(int(view.mean()) - grey(i)) <= 4


def test_mpeg4_in_avi_and_mkv_decode():
    for container, codec in (("avi", "mpeg4"), ("matroska", "mpeg4"), ("mp4", "mpeg4")):
        clip = decode_clip(write_video(codec=codec, container=container, audio=False), 0.5, 1.5,
                           view_size=16, frames=2)
        assert abs(int(clip.frames[1].mean()) - grey(12)) <= 6, container


# ------------------------------------------------------------------------------------------------ audio


def test_audio_is_mono_16k_segments_inside_the_clip():
    data = write_video(seconds=4.0, tone=1000.0)
    clip = decode_clip(data, 0.0, 4.0, view_size=16, audio_segments=3, audio_seconds=1.0)
    assert clip.audio.shape == (3, 16000) and clip.audio.dtype == np.float32
    np.testing.assert_allclose(clip.audio_spans, [[0.1667, 1.1667], [1.5, 2.5], [2.8333, 3.8333]], atol=1e-3)
    for segment in clip.audio:
        spectrum = np.abs(np.fft.rfft(segment))
        assert abs(int(np.argmax(spectrum)) - 1000) <= 2  # 1 Hz bins: the tone is there, at its pitch
        assert 0.3 < np.abs(segment).max() <= 1.0


def test_audio_segments_are_clamped_and_padded():
    spans = audio_segment_spans(10.0, 11.0, 3, 2.0)  # clip shorter than a segment: all start at the clip
    np.testing.assert_allclose(spans, [[10, 12]] * 3)
    clip = decode_clip(write_video(seconds=4.0), 2.0, 2.5, view_size=16, audio_seconds=2.0)
    assert np.abs(clip.audio[:, :7000]).max() > 0.3  # the half second of the clip is there
    assert np.abs(clip.audio[:, 8500:]).max() == 0.0  # the rest is padding: nothing from past the clip


def test_video_without_audio_has_audio_false_not_an_error():
    clip = decode_clip(write_video(audio=False), 0.0, 1.0, view_size=16, audio_segments=2)
    assert clip.has_audio is False and clip.audio.shape == (2, 32000) and not clip.audio.any()


def test_audio_file_decodes_without_frames():
    for container, codec in (("wav", "pcm_s16le"), ("flac", "flac"), ("ogg", "libvorbis"), ("mp4", "aac")):
        if codec not in av.codecs_available:
            continue
        clip = decode_clip(write_audio(container, codec=codec), 0.0, 3.0, view_size=16, need_video=False,
                           audio_seconds=1.0)
        assert clip.has_audio and not clip.has_video and not clip.frames.any(), container
        assert np.abs(clip.audio).max() > 0.3, container


# ------------------------------------------------------------------------------------------------ subtitles

SRT = """1
00:00:00,500 --> 00:00:01,500
<i>Hello</i> there

2
00:00:02,000 --> 00:00:04,000
second line
two rows
"""

VTT = """WEBVTT

NOTE a comment

intro
00:00.500 --> 00:01.500 align:start
Hello <c.yellow>there</c>

00:00:02.000 --> 00:00:04.000
second line
"""


def test_srt_and_vtt_parse_the_same():
    srt, vtt = parse_subtitles(SRT.encode()), parse_subtitles(VTT)
    assert srt[0] == vtt[0] == Cue(0.5, 1.5, "Hello there")
    assert srt[1] == Cue(2.0, 4.0, "second line\ntwo rows")
    assert parse_subtitles("") == [] and parse_subtitles("WEBVTT\n") == []


def test_subtitles_cut_to_the_clip_and_retimed():
    assert cut(parse_subtitles(SRT), 1.0, 3.0) == [Cue(0.0, 0.5, "Hello there"), Cue(1.0, 2.0, "second line\ntwo rows")]
    clip = decode_clip(write_video(audio=False), 3.0, 4.0, view_size=16, subtitles=SRT)
    assert clip.subtitles == [Cue(0.0, 1.0, "second line\ntwo rows")]


@pytest.mark.parametrize("text", ["just some words\nno timings", "1\n00:00:01,000 --> soon\nx\n",
                                  "1\n00:00:05,000 --> 00:00:01,000\nbackwards\n"])
def test_a_subtitle_file_that_does_not_parse_is_a_sample_error(text):
    with pytest.raises(SampleError) as e:
        decode_clip(write_video(audio=False), 0.0, 1.0, view_size=16, subtitles=text)
    assert e.value.stage == "subtitles"


# ------------------------------------------------------------------------------------------------ bad input


def reason(data, **kw) -> str:
    with pytest.raises(SampleError) as e:
        decode_clip(data, kw.pop("start", 0.0), kw.pop("end", 1.0), view_size=16, **kw)
    assert e.value.stage == "decode"
    return e.value.reason


def test_zero_length_file(tmp_path):
    assert "empty file" in reason(b"")
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty file" in reason(str(tmp_path / "empty.mp4"))


def test_truncated_and_corrupt_mp4():
    data = write_video(seconds=4.0)
    assert "not a readable media file" in reason(data[: len(data) // 2])  # moov (at the end) is gone
    assert "not a readable media file" in reason(np.random.default_rng(0).bytes(5000))


def test_truncated_mp4_with_index_first_fails_at_the_missing_frames(tmp_path):
    path = str(tmp_path / "fast.mp4")  # faststart rewrites the file: a real path, not a buffer
    with av.open(path, "w", format="mp4", options={"movflags": "faststart"}) as out:
        v = out.add_stream("mpeg4", rate=FPS)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)  # noise: frames big enough that a third of the file holds only some
        for _ in range(60):
            noise = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
    with open(path, "rb") as f:
        data = f.read()
    assert data.find(b"moov") < data.find(b"mdat")  # the index first: the file opens, frames are missing
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])
    assert reason(path, start=0.0, end=6.0).startswith(("video ends early", "video decode failed"))


def test_audio_only_file_named_mp4_is_refused_as_a_video():
    assert "no video stream" in reason(write_audio("mp4"))


def test_unsupported_codec():
    data = write_video(codec="mpeg4", container="avi", audio=False)
    assert b"FMP4" in data
    assert "unsupported video codec" in reason(data.replace(b"FMP4", b"ZQ9X"))


def test_span_outside_the_file():
    data = write_video(seconds=2.0, audio=False)
    assert "after the file's end" in reason(data, start=5.0, end=6.0)
    assert "empty or negative span" in reason(data, start=1.0, end=1.0)


def test_frames_above_max_pixels_are_refused():
    assert "raise --max-pixels" in reason(write_video(audio=False), max_pixels=1000)


def test_probe_reads_the_header():
    info = probe(write_video(seconds=3.0))
    assert info.has_video and info.has_audio and info.video_codec == "h264" and info.audio_codec == "aac"
    assert (info.width, info.height) == (64, 48) and abs(info.duration - 3.0) < 0.2 and info.fps == FPS


# ------------------------------------------------------------------------------------------------ the clip index


def test_spans_from_cuts_min_and_max():
    assert spans_from_cuts(0.0, 10.0, [3.0, 3.2, 7.0], min_seconds=0.5, max_seconds=60) == [(0, 3), (3.2, 7), (7, 10)]
    assert spans_from_cuts(0.0, 10.0, [], min_seconds=0.5, max_seconds=4.0) == [(0, 3.333333), (3.333333, 6.666667),
                                                                               (6.666667, 10)]
    assert parse_clips("fixed:2.5") == ("fixed", 2.5) and parse_clips("spans") == ("spans", 0.0)
    for bad in ("fixed", "fixed:0", "fixed:x", "scenes:3", "spans:2"):
        with pytest.raises(UserError):
            parse_clips(bad)


def make_corpus(root):
    root.mkdir()
    write_video(str(root / "a.mp4"), seconds=4.0)
    (root / "a.srt").write_text(SRT)
    (root / "sub").mkdir()
    write_video(str(root / "sub" / "b.v1.mkv"), seconds=2.0, container="matroska", codec="mpeg4", audio=False)
    (root / "c.wav").write_bytes(write_audio("wav", seconds=3.0, codec="pcm_s16le"))
    (root / "broken.mp4").write_bytes(b"not a video at all")
    (root / "notes.txt").write_text("ignored")


def test_folder_fixed_clips_with_sidecar_subtitles_and_a_broken_file(tmp_path):
    make_corpus(tmp_path / "c")
    index = index_clips(str(tmp_path / "c"), "fixed:1.5")
    assert index.sample_kind == "clip" and index.kind == "folder"
    assert index.keys == ["a/clip_0000", "a/clip_0001", "a/clip_0002", "broken/clip_0000",
                          "c/clip_0000", "c/clip_0001", "sub/b_v1/clip_0000", "sub/b_v1/clip_0001"]
    spans = [(e["start"], e["end"]) for e in index.extras]
    assert spans[:3] == [(0.0, 1.5), (1.5, 3.0), (3.0, 4.0)] and spans[4:6] == [(0.0, 1.5), (1.5, 3.0)]
    assert spans[6] == (0.0, 1.5) and abs(spans[7][1] - 2.0) < 0.1  # b's 0.5 s tail is the minimum: kept
    assert index.extras[0]["cues"] == [[0.5, 1.5, "Hello there"]]
    assert index.extras[1]["cues"] == [[0.5, 1.5, "second line\ntwo rows"]]
    assert "not a readable media file" in index.extras[3]["error"]
    assert index.sources[0] == str(tmp_path / "c" / "a.mp4") and index.extras[0]["video"] == "a"


def test_fixed_clips_drop_a_tail_shorter_than_the_minimum(tmp_path):
    make_corpus(tmp_path / "c")
    index = index_clips(str(tmp_path / "c"), "fixed:1.5", min_seconds=1.0)
    assert "a/clip_0002" in index.keys  # 1.0 s tail kept
    index = index_clips(str(tmp_path / "c"), "fixed:1.8", min_seconds=0.5)  # 4 s: the 0.4 s tail goes
    assert [k for k in index.keys if k.startswith("a/")] == ["a/clip_0000", "a/clip_0001"]
    assert (index.extras[1]["start"], index.extras[1]["end"]) == (1.8, 3.6)


def test_tar_corpus_clips_decode_in_place(tmp_path):
    import tarfile

    make_corpus(tmp_path / "c")
    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        for name in ("a.mp4", "a.srt", "c.wav"):
            tar.add(tmp_path / "c" / name, arcname=name)
    index = index_clips(str(tmp_path / "shard-000.tar"), "spans")
    assert index.keys == ["a/clip_0000", "c/clip_0000"] and index.offsets[0] > 0
    assert len(index.extras[0]["cues"]) == 2
    with open_media_file(index.sources[0], index.offsets[0], index.sizes[0]) as f:
        clip = decode_clip(f, 2.0, 3.0, view_size=16, frames=2)
    assert abs(int(clip.frames[0].mean()) - grey(22)) <= 4 and clip.has_audio


def test_manifest_spans_with_subtitles_text_path_and_plain(tmp_path):
    import json

    make_corpus(tmp_path / "c")
    (tmp_path / "c" / "b.vtt").write_text(VTT)
    rows = [
        {"path": "c/a.mp4", "start": 2.0, "end": 3.5, "caption": "second"},
        {"path": "c/a.mp4", "start": 0.0, "end": 1.0, "subtitles": SRT},
        {"path": "c/sub/b.v1.mkv", "subtitles": "c/b.vtt"},
        {"path": "c/c.wav", "start": 1, "end": 2, "subtitles": "a man says hello"},
        {"path": "c/a.mp4", "start": 1.0, "end": 2.0, "subtitles": "1\nbroken --> x\n"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    index = index_clips(str(tmp_path / "m.jsonl"), "spans")
    assert index.kind == "manifest"
    assert index.keys == ["c/a/clip_0000", "c/a/clip_0001", "c/a/clip_0002", "c/sub/b_v1/clip_0000", "c/c/clip_0000"]
    spans = [(e["start"], e["end"]) for e in index.extras]
    assert spans[:3] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.5)] and index.captions[2] == "second"
    assert index.extras[0]["cues"] == [[0.5, 1.0, "Hello there"]]  # each row's own subtitles, cut to its clips
    assert "not a subtitle timestamp" in index.extras[1]["subtitle_error"] and "cues" not in index.extras[2]
    assert index.extras[3]["cues"][0][2] == "Hello there"
    assert index.extras[4]["cues"] == [[0.0, 1.0, "a man says hello"]]


def test_manifest_with_a_subtitle_that_does_not_parse_lists_it_as_an_error(tmp_path):
    import json

    make_corpus(tmp_path / "c")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "c/a.mp4", "end": 2, "subtitles": "x --> y\n"}))
    index = index_clips(str(tmp_path / "m.jsonl"), "fixed:1")
    assert index.keys == ["c/a/clip_0000", "c/a/clip_0001"]
    assert all("not a subtitle timestamp" in e["subtitle_error"] for e in index.extras)


def test_bad_spans_and_empty_corpora_are_user_errors(tmp_path):
    import json

    make_corpus(tmp_path / "c")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "c/a.mp4", "start": 3, "end": 2}))
    with pytest.raises(UserError, match="empty or negative"):
        index_clips(str(tmp_path / "m.jsonl"), "spans")
    (tmp_path / "e").mkdir()
    with pytest.raises(UserError, match="no videos or audio files"):
        index_clips(str(tmp_path / "e"), "spans")
    with pytest.raises(UserError, match="min"):
        index_clips(str(tmp_path / "c"), "spans", min_seconds=5, max_seconds=2)


# ------------------------------------------------------------------------------------------------ the clip kind


def test_clip_kind_decodes_index_rows_through_a_pointer(tmp_path):
    make_corpus(tmp_path / "c")
    index = index_clips(str(tmp_path / "c"), "fixed:1.5")
    kind, settings = ClipKind(frames=4, audio_segments=2, audio_seconds=0.5), DecodeSettings(32, 10**8)
    rows = [{"keys": k, "source": s, "offset": o, "size": z, "caption": c, **e}
            for k, s, o, z, c, e in zip(index.keys, index.sources, index.offsets, index.sizes, index.captions,
                                        index.extras)]
    decoded, failed = [], {}
    with ByteReader() as reader:
        for row in rows:
            try:
                decoded.append(kind.decode(kind.fetch(reader, row), row, settings))
            except SampleError as e:
                failed[row["keys"]] = e.stage
    assert failed == {"broken/clip_0000": "decode"}
    a1 = decoded[1]  # a/clip_0001: 1.5..3.0
    assert a1.subtitles == [Cue(0.5, 1.5, "second line\ntwo rows")] and a1.has_audio
    assert abs(int(a1.frames[0].mean()) - grey(16)) <= 4  # 1.5 + 0.1875 s -> frame 16
    wav = decoded[3]  # c/clip_0000: an audio file
    assert not wav.has_video and wav.has_audio and not wav.frames.any()
    fields = kind.clip_fields(decoded)
    assert fields["frames"].shape == (len(decoded), 4, 32, 32, 3) and fields["audio"].shape == (len(decoded), 2, 8000)
    images = kind.batch_fields(decoded)  # what image teachers see: every frame, clip after clip
    assert images["views"].shape == (len(decoded) * 4, 32, 32, 3) and len(images["infos"]) == len(decoded) * 4
    assert (images["views"][4:8] == a1.frames).all() and images["infos"][4].crop_box == tuple(a1.crop_box)
    values = kind.sample_values(a1)
    assert {a.name for a in kind.sample_arrays} == set(values)
    for array in kind.sample_arrays:
        assert np.asarray(values[array.name]).shape == array.shape, array.name
    row = dict(rows[0], subtitle_error="bad cue")
    with pytest.raises(SampleError) as e:
        kind.decode(kind.fetch(None, row), row, settings)
    assert e.value.stage == "subtitles"
