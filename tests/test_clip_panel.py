"""`omnimill audit show` on a clip store: the clip panel (audit/clip_panel.py) on a real clip store labelled
through the CLI with frame teachers (rgb, canny) and a clip teacher (Loudness, tests/teachers_for_tests.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("av")

from test_corpus_clip import SRT, write_video  # noqa: E402

from omnimill.audit.clip_panel import ClipLabels, log_mel, time_segments  # noqa: E402
from omnimill.cli import app  # noqa: E402
from omnimill.store.labels import LabelStore  # noqa: E402

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def clip_store(tmp_path_factory):
    """a.mp4 (4 s, a tone, subtitles), b.mp4 (3 s, no audio), broken.mp4; clips of 2 s; rgb, canny, loudness."""
    root = tmp_path_factory.mktemp("clips")
    videos = root / "videos"
    videos.mkdir()
    write_video(str(videos / "a.mp4"), seconds=4.0)
    (videos / "a.srt").write_text(SRT)
    write_video(str(videos / "b.mp4"), seconds=3.0, audio=False)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated, not a video")
    store = root / "clips.zarr"
    result = invoke("label", videos, store, "--sample-kind", "clip", "--clips", "fixed:2", "--teacher", "rgb",
                    "--teacher", "canny", "--teacher", "teachers_for_tests:Loudness", "--workers", "1",
                    "--unit-size", "2", "--view-size", "32", "--no-progress")
    assert result.exit_code == 3, result.output  # broken.mp4, recorded
    return store


@pytest.mark.parametrize("key", ["a/clip_0000", "b/clip_0000", "broken/clip_0000"])
def test_audit_show_writes_a_clip_panel(clip_store, tmp_path, key):
    out = tmp_path / "panel.png"
    result = invoke("audit", "show", clip_store, key, "--out", out)
    assert result.exit_code == 0, result.output
    with Image.open(out) as picture:
        picture.load()
        width, height = picture.size
        pixels = np.asarray(picture.convert("L"))
    assert 900 <= width <= 2000 and 500 <= height <= 3000, (width, height)
    assert pixels.std() > 10  # something is drawn, not a blank page


def test_the_panel_reads_every_label_of_the_clip(clip_store):
    labels = LabelStore.open(str(clip_store))
    clip = ClipLabels.read(labels, labels.index_of("a/clip_0000"))
    assert clip.frames.shape == (8, 32, 32, 3) and clip.frame_times.shape == (8,)
    assert [label for label, _ in clip.frame_rows] == ["canny · edges", "canny over rgb · alignment check"]
    assert all(len(tiles) == 8 for _, tiles in clip.frame_rows)  # one picture per frame
    assert clip.has_audio and clip.waveform.size == 2 * 16000 and clip.cues == [[0.5, 1.5, "Hello there"]]
    assert any(tile.title.startswith("loudness") for tile in clip.tiles)  # the clip teacher's fields

    silent = ClipLabels.read(labels, labels.index_of("b/clip_0000"))
    assert not silent.has_audio and silent.waveform is None and "no audio stream" in silent.audio_note

    broken = ClipLabels.read(labels, labels.index_of("broken/clip_0000"))
    assert broken.frames is None and not broken.frame_rows and not broken.decoded and clip.decoded
    assert any("failed" in tile.text and "not a readable media file" in tile.text for tile in broken.tiles)


def test_time_segments_are_float_pairs_with_their_text_and_padding_dropped():
    fields = {"segments": np.array([[0.5, 1.25], [2.0, 3.0], [0.0, 0.0]], np.float32),
              "texts": np.array(["hello", "world", ""], dtype=object), "count": 2, "share": 0.4}
    tracks, rest = time_segments("asr", fields)
    assert tracks == [("asr/segments", [(0.5, 1.25, "hello"), (2.0, 3.0, "world")])]
    assert rest == {"count": 2, "share": 0.4}


def test_log_mel_puts_a_tone_in_its_band():
    rate = 16000
    t = np.arange(rate) / rate
    low, high = log_mel(np.sin(2 * np.pi * 300 * t), rate), log_mel(np.sin(2 * np.pi * 4000 * t), rate)
    assert low.shape == (64, 98)
    assert low.mean(1).argmax() < high.mean(1).argmax()


def test_text_fields_of_clip_teachers_are_whole_texts():
    from omnimill.audit.clip_panel import as_text

    assert as_text("a transcript") == "a transcript"
    assert as_text(np.array(["a cat", "", "a dog", ""], dtype=object)) == "1. a cat\n3. a dog"
