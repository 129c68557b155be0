"""The trainer across time: frame and audio tokens carry a shared time embedding read from the shards'
manifest ("time"); image-only runs are unchanged; it learns a task that depends on time order; checkpoints
record the time layout (old ones without it still load); generate predicts a caption from frames + audio."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from omnimill.shards.manifest import FORMAT
from omnimill.shards.wds import PROGRESS, ShardWriter, finish_set
from omnimill.train.config import TrainConfig, apply_overrides

TINY = ["dim=32", "encoder_layers=1", "decoder_layers=1", "heads=2", "batch_size=16", "num_workers=0",
        "input_tokens=16", "target_tokens=16", "shuffle_buffer=32", "holdout=0.2", "warmup_steps=10",
        "eval_batches=4", "log_every=1"]

FRAMES, PER_FRAME = 4, 4  # time steps of the frame modality, tokens per frame (a 2 x 2 grid)
SEGMENTS, PER_SEGMENT = 3, 2  # audio segments, tokens per segment
BRIGHT = 7  # the "bright square" token; the other frames' tokens are 0 (dark)


def tiny(data: str, *flags: str) -> TrainConfig:
    c = TrainConfig()
    apply_overrides(c, [f"datasets={data}", *TINY, *flags])
    return c


def write_set(out: Path, samples: list[tuple[str, dict[str, np.ndarray]]], modalities: dict[str, dict],
              per_shard: int = 16) -> str:
    """A shard set through the real writer (wds.ShardWriter, finish_set) and a manifest that declares
    each modality (vocab, length, pad id, and "time" where it has a time axis)."""
    (out / PROGRESS).mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(str(out), per_shard)
    crops = np.zeros((1, 5), np.int32)
    for index, (key, tokens) in enumerate(samples):
        writer.add(key, index, crops, {m: t[None].astype(np.uint16) for m, t in tokens.items()})
    shards = writer.close()
    declared = {m: {"vocab_size": info["vocab_size"], "tokens_per_sample": info["length"], "pad_id": -1,
                    "sha256": f"synthetic-{m}", "dtype": "uint16",
                    "samples": sum(s["modalities"].get(m, 0) for s in shards),
                    **({"time": info["time"]} if "time" in info else {})} for m, info in modalities.items()}
    finish_set(str(out), {"format": FORMAT, "n": len(samples), "n_crops": 1, "source": {}, "modalities": declared,
                          "shards": shards})
    return str(out)


def image_shards_at(out: Path, n: int = 96) -> str:
    """Image-like samples: 16 rgb tokens and a 2-token caption that names the two commonest rgb tokens."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        rgb = rng.integers(0, 8, 16)
        counts = np.bincount(rgb, minlength=8)
        samples.append((f"img{i:04d}", {"rgb_image": rgb, "caption": np.argsort(-counts, kind="stable")[:2]}))
    return write_set(out, samples, {"rgb_image": {"vocab_size": 8, "length": 16},
                                    "caption": {"vocab_size": 8, "length": 2}})


def clip_shards_at(out: Path, n: int = 320, seed: int = 0) -> str:
    """Clip-like samples: 4 frames of 2 x 2 tokens, one of which (the "bright" frame) holds only bright
    tokens, the others only dark ones; 3 audio segments of 2 noise tokens; a 1-token caption = which frame is
    bright. A bright token's place within its frame says nothing, so the caption is learnable only from
    when that frame is: the time embedding."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        bright = int(rng.integers(FRAMES))
        frames = np.zeros((FRAMES, PER_FRAME), np.int64)  # dark
        frames[bright] = BRIGHT
        audio = rng.integers(0, 8, SEGMENTS * PER_SEGMENT)
        samples.append((f"clip{i:04d}", {"rgb_image": frames.reshape(-1), "log_mel_mel": audio,
                                         "caption": np.array([bright])}))
    return write_set(out, samples, {
        "rgb_image": {"vocab_size": 8, "length": FRAMES * PER_FRAME, "time": {"steps": FRAMES, "of": "frames"}},
        "log_mel_mel": {"vocab_size": 8, "length": SEGMENTS * PER_SEGMENT,
                        "time": {"steps": SEGMENTS, "of": "audio_segments"}},
        "caption": {"vocab_size": FRAMES, "length": 1}})


def weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + tensors[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def image_run_figures(data: str, run: Path) -> dict:
    """A 6-step image-only run on one thread (a thread count can reorder float sums): every logged loss
    and the final weights' sha256."""
    from omnimill.train.loop import load_checkpoint, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(tiny(data, "steps=6", "eval_every=6"), run, progress=False)
    finally:
        torch.set_num_threads(threads)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    _, tensors = load_checkpoint(run)
    return {"losses": [r["loss"] for r in log if "loss" in r], "heldout": result["heldout"],
            "weights": weights_sha256(tensors["model"])}


