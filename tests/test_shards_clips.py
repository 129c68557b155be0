"""Clips in shards and the loader: time axes in the manifest, verify, and an image + clip mixture that resumes.

Both stores are real: the image token store is conftest's `token_data`; the clip store is labelled through
the CLI from real videos (rgb frames, log-mel audio), a tiny audio tokenizer is trained on it through the CLI,
and it is tokenized through the CLI with token_data's own rgb and caption tokenizers (rgb per frame: T x 16
tokens, `time: frames`) and the audio tokenizer (K x steps x 2 tokens, `time: audio_segments`).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("av")

from test_corpus_clip import write_video  # noqa: E402

from omnimill.cli import app  # noqa: E402
from omnimill.errors import UserError  # noqa: E402
from omnimill.shards.loader import TokenDataset, TokenLoader  # noqa: E402
from omnimill.shards.manifest import read_manifest  # noqa: E402
from omnimill.shards.sources import ShardSetSource  # noqa: E402
from omnimill.shards.verify import verify  # noqa: E402
from omnimill.shards.wds import export_wds  # noqa: E402
from omnimill.store.labels import LabelStore  # noqa: E402
from omnimill.store.tokens import TokenStore  # noqa: E402

LOG_MEL = "omnimill.labelers.log_mel:LogMel"
FRAMES, SEGMENTS = 8, 3  # the clip kind's defaults
AUDIO_PER_STEP = 13 * 2  # per 2-s segment: ceil(200 mel frames / time stride 16) x 2 tokens
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def with_time(tokens: str, modality: str, time: dict) -> None:
    """Record another time axis for a modality of a token store, keeping its tokens and markers: the store's
    own API (prepare_modality with force remakes the modality; write_unit puts the rows and markers back)."""
    store = TokenStore.open(tokens, "r+")
    info, markers = store.tokenizer_info(modality), store.markers(modality)
    rows, ok = store.read(f"{modality}/tokens"), store.read(f"{modality}/ok")
    store.prepare_modality(modality, info, force=True, time=time)
    for u, marker in enumerate(markers):
        unit = store.unit(u)
        store.write_unit(modality, unit, rows[unit.start:unit.stop], ok[unit.start:unit.stop], marker)


@pytest.fixture(scope="module")
def clip_data(token_data, tmp_path_factory) -> dict:
    """8 clips of 2 s (3 videos, one without audio), labelled rgb + log_mel (view 64, as token_data's rgb
    tokenizer was trained), a tiny audio tokenizer, tokenized with 2 crops; shard sets of both stores."""
    root = tmp_path_factory.mktemp("clip_shards")
    videos = root / "videos"
    videos.mkdir()
    write_video(str(videos / "a.mp4"), seconds=6.0)
    write_video(str(videos / "b.mp4"), seconds=6.0, audio=False)
    write_video(str(videos / "c.mp4"), seconds=4.0, tone=880.0)
    labels, tokens, audio = root / "clips.zarr", root / "clip_tokens.zarr", root / "audio_tokenizer"
    result = invoke("label", videos, labels, "--sample-kind", "clip", "--clips", "fixed:2", "--teacher", "rgb",
                    "--teacher", LOG_MEL, "--workers", "1", "--unit-size", "2", "--view-size", "64", "--no-progress")
    assert result.exit_code == 0, result.output
    result = invoke("tokenizer", "train", labels, "--field", "log_mel/mel", "--kind", "audio", "--out", audio,
                    "--steps", 5, "--width", 8, "--time-stride", 16, "--n-tokens", 2, "--no-progress")
    assert result.exit_code == 0, result.output
    tok = token_data["tokenizers"]
    result = invoke("tokenize", labels, tokens, "--tokenizer", tok["rgb"], "--tokenizer", tok["caption"],
                    "--tokenizer", audio, "--crops", "2", "--workers", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    clip_shards, image_shards = root / "clip_shards", root / "image_shards"
    export_wds(str(tokens), str(clip_shards), samples_per_shard=2)
    export_wds(token_data["tokens"], str(image_shards), samples_per_shard=8)
    return {"labels": str(labels), "tokens": str(tokens), "shards": str(clip_shards),
            "image_shards": str(image_shards), "root": root}


def test_manifest_and_shards_carry_each_modality_time_axis(clip_data):
    manifest = read_manifest(clip_data["shards"])
    store = TokenStore.open(clip_data["tokens"])
    entries = manifest["modalities"]
    assert set(entries) == {"rgb_image", "caption", "log_mel_mel"}
    assert entries["rgb_image"]["time"] == {"steps": FRAMES, "of": "frames"} == store.time_axis("rgb_image")
    assert entries["rgb_image"]["tokens_per_sample"] == FRAMES * 16  # 4 x 4 tokens per frame
    assert entries["log_mel_mel"]["time"] == {"steps": SEGMENTS, "of": "audio_segments"}
    assert "time" not in entries["caption"]  # per clip: no time axis
    assert manifest["n"] == 8 and entries["rgb_image"]["samples"] == 8 and entries["log_mel_mel"]["samples"] == 8

    source = ShardSetSource(clip_data["shards"])
    rgb, audio = source.modalities["rgb_image"], source.modalities["log_mel_mel"]
    assert (rgb.time_steps, rgb.time_of, rgb.per_step) == (FRAMES, "frames", 16)
    assert (audio.time_steps, audio.time_of, audio.per_step) == (SEGMENTS, "audio_segments", AUDIO_PER_STEP)
    assert entries["log_mel_mel"]["kind"] == "audio" and entries["log_mel_mel"]["tokens_per_sample"] == 3 * 26
    assert source.modalities["caption"].time_steps == 0
    unit = source.read_unit(0)  # the shard's rows are the store's rows, time-major as stored
    for m in ("rgb_image", "log_mel_mel"):
        np.testing.assert_array_equal(unit.tokens[m], store.read(f"{m}/tokens", slice(0, 2)))
    # Plain tars hold (n_crops, T x per_step) arrays; the json lists them as for images
    assert all(s["modalities"]["rgb_image"] == s["samples"] for s in manifest["shards"])


def test_verify_passes_clip_stores_and_shard_sets_and_names_a_bad_time_axis(clip_data, tmp_path):
    result = invoke("shards", "export", clip_data["tokens"], tmp_path / "cli")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "modalities caption, log_mel_mel (3 audio segments), rgb_image (8 frames)" in said
    for uri in (clip_data["tokens"], clip_data["shards"]):
        report = verify(uri)
        assert report["problems"] == [], report["problems"]
        assert invoke("shards", "verify", uri).exit_code == 0
        assert invoke("verify", uri).exit_code == 0

    # A manifest whose time axis does not split the row: named, and the shards are still checked
    bad = tmp_path / "bad_time"
    export_wds(clip_data["tokens"], str(bad), samples_per_shard=4)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["modalities"]["rgb_image"]["time"] = {"steps": 5, "of": "frames"}
    manifest["modalities"]["log_mel_mel"]["time"] = {"steps": 3, "of": "seconds"}
    (bad / "manifest.json").write_text(json.dumps(manifest))
    reasons = {p["where"]: p["reason"] for p in verify(str(bad))["problems"]}
    assert set(reasons) == {"rgb_image", "log_mel_mel"}
    assert "128 tokens do not split into 5 time steps" in reasons["rgb_image"]
    assert "frames or audio_segments" in reasons["log_mel_mel"]
    result = invoke("shards", "verify", bad)
    assert result.exit_code == 1 and "128 tokens do not split" in result.output
    with pytest.raises(UserError, match="modality (log_mel_mel|rgb_image): "):
        TokenDataset(str(bad))  # the loader refuses it before reading

    # A token store whose axes disagree with its label store's K segments and T frames
    copy = tmp_path / "tokens_copy.zarr"
    shutil.copytree(clip_data["tokens"], copy)
    with_time(str(copy), "log_mel_mel", {"steps": 1, "of": "audio_segments"})
    with_time(str(copy), "rgb_image", None)
    problems = verify(str(copy))["problems"]
    assert [(p["where"], p["reason"]) for p in problems] == [
        ("log_mel_mel", "1 time steps of audio_segments, but the label store's samples have 3 audio_segments"),
        ("rgb_image", "tokens of frame teacher rgb in a clip store, but no time axis over its 8 frames")]


def image_and_clip(token_data, clip_data, clips_from: str = "shards", **kw) -> TokenLoader:
    datasets = [TokenDataset(clip_data["image_shards"], name="images"),
                TokenDataset(clip_data[clips_from], name="clips", rename={"rgb_image": "rgb_frames"})]
    return TokenLoader(datasets, **{"weights": [1, 1], "batch_size": 6, "shuffle_buffer": 4, "seed": 3, **kw})


def take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out
    return out


@pytest.mark.parametrize("clips_from", ["shards", "tokens"])
def test_image_and_clip_mixture_keeps_each_sample_own_modalities(token_data, clip_data, clips_from):
    loader = image_and_clip(token_data, clip_data, clips_from)
    specs = loader.modalities
    assert set(specs) == {"rgb_image", "palette", "caption", "rgb_frames", "log_mel_mel"}
    assert (specs["rgb_frames"].time_steps, specs["rgb_frames"].length) == (FRAMES, FRAMES * 16)
    assert specs["rgb_frames"].sha256 == specs["rgb_image"].sha256  # one tokenizer, two layouts, two names
    assert specs["rgb_frames"].info["time"] == {"steps": FRAMES, "of": "frames"}  # what the trainer reads
    assert specs["rgb_image"].time_steps == 0 and specs["log_mel_mel"].time_of == "audio_segments"

    images, clips = TokenStore.open(token_data["tokens"]), TokenStore.open(clip_data["tokens"])
    stored = {0: {m: images.read(f"{m}/tokens") for m in ("rgb_image", "palette", "caption")},
              1: {"rgb_frames": clips.read("rgb_image/tokens"), "log_mel_mel": clips.read("log_mel_mel/tokens"),
                  "caption": clips.read("caption/tokens")}}
    ok = {0: {m: images.read(f"{m}/ok") for m in stored[0]},
          1: {"rgb_frames": clips.read("rgb_image/ok"), "log_mel_mel": clips.read("log_mel_mel/ok"),
              "caption": clips.read("caption/ok")}}
    seen = {0: 0, 1: 0}
    for batch in take(loader, 20):
        for b in range(len(batch["keys"])):
            d, i, c = (int(batch[k][b]) for k in ("dataset", "index", "crop"))
            seen[d] += 1
            assert ("/clip_" in batch["keys"][b]) == (d == 1)
            for m in specs:
                present = bool(batch["present"][m][b])
                assert present == bool(m in stored[d] and ok[d][m][i]), (d, m)
                if not present:  # absent: masked out entirely, never filled
                    assert not batch["masks"][m][b].any()
                    continue
                row = stored[d][m][i, c]
                np.testing.assert_array_equal(batch["tokens"][m][b, :len(row)].numpy(), row)
    assert seen[0] > 30 and seen[1] > 30  # weights 1:1 over 120 draws


def test_one_name_in_two_layouts_is_refused_with_the_fix(token_data, clip_data):
    with pytest.raises(UserError, match=r"rgb_image has no time axis in .* but 8 time steps of frames in .*rename"):
        TokenLoader([TokenDataset(clip_data["image_shards"]), TokenDataset(clip_data["shards"])], batch_size=4)
    with pytest.raises(UserError, match="has no modality rgb"):
        TokenDataset(clip_data["shards"], rename={"rgb": "frames"})
    with pytest.raises(UserError, match="one name"):
        TokenDataset(clip_data["shards"], rename={"rgb_image": "caption"})


@pytest.mark.parametrize("workers", [0, 2])
def test_image_and_clip_mixture_resumes_exactly(token_data, clip_data, workers):
    straight = take(image_and_clip(token_data, clip_data, num_workers=workers), 12)  # several epochs of clips
    interrupted = image_and_clip(token_data, clip_data, num_workers=workers)
    take(interrupted, 5)
    resumed = image_and_clip(token_data, clip_data, num_workers=workers)
    resumed.load_state_dict(json.loads(json.dumps(interrupted.state_dict())))  # as a checkpoint stores it
    rest = take(resumed, 7)
    assert len(rest) == 7
    for a, b in zip(straight[5:], rest):
        assert a["keys"] == b["keys"] and torch.equal(a["crop"], b["crop"])
        for m in a["tokens"]:
            assert torch.equal(a["tokens"][m], b["tokens"][m]) and torch.equal(a["masks"][m], b["masks"][m])
            assert torch.equal(a["present"][m], b["present"][m])


def test_ml4m_export_refuses_a_clip_store_in_one_line(clip_data, tmp_path):
    result = invoke("shards", "export", clip_data["tokens"], tmp_path / "4m", "--format", "4m", "--allow-shapes")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "need images" in lines[0], result.output
    assert "--format wds" in lines[0]
    assert not (tmp_path / "4m").exists()


def test_training_mixes_an_image_and_a_clip_dataset_by_renaming_one_layout(token_data, clip_data, tmp_path):
    from test_train import config

    from omnimill.train.loop import datasets_of, train

    rename = json.dumps({clip_data["shards"]: {"rgb_image": "rgb_frames"}})
    chosen = "modalities=rgb_image,rgb_frames,log_mel_mel,caption"
    datasets = datasets_of(config(f"{clip_data['image_shards']},{clip_data['shards']}", f"rename={rename}", chosen),
                           "train")
    assert [sorted(d.source.modalities) for d in datasets] == [["caption", "rgb_image"],
                                                             ["caption", "log_mel_mel", "rgb_image"]]
    run = tmp_path / "run"
    result = train(config(f"{clip_data['image_shards']},{clip_data['shards']}", f"rename={rename}", chosen,
                          "steps=6", "eval_every=6", "refill=true"), run, progress=False)
    assert set(result["heldout"]) <= {"rgb_image", "rgb_frames", "log_mel_mel", "caption"}
    rows = {row[0]: row for row in json.loads((run / "checkpoint.json").read_text())["modalities"]}
    assert rows["rgb_frames"][3] == FRAMES and len(rows["rgb_image"]) == 3  # frames keep their time steps

    from omnimill.train.generate import generate_picture

    key = str(TokenStore.open(clip_data["tokens"]).keys()[0])  # a clip: its frames are rgb_frames in this run
    facts = generate_picture(run, "rgb_frames,log_mel_mel", "caption", key, tmp_path / "generated.png", steps=2)
    assert facts["sources"] == ["rgb_frames", "log_mel_mel"] and len(facts["tokens"]) == len(facts["teacher_tokens"])
    with pytest.raises(UserError, match="no dataset has the modalities depth"):
        datasets_of(config(clip_data["shards"], "modalities=caption,depth"), "train")
