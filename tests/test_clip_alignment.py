"""Time alignment, checked like spatial alignment: a video whose picture tells the time and whose audio
holds tone bursts at known times, labelled through `omnimill label --sample-kind clip` (the CLI, a real
LocalCluster) with rgb (per frame) and tests/teachers_for_tests.py:Loudness (sees whole clips). Every stored
frame must show the picture of its stored frame_time, every audio segment must be loud exactly when a burst
overlaps its stored audio_span, and the stored times must pass corpus.clip.time_problems.

The picture (96x96, 25 fps, shown at a 48 px view: scaled by 1/2): a white 8x8 square whose position gives
the frame index i, x = 8 * (i % 10) (moves 4 view px per frame: one frame off is seen) and y = 5 * (i // 10)
(one step per 0.4 s), on a background that changes colour hard at CUTS. The audio: 1 kHz bursts at BURSTS."""

from __future__ import annotations

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from omnimill.cli import app
from omnimill.corpus.clip import time_problems
from omnimill.store.labels import LabelStore

FPS, SIZE, VIEW, SECONDS = 25, 96, 48, 6.0
SQUARE = 8
CUTS = (2.0, 3.52)  # s: background red, then green, then blue (3.52 s = frame 88, a frame boundary)
BACKGROUNDS = ((120, 20, 20), (20, 120, 20), (20, 20, 120))
BURSTS = ((0.3, 0.6), (2.4, 2.6), (4.1, 4.4), (5.35, 5.5))  # s, file time
AMPLITUDE = 0.5
CLIP = 3.0  # --clips fixed:3 -> two clips
SEGMENT = 0.5  # --audio-seconds


def square_at(i: int) -> tuple[int, int]:
    """Top-left (x, y) of the square in frame i, picture pixels."""
    return 8 * (i % 10), 5 * (i // 10)


def background_at(t: float) -> tuple[int, int, int]:
    return BACKGROUNDS[sum(t >= c - 1e-9 for c in CUTS)]


def burst_at(t: np.ndarray) -> np.ndarray:
    return np.any([(t >= a) & (t < b) for a, b in BURSTS], axis=0)


def write_clock_video(path: str) -> None:
    with av.open(path, "w") as out:
        video = out.add_stream("libx264", rate=FPS, options={"crf": "12"})
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        t = np.arange(int(SECONDS * 16000)) / 16000
        samples = (AMPLITUDE * np.sin(2 * np.pi * 1000 * t) * burst_at(t)).astype(np.float32)
        sent = 0  # audio samples muxed so far: interleaved with the frames, as a camera writes them
        for i in range(int(SECONDS * FPS)):
            image = np.empty((SIZE, SIZE, 3), np.uint8)
            image[:] = background_at(i / FPS)
            x, y = square_at(i)
            image[y:y + SQUARE, x:x + SQUARE] = 255
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
            while sent < min(samples.size, (i + 1) * 16000 // FPS):
                frame = av.AudioFrame.from_ndarray(samples[None, sent:sent + 1024], format="flt", layout="mono")
                frame.sample_rate, frame.pts = 16000, sent
                sent += 1024
                for packet in audio.encode(frame):
                    out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("alignment")
    (root / "videos").mkdir()
    write_clock_video(str(root / "videos" / "clock.mp4"))
    store = root / "clock.zarr"
    result = CliRunner().invoke(app, [str(a) for a in (
        "label", root / "videos", store, "--sample-kind", "clip", "--clips", f"fixed:{CLIP:g}",
        "--teacher", "rgb", "--teacher", "teachers_for_tests:Loudness", "--audio-seconds", SEGMENT,
        "--workers", 1, "--view-size", VIEW, "--no-progress")])
    assert result.exit_code == 0, result.output
    return LabelStore.open(str(store))


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def test_every_stored_frame_shows_the_picture_of_its_frame_time(labelled):
    values, frames = labelled.sample_values(), labelled.outputs("rgb")["image"]
    assert frames.shape == (2, 8, VIEW, VIEW, 3) and values["span"].tolist() == [[0.0, 3.0], [3.0, 6.0]]
    for clip, (start, _) in enumerate(values["span"]):
        for k, t in enumerate(values["frame_times"][clip]):
            i = int(round((start + t) * FPS))  # the frame whose pts is the stored time
            assert abs((start + t) * FPS - i) < 1e-3, "a stored time is a frame's pts"
            view = frames[clip, k].astype(int)
            x, y = square_at(i)
            expected = ((x + SQUARE / 2) / 2 - 0.5, (y + SQUARE / 2) / 2 - 0.5)  # centre, in view pixels
            found = centroid(view.min(axis=-1) > 200)
            assert np.hypot(found[0] - expected[0], found[1] - expected[1]) <= 1.0, (clip, k, t, found, expected)
            corner = view[-6:, -6:].reshape(-1, 3).mean(0)  # far from the square: the background
            assert np.abs(corner - background_at(start + t)).max() < 16, (clip, k, t, corner)


def test_every_audio_segment_is_loud_exactly_when_a_burst_overlaps_it(labelled):
    values, rms = labelled.sample_values(), labelled.outputs("loudness")["segment_rms"]
    t = np.arange(int(SECONDS * 16000)) / 16000
    loud = 0
    for clip, (start, _) in enumerate(values["span"]):
        for k, (a, b) in enumerate(values["audio_spans"][clip]):
            assert b - a == pytest.approx(SEGMENT)
            inside = (t >= start + a) & (t < start + b)
            expected = AMPLITUDE / np.sqrt(2) * np.sqrt(burst_at(t[inside]).mean())  # a sine's RMS over the share
            if expected == 0:
                assert rms[clip, k] < 0.01, (clip, k, rms[clip, k])
            else:
                loud += 1
                # measured within 0.2%; 3% is a 10 ms shift of a 0.15 s overlap
                assert rms[clip, k] == pytest.approx(expected, rel=0.03), (clip, k, (a, b))
    assert loud == 4  # the bursts are placed so that 4 of the 6 segments hear one


def test_stored_times_pass_the_invariant_check(labelled):
    values = labelled.sample_values()
    for clip in range(2):
        assert time_problems(values["span"][clip], values["frame_times"][clip], values["audio_spans"][clip],
                             SEGMENT) == []
    broken = values["frame_times"][0][::-1]
    assert "not in time order" in time_problems(values["span"][0], broken, values["audio_spans"][0], SEGMENT)[0]
    late = values["audio_spans"][1] + 3.0
    assert "audio segment" in time_problems(values["span"][1], values["frame_times"][1], late, SEGMENT)[0]