# Figures of the 6-step image-only run above, recorded with the trainer as it was before time axes (commit
# 1e09ee1, one thread): the same losses and the same weights, bit for bit, show that a model without time
# axes is untouched by them. A different CPU or torch may round differently; then regenerate with
# image_run_figures on the commit before this file and compare.
BEFORE_TIME = {"losses": [2.0614333152770996, 2.102064847946167, 2.0856292247772217, 2.08823299407959,
                          2.070950984954834, 2.1032724380493164],
               "weights": "2223dbdffddd26e2de722a3931566ca6575a0753fb2de42d2171c2428c577172"}


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory) -> str:
    return image_shards_at(tmp_path_factory.mktemp("time") / "images")


@pytest.fixture(scope="module")
def clip_shards(tmp_path_factory) -> str:
    return clip_shards_at(tmp_path_factory.mktemp("time") / "clips")


def test_image_only_runs_are_unchanged_and_old_checkpoints_load(image_shards, tmp_path):
    from omnimill.train.generate import load_run
    from omnimill.train.loop import read_commit, train

    run = tmp_path / "run"
    figures = image_run_figures(image_shards, run)
    assert figures["losses"] == pytest.approx(BEFORE_TIME["losses"], rel=1e-6)
    assert figures["weights"] == BEFORE_TIME["weights"]
    commit = read_commit(run)
    # written as before time axes: [name, vocab, length] rows, no time records, no time table
    assert commit["modalities"] == [["caption", 8, 2], ["rgb_image", 8, 16]]
    assert all("time" not in d for d in commit["datasets"].values())
    model, _ = load_run(run)
    assert not hasattr(model, "time_emb") and [s.time_steps for s in model.modalities] == [0, 0]
    more = tiny(image_shards, "steps=8", "eval_every=8")  # an old-format checkpoint resumes too
    assert train(more, run, progress=False)["step"] == 8


def test_time_layout_is_read_from_the_manifest_and_the_time_table_learns(clip_shards, image_shards):
    from omnimill.train.loop import make_loader, specs_from, spec_rows, specs_of, Session
    from omnimill.train.masking import sample_masks
    from omnimill.train.model import MultimodalModel

    config = tiny(clip_shards)
    specs = specs_of(make_loader(config, Session("cpu")))
    assert [(s.name, s.length, s.time_steps, s.per_step) for s in specs] == [
        ("caption", 1, 0, 1), ("log_mel_mel", 6, 3, 2), ("rgb_image", 16, 4, 4)]
    assert specs_from(spec_rows(specs)) == specs and spec_rows(specs)[0] == ["caption", 4, 1]
    torch.manual_seed(0)
    model = MultimodalModel(config.model, specs)
    assert model.pos_emb.num_embeddings == 1 + 2 + 4  # a step's places, shared by every step
    mod = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2])
    pos = torch.tensor([0, 0, 3, 5, 0, 3, 4, 15])
    assert model.relative_time(mod, pos).tolist() == pytest.approx(
        [-1, 1 / 6, 0.5, 5 / 6, 1 / 8, 1 / 8, 3 / 8, 7 / 8])
    # the same place in two frames differs only by the time embedding
    where = model._where(torch.tensor([2, 2]), torch.tensor([1, 5]))
    assert not torch.equal(where[0], where[1])
    assert torch.equal(model._where(torch.tensor([0]), torch.tensor([0])),
                       model.pos_emb(model.pos_offset[:1]) + model.mod_emb(torch.tensor([0])))

    batch = next(iter(make_loader(config, Session("cpu"))))
    masked = sample_masks(batch, [s.name for s in specs], config.mask, torch.Generator().manual_seed(0))
    loss, _ = model(*masked.model_inputs(), masked.dec_tok)
    loss.backward()
    assert model.time_emb.weight.grad.abs().sum() > 0  # reaches the table: inputs and queries use it

    image_specs = specs_of(make_loader(tiny(image_shards), Session("cpu")))
    assert not hasattr(MultimodalModel(config.model, image_specs), "time_emb")


def budget_use(lengths: dict[str, int], valid: dict[str, int], refill: bool, b: int = 256):
    """Mean input and target tokens per sample under budgets 128 / 128, and the masks."""
    from omnimill.train.config import MaskConfig
    from omnimill.train.masking import sample_masks

    g = torch.Generator().manual_seed(0)
    batch = {"tokens": {m: torch.randint(0, 100, (b, n), generator=g) for m, n in lengths.items()},
             "masks": {m: torch.arange(n)[None].expand(b, n) < valid.get(m, n) for m, n in lengths.items()}}
    masked = sample_masks(batch, list(lengths), MaskConfig(128, 128, 1.0, refill), g)
    return float(masked.enc_valid.sum(1).float().mean()), float(masked.dec_valid.sum(1).float().mean()), masked, batch


