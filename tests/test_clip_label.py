"""Clips labelled end to end: `omnimill label --sample-kind clip` through the real CLI on a real LocalCluster;
image teachers run on every frame unchanged and their labels are stored (N, T, ...)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("av")

from test_corpus_clip import FPS, SRT, grey, write_video  # noqa: E402

from omnimill.cli import app  # noqa: E402
from omnimill.store.labels import LabelStore  # noqa: E402

runner = CliRunner()
FRAMES = 8  # the clip kind's default
VIEW = 32


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def videos(tmp_path):
    """a.mp4: 4 s with audio and a sidecar a.srt; b.mp4: 3 s without audio; broken.mp4: not a video."""
    root = tmp_path / "videos"
    root.mkdir()
    write_video(str(root / "a.mp4"), seconds=4.0)
    (root / "a.srt").write_text(SRT)
    write_video(str(root / "b.mp4"), seconds=3.0, audio=False)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated, not a video")
    return root


def label_clips(corpus, store, *extra):
    return invoke("label", corpus, store, "--sample-kind", "clip", "--teacher", "rgb", "--teacher", "canny",
                  "--workers", "1", "--unit-size", "2", "--view-size", VIEW, "--no-progress", *extra)


def test_fixed_clips_label_every_frame_and_fail_a_corrupt_file_alone(videos, tmp_path):
    store = tmp_path / "clips.zarr"
    result = label_clips(videos, store, "--clips", "fixed:2")
    assert result.exit_code == 3, result.output  # complete, one clip could not be labelled

    labels = LabelStore.open(str(store))
    keys = ["a/clip_0000", "a/clip_0001", "b/clip_0000", "b/clip_0001", "broken/clip_0000"]
    assert labels.sample_kind == "clip" and list(labels.keys()) == keys
    assert labels.kind.frames_per_sample == FRAMES
    rgb, edges = labels.outputs("rgb")["image"], labels.outputs("canny")["edges"]
    assert rgb.shape == (5, FRAMES, VIEW, VIEW, 3) and edges.shape == (5, FRAMES, VIEW, VIEW)
    assert labels.ok("rgb").tolist() == labels.ok("canny").tolist() == [True, True, True, True, False]

    values = labels.sample_values()
    meta = labels.samples(0, 5)
    spans = values["span"]
    assert spans[:4].tolist() == [[0.0, 2.0], [2.0, 4.0], [0.0, 2.0], [2.0, 3.0]]
    assert (meta["start"][:4] == spans[:4, 0]).all() and (meta["end"][:4] == spans[:4, 1]).all()
    for i in range(4):
        times = values["frame_times"][i]
        assert (times >= 0).all() and (times <= spans[i, 1] - spans[i, 0]).all() and (np.diff(times) > 0).all()
        for t in range(FRAMES):  # each stored frame is the video frame shown at its time
            shown = int(round((spans[i, 0] + times[t]) * FPS))
            assert abs(float(rgb[i, t].mean()) - grey(shown)) <= 4, (keys[i], t)
    assert values["has_audio"].tolist()[:4] == [True, True, False, False]
    assert values["has_video"].tolist()[:4] == [True] * 4
    assert json.loads(meta["cues"][0]) == [[0.5, 1.5, "Hello there"]] and meta["cues"][2] == ""
    assert "not a readable media file" in meta["error"][4]

    info = json.loads(invoke("status", store, "--json").output)
    assert info["sample_kind"] == "clip"
    for name in ("rgb", "canny"):
        teacher = info["teachers"][name]
        assert teacher["units_done"] == 3 and teacher["samples_ok"] == 4 and teacher["samples_failed"] == 1
        error = teacher["first_errors"][0]
        assert (error["key"], error["stage"], error["retryable"]) == ("broken/clip_0000", "decode", False)
    verify = invoke("verify", store)
    assert verify.exit_code == 0, verify.output

    again = label_clips(videos, store, "--clips", "fixed:2")
    assert again.exit_code == 3 and "0/0 units" in again.output, again.output  # nothing planned


def test_manifest_spans_are_the_clips(videos, tmp_path):
    rows = [{"path": "videos/a.mp4", "start": 0.5, "end": 2.5, "caption": "grey ramp"},
            {"path": "videos/b.mp4", "start": 1.0, "end": 3.0}]
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    store = tmp_path / "spans.zarr"
    result = label_clips(manifest, store, "--clips", "spans")
    assert result.exit_code == 0, result.output

    labels = LabelStore.open(str(store))
    assert list(labels.keys()) == ["videos/a/clip_0000", "videos/b/clip_0000"]
    assert labels.sample_values()["span"].tolist() == [[0.5, 2.5], [1.0, 3.0]]
    assert labels.ok("rgb").all() and labels.outputs("rgb")["image"].shape == (2, FRAMES, VIEW, VIEW, 3)
    assert list(labels.samples(0, 2)["caption"]) == ["grey ramp", ""]
    assert invoke("verify", store).exit_code == 0


def test_clip_options_are_refused_for_an_image_store(corpus, tmp_path):
    store = tmp_path / "labels.zarr"
    for flag, value in (("--clips", "fixed:2"), ("--min-clip-seconds", "1")):
        result = invoke("label", corpus, store, "-t", "rgb", flag, value)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert f"{flag} applies to clip stores" in lines[0]
        assert not store.exists()


def test_a_frame_a_teacher_fails_on_fails_its_clip_and_required_labels_arrive_per_frame(tmp_path):
    from omnimill.engine.label import label

    root = tmp_path / "v"
    root.mkdir()
    black = range(25, 30)  # 2.5..3.0 s: inside a/clip_0001 (2..4 s) only

    def picture(i):
        return np.zeros((48, 64, 3), np.uint8) if i in black else np.full((48, 64, 3), grey(i), np.uint8)

    write_video(str(root / "a.mp4"), seconds=4.0, picture=picture)
    store = tmp_path / "dark.zarr"
    twice, base = "teachers_for_tests:TwiceBrightness", "teachers_for_tests:FailsOnDark"
    result = label(str(root), str(store), [twice, base], sample_kind="clip", clips="fixed:2", workers=1,
                   unit_size=4, view_size=VIEW, batch_size=2, progress=False)
    assert result.exit_code == 3

    labels = LabelStore.open(str(store))
    assert list(labels.keys()) == ["a/clip_0000", "a/clip_0001"]
    assert labels.ok("failsondark").tolist() == labels.ok("twice").tolist() == [True, False]
    brightness = labels.outputs("failsondark")["brightness"]
    assert brightness.shape == (2, FRAMES) and (brightness[0] > 20).all()
    np.testing.assert_allclose(labels.outputs("twice")["value"][0], 2 * brightness[0])  # upstream, per frame
    errors = labels.status()["teachers"]
    failed = errors["failsondark"]["first_errors"][0]
    assert (failed["key"], failed["stage"]) == ("a/clip_0001", "failsondark") and "too dark" in failed["error"]
    assert errors["twice"]["first_errors"][0]["key"] == "a/clip_0001"


def test_clip_settings_are_fixed_when_the_store_is_made_and_checked_after(videos, tmp_path, corpus):
    from conftest import one_line_error

    store = tmp_path / "clips.zarr"
    made = label_clips(videos, store, "--clips", "fixed:2", "--frames", "4", "--audio-segments", "2")
    assert made.exit_code == 3, made.output  # the broken file
    labels = LabelStore.open(str(store))
    assert labels.outputs("rgb")["image"].shape[1] == 4 and labels.kind.settings()["audio_segments"] == 2
    assert labels.corpus["listing"]["clips"] == "fixed:2"
    assert all(len(t) == 4 for t in labels.sample_values()["frame_times"])

    same = label_clips(videos, store, "--clips", "fixed:2", "--frames", "4")
    assert same.exit_code == 3 and "0/0 units" in same.output  # the same settings: resumed, nothing to do
    for flags, named in [(("--clips", "fixed:3"), "--clips fixed:2"), (("--frames", "8"), "--frames 4"),
                         (("--max-clip-seconds", "5"), "--max-clip-seconds 60")]:
        refused = label_clips(videos, store, *flags)
        one_line_error(refused, named)
    image_store = tmp_path / "images.zarr"
    refused = invoke("label", corpus, image_store, "--teacher", "rgb", "--frames", "4", "--workers", "1")
    one_line_error(refused, "--frames applies to clip stores")
    assert not image_store.exists()


def test_a_teacher_that_sees_clips_gets_audio_subtitles_and_frame_labels_per_clip(videos, tmp_path):
    store = tmp_path / "clips.zarr"
    result = label_clips(videos, store, "--clips", "fixed:2", "--teacher", "teachers_for_tests:Loudness")
    assert result.exit_code == 3, result.output  # broken.mp4 fails alone, as before

    labels = LabelStore.open(str(store))
    out = labels.outputs("loudness")
    assert out["segment_rms"].shape == (5, 3) and out["frame_brightness"].shape == (5, FRAMES)  # per clip, no T
    assert labels.ok("loudness").tolist() == [True, True, True, True, False]
    assert (out["segment_rms"][:2] > 0.05).all() and (out["rms"][:2] > 0.05).all()  # a.mp4's tone
    assert (out["segment_rms"][2:4] == 0).all() and (out["rms"][2:4] == 0).all()  # b.mp4 has no audio
    rgb = labels.outputs("rgb")["image"]
    assert np.allclose(out["frame_brightness"][:4], rgb[:4].mean(axis=(2, 3, 4)), atol=1e-3)
    assert out["cues"][:4].tolist() == [1, 1, 0, 0]  # a.srt: one cue in each of a.mp4's clips, none in b.mp4
    assert labels.provenance("loudness")["sees"] == "clips"


def test_a_teacher_that_sees_clips_is_refused_on_an_image_store_before_anything_is_written(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), (90, 20, 20)).save(photos / "one.jpg")
    store = tmp_path / "images.zarr"
    result = invoke("label", photos, store, "--teacher", "rgb", "--teacher", "teachers_for_tests:Loudness",
                    "--workers", "1", "--no-progress")
    assert result.exit_code == 2, result.output
    assert "teacher loudness labels clips" in result.output and "--sample-kind clip" in result.output
    assert not store.exists()


def test_verify_checks_the_stored_times_of_every_labelled_clip(videos, tmp_path):
    store = tmp_path / "clips.zarr"
    assert label_clips(videos, store, "--clips", "fixed:2").exit_code == 3  # broken.mp4: its zeros are not checked
    assert invoke("verify", store).exit_code == 0

    labels = LabelStore.open(str(store), "r+")
    times = labels.sample_values()["frame_times"]
    times[1] = times[1][::-1]  # frames out of time order: what a wrong decode or a bad write leaves
    labels.write_sample_values(0, {"frame_times": times})
    result = invoke("verify", store)
    assert result.exit_code != 0, result.output
    assert "a/clip_0001: frame times not in time order" in result.output
    assert "a/clip_0000" not in result.output and "broken" not in result.output

    repaired = label_clips(videos, store, "--clips", "fixed:2", "--repair")  # labels that unit again
    assert repaired.exit_code == 3, repaired.output
    assert invoke("verify", store).exit_code == 0
    assert (np.diff(LabelStore.open(str(store)).sample_values()["frame_times"][1]) > 0).all()
