"""Clip stores tokenized end to end through the real CLI: clips labelled (rgb, canny per frame; Loudness per
clip), a tiny spatial tokenizer trained on frames, `omnimill tokenize --crops 2`: frame fields become T x g x g
time-major rows through one crop per clip, per-clip fields rows without a time axis; resumable as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("av")

from test_corpus_clip import write_video  # noqa: E402

from omnimill.cli import app  # noqa: E402
from omnimill.store.labels import LabelStore  # noqa: E402
from omnimill.store.tokens import TokenStore  # noqa: E402
from omnimill.tokenize.base import load_tokenizer  # noqa: E402
from omnimill.tokenize.crops import crop_dense  # noqa: E402
from omnimill.tokenize.data import open_field  # noqa: E402

runner = CliRunner()
FRAMES, VIEW, GRID = 8, 32, 4  # the clip kind's default T (Loudness declares 8 frames)
TINY = ("--steps", 60, "--batch-size", 16, "--input-size", VIEW, "--grid", GRID, "--width", 16, "--holdout", 0.25,
        "--no-progress")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def picture(i: int) -> np.ndarray:
    """A bright band on a dark field that moves left to right over time: crops, flips and frames all differ."""
    img = np.full((48, 64, 3), 30, np.uint8)
    x = (i * 3) % 48
    img[:, x:x + 16] = (230, 200, 60)
    img[:12] = 120  # a top stripe: a crop's vertical position shows too
    return img


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """8 clips of 1 s (2 videos of 4 s) labelled through the CLI: rgb and canny per frame, Loudness per clip."""
    root = tmp_path_factory.mktemp("clip_tokens")
    corpus = root / "videos"
    corpus.mkdir()
    for name in ("a", "b"):
        write_video(str(corpus / f"{name}.mp4"), seconds=4.0, picture=picture)
    store = root / "clips.zarr"
    result = invoke("label", corpus, store, "--sample-kind", "clip", "--clips", "fixed:1",
                    "--teacher", "rgb", "--teacher", "canny", "--teacher", "teachers_for_tests:Loudness",
                    "--workers", 1, "--unit-size", 4, "--view-size", VIEW, "--no-progress")
    assert result.exit_code == 0, result.output
    return root, store


@pytest.fixture(scope="module")
def tokenizers(clips):
    root, store = clips
    out = {}
    for name, field, kind, extra in [("rgb", "rgb/image", "spatial", TINY),
                                     ("rms", "loudness/segment_rms", "vector",
                                      ("--steps", 30, "--n-tokens", 2, "--holdout", 0.25, "--no-progress"))]:
        result = invoke("tokenizer", "train", store, "--field", field, "--kind", kind, "--out", root / name, *extra)
        assert result.exit_code == 0, result.output
        out[name] = root / name
    return out


def test_a_spatial_tokenizer_trains_on_frames_each_frame_a_sample(clips, tokenizers):
    _, store = clips
    source = open_field(str(store), "rgb/image")
    assert source.frame_axes == (FRAMES,) and source.frames == FRAMES
    values = source.read(np.arange(3))["image"]
    stored = LabelStore.open(str(store)).outputs("rgb", slice(0, 3))["image"]
    assert values.shape == (3 * FRAMES, VIEW, VIEW, 3)
    np.testing.assert_array_equal(values, stored.reshape(-1, VIEW, VIEW, 3))  # clip after clip, frames in order
    assert list(source.sample_keys(np.arange(2))) == [k for k in LabelStore.open(str(store)).keys()[:2]
                                                      for _ in range(FRAMES)]
    assert open_field(str(store), "loudness/segment_rms").frames == 1  # a per-clip field: one sample a clip

    config = json.loads((tokenizers["rgb"] / "config.json").read_text())
    assert config["options"]["sample_shape"] == [VIEW, VIEW, 3] and config["tokens_per_sample"] == GRID * GRID
    clips_seen = config["options"]["train_samples"]
    log = json.loads((tokenizers["rgb"] / "train_log.json").read_text())
    assert 0 < clips_seen < 8 and log["loss"][-1] < log["loss"][0]


def test_tokenize_a_clip_store_time_major_with_one_crop_per_clip(clips, tokenizers):
    root, store = clips
    tokens = root / "tokens.zarr"
    result = invoke("tokenize", store, tokens, "--tokenizer", tokenizers["rgb"], "--tokenizer", tokenizers["rms"],
                    "--crops", 2, "--workers", 1, "--no-progress")
    assert result.exit_code == 0, result.output

    out = TokenStore.open(str(tokens))
    labels = LabelStore.open(str(store))
    n, per_frame = labels.n, GRID * GRID
    assert sorted(out.modalities()) == ["loudness_segment_rms", "rgb_image"]
    rgb = out.group["rgb_image/tokens"][:]
    assert rgb.shape == (n, 2, FRAMES * per_frame) and out.group["rgb_image/ok"][:].all()
    assert out.time_axis("rgb_image") == {"steps": FRAMES, "of": "frames"}
    assert out.attrs("rgb_image")["time"] == {"steps": FRAMES, "of": "frames"}  # the shared layout's attr
    assert out.tokenizer_info("rgb_image")["tokens_per_sample"] == FRAMES * per_frame  # L of the stored rows
    assert out.status()["modalities"]["rgb_image"]["time"]["steps"] == FRAMES
    rms = out.group["loudness_segment_rms/tokens"][:]
    assert rms.shape == (n, 2, 2) and out.time_axis("loudness_segment_rms") is None  # per clip: no time axis
    assert "time" not in out.attrs("loudness_segment_rms")
    assert (rms[:, 0] == rms[:, 1]).all()  # a vector ignores crops

    crops = out.group["crops"][:]
    assert crops.shape == (n, 2, 5) and (crops[:, 0] == [0, 0, VIEW, VIEW, 0]).all()
    assert (crops[:, 1] != crops[:, 0]).any(axis=1).all()  # crop 1 is a real crop of every clip
    tok = load_tokenizer(tokenizers["rgb"])
    frames = labels.outputs("rgb")["image"]  # (N, T, S, S, 3)
    for c in range(2):  # frame t's tokens: the tokenizer applied to frame t through the clip's one crop
        for t in range(FRAMES):
            expected = tok.encode({"image": frames[:, t]}, crops[:, c])
            np.testing.assert_array_equal(rgb[:, c, t * per_frame:(t + 1) * per_frame], expected)

    # decoded tokens of frame t are that frame through the clip's crop: nearer to it than to any other
    # frame of the clip through the same crop, or to the frame through the other crop
    decoded = tok.decode(rgb[:, 1].reshape(n * FRAMES, per_frame))["image"].reshape(n, FRAMES, VIEW, VIEW, 3)
    cut = {c: crop_dense(frames.reshape(-1, VIEW, VIEW, 3), np.repeat(crops[:, c], FRAMES, axis=0), VIEW, VIEW)
           .reshape(n, FRAMES, VIEW, VIEW, 3) for c in range(2)}
    hits = 0
    for i in range(n):
        for t in range(FRAMES):
            error = {(c, s): float(np.abs(decoded[i, t] - cut[c][i, s]).mean()) for c in range(2) for s in range(FRAMES)}
            hits += min(error, key=error.get) == (1, t)
    assert hits >= 0.75 * n * FRAMES, f"{hits} of {n * FRAMES} frames decode nearest their own crop"

    verify = invoke("verify", tokens)
    assert verify.exit_code == 0, verify.output


def test_tokenizing_clips_resumes_and_redoes_only_what_is_missing(clips, tokenizers):
    root, store = clips
    tokens = root / "resume.zarr"
    args = ("tokenize", store, tokens, "--tokenizer", tokenizers["rgb"], "--workers", 1, "--no-progress")
    first = invoke(*args, "--crops", 2)
    assert first.exit_code == 0, first.output
    out = TokenStore.open(str(tokens), "r+")
    before = out.group["rgb_image/tokens"][:]
    units = out.group["_runs/rgb_image/units"]
    units[1] = ""  # unit 1 lost its marker: as if the run was killed before committing it
    out.group["rgb_image/tokens"][4:8] = 0

    again = invoke(*args)
    assert again.exit_code == 0 and "1/1 units" in again.output, again.output
    out = TokenStore.open(str(tokens))
    np.testing.assert_array_equal(out.group["rgb_image/tokens"][:], before)
    assert out.time_axis("rgb_image") == {"steps": FRAMES, "of": "frames"}
    nothing = invoke(*args)
    assert nothing.exit_code == 0 and "0/0 units" in nothing.output, nothing.output
