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
BRIGHT = (6, 7)  # the "bright square" tokens; other frame tokens are 0..5


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
    tokens; 3 audio segments of 2 noise tokens; a 1-token caption = which frame is bright. Every frame's
    tokens look alike apart from brightness, so the caption is learnable only by telling frames apart."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        bright = int(rng.integers(FRAMES))
        frames = rng.integers(0, BRIGHT[0], (FRAMES, PER_FRAME))
        frames[bright] = rng.choice(BRIGHT, PER_FRAME)
        samples.append((f"clip{i:04d}", {"rgb_image": frames.reshape(-1), "log_mel_mel": rng.integers(0, 8, SEGMENTS * PER_SEGMENT),
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