def test_long_modalities_get_their_share_of_the_budgets():
    """8 frames x 16 x 16 = 2048 frame tokens beside 3 x 200 audio tokens and a caption of 12 tokens padded
    to 32: each sample's inputs and targets stay within the budgets, disjoint, on valid tokens only, the
    frames get their Dirichlet share of a budget, not all of it, and with refill no budget is lost to
    capped short modalities."""
    import time

    clip = {"caption": 32, "log_mel_mel": 600, "rgb_image": 2048}
    image = {"caption": 32, "palette": 40, "rgb_image": 256}
    for name, lengths in (("clip", clip), ("image", image)):
        without, with_refill = (budget_use(lengths, {"caption": 12}, refill)[:2] for refill in (False, True))
        print(name, "tokens used of 128/128 without refill %.0f / %.0f" % without,
              "with refill %.0f / %.0f" % with_refill)
    start = time.perf_counter()
    used_in, used_tgt, masked, batch = budget_use(clip, {"caption": 12}, True, b=32)
    seconds = time.perf_counter() - start
    print(f"sample_masks, 32 clips of {sum(clip.values())} tokens: {seconds * 1000:.0f} ms")
    assert used_in >= 126 and used_tgt >= 126 and masked.enc_tok.shape == (32, 128)
    names, frames = list(clip), []
    for i in range(32):
        enc = {(int(m), int(p)) for m, p, v in zip(masked.enc_mod[i], masked.enc_pos[i], masked.enc_valid[i]) if v}
        dec = {(int(m), int(p)) for m, p, v in zip(masked.dec_mod[i], masked.dec_pos[i], masked.dec_valid[i]) if v}
        assert not enc & dec and enc and dec
        assert all(batch["masks"][names[m]][i, p] for m, p in enc | dec)
        frames.append(sum(m == 2 for m, _ in enc) / len(enc))
    assert 0.1 < np.mean(frames) < 0.9  # a share, not the whole budget
    assert seconds < 5.0  # 45 ms on an idle 2-core machine, ~1 s when six jobs share it


def test_learns_time_order_resumes_with_its_time_layout_and_generates_a_caption(clip_shards, tmp_path):
    """Which frame is bright (the caption), and which frame tokens are bright (frame targets), are known only
    from when the visible bright tokens are: held-out losses of both fall well below the unigram baseline
    (log 4 nats for the caption). The run stops half-way and resumes (the time layout round-trips through
    checkpoint.json); then frames + audio -> caption by MaskGIT on every held-out clip, and `generate` on one.
    A constant learning rate (min_lr = lr): the caption is learnt suddenly, after ~600 steps of plateau."""
    from omnimill.shards.sources import open_source
    from omnimill.store.base import held_out
    from omnimill.train.generate import generate_picture, load_run, maskgit
    from omnimill.train.loop import read_commit, train

    run = tmp_path / "run"
    config = tiny(clip_shards, "steps=800", "eval_every=800", "log_every=100", "batch_size=32", "lr=3e-3",
                  "min_lr=3e-3", "refill=true")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ten times faster than two threads on a busy 2-core machine
    try:
        train(config, run, progress=False, stop_at=400)
        result = train(config, run, progress=False)
    finally:
        torch.set_num_threads(threads)
    print("held-out", result["heldout"], "unigram", result["baseline"])
    assert result["baseline"]["caption"] == pytest.approx(np.log(FRAMES), abs=0.15)
    assert result["heldout"]["caption"] < 0.75 * result["baseline"]["caption"]
    assert result["heldout"]["rgb_image"] < 0.75 * result["baseline"]["rgb_image"]
    commit = read_commit(run)
    assert ["rgb_image", 8, 16, 4] in commit["modalities"] and ["log_mel_mel", 8, 6, 3] in commit["modalities"]
    assert commit["datasets"]["rgb_image"]["time"] == {"steps": 4, "of": "frames"}
    model, _ = load_run(run)
    assert [s.time_steps for s in model.modalities] == [0, 3, 4] and hasattr(model, "time_emb")

    source = open_source(clip_shards)
    names = [s.name for s in model.modalities]
    right = total = 0
    for u in range(len(source.units)):
        unit = source.read_unit(u)
        for i in np.flatnonzero(held_out(unit.keys, config.data.holdout, config.seed)):
            inputs = {names.index(m): unit.tokens[m][i, 0].astype(np.int64) for m in ("rgb_image", "log_mel_mel")}
            right += int(maskgit(model, inputs, names.index("caption"), steps=1)[0] == unit.tokens["caption"][i, 0, 0])
            total += 1
    print(f"held-out clips: caption from frames + audio right {right}/{total} (chance 1/{FRAMES})")
    assert total >= 40 and right / total > 0.4  # measured 36/63

    key = next(str(k) for k in source.read_unit(0).keys if held_out(np.array([k]), config.data.holdout, config.seed)[0])
    facts = generate_picture(run, "rgb_image,log_mel_mel", "caption", key, tmp_path / "gen.png", steps=1)
    assert facts["held_out"] and len(facts["tokens"]) == 1 and 0 <= facts["tokens"][0] < FRAMES
    assert facts["text"] is None  # synthetic tokens have no tokenizer: tokens only
    assert (tmp_path / "gen.png").stat().st_size > 5_000
