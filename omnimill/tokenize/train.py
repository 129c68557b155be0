"""`omnimill tokenizer train`: fit a tokenizer to one modality of a label store.

Spatial and vector tokenizers train with AdamW (warm-up, cosine decay) on random batches of the
training split, each sample seen through a fresh random crop and flip (the same kind of crops
`omnimill tokenize --crops N` will use), so tokens stay good on every crop. Mask tokenizers (mask.py)
train the same way on the instances of the training split's samples (rows past each sample's count are
padding, never data), each batch a random draw of instances, half of them mirrored. Sequence tokenizers
train their text vocabulary on the serialized training split (see sequence.py); `serializer` options
(e.g. structure = sam_instances, mask_tokenizer = DIR) go to their serializer. Audio tokenizers (audio.py)
train like vector ones on random batches of clips, every audio segment of a clip in the batch (crops do not
apply to sound).

Defaults by device (`DEVICE_DEFAULTS`): on CUDA the real-size spatial tokenizer (input 256, width 64, batch
32, 2000 steps); on a CPU a smaller one (input 64, width 16, batch 16, 400 steps), since the real size took
17 GB and over 12 minutes for its first 4 steps on a 2-core box. Options given explicitly always win; what
the device chose is recorded in config.json (options.defaults). After a few steps the run prints its ETA
("about N minutes for S steps on DEVICE") and records the seconds a step in train_log.json (eta).

Training data beyond `memory_budget` bytes is memory-mapped from a temporary file (written piece by piece
from the store) rather than held in memory: 20,000 RGB views of 384 px are 8.8 GB.

Everything the tokenizer needs at use time is written to its directory; the loss curve goes to
train_log.json and curve.png.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnimill import __version__
from omnimill.errors import UserError
from omnimill.settings import with_overrides
from omnimill.files import write_atomic
from omnimill.labelers.fields import relative_of
from omnimill.tokenize import values as V
from omnimill.tokenize.base import TokenizerConfig, check_directory
from omnimill.tokenize.data import open_field, split
from omnimill.tokenize.quantizer import levels_for


SPATIAL_GRID = 16  # spatial tokens per side by default: 16 x 16 = 256 tokens

# Options left unset take these by the device training runs on (spatial tokenizers; the other kinds take the cuda
# row on every device). A step's convolutions cost ~ batch x input_size^2 x width^2: the cpu row's step is
# 1/2 x 1/16 x 1/16 = 1/512 of the cuda row's (activations, ~ batch x input_size^2 x width: 1/128), and it takes
# 1/5 of the steps. The same 16 x 16 tokens a sample: each token sees 4 x 4 input pixels instead of 16 x 16.
# Measured on 2 loaded cores (benchmarks/tokenizer_cpu.py, docs/BENCHMARKS.md): the cuda row's first 4 steps took
# over 12 minutes and 17 GB there; an input of 128 at width 32 still took 2.2 GB and ~26 s a step.
DEVICE_DEFAULTS = {
    "cuda": {"steps": 2000, "batch_size": 32, "width": 64, "input_size": 256},
    "cpu": {"steps": 400, "batch_size": 16, "width": 16, "input_size": 64},
}
ETA_STEPS = 3  # steps timed for the ETA, after the first (which pays one-time allocation)
FIT_SAMPLES = 64  # samples whose pixels give image/continuous normalisation statistics (float32 copies of them;
# 230 RGB 384-px views took 37 s and 400 MB there, on 2 loaded cores)


@dataclass
class TrainOptions:
    vocab: int = 1024  # FSQ rounds to the paper's nearest size: 1024 -> [8,5,5,5] = 1000 codes
    quantizer: str = "fsq"  # or "vq" (EMA, k-means init, dead-code restart)
    steps: int | None = None  # None: by device (DEVICE_DEFAULTS)
    batch_size: int | None = None  # None: by device
    lr: float = 2e-3
    warmup: int = 100
    input_size: int | None = None  # spatial: side fed to the encoder (None: by device for maps, a feature grid its own)
    grid: int | None = None  # tokens per side: spatial 16 (16 x 16 = 256 tokens); mask 4 (16 an instance, 4M-21's)
    width: int | None = None  # spatial, mask, audio: channels of the first stage (None: by device)
    max_instances: int = 200_000  # mask: training instances held in memory (4 KB each at 64 x 64)
    n_tokens: int | None = None  # vector: tokens per vector (8); audio: tokens per time step (8)
    time_stride: int | None = None  # audio: log-mel frames per time step, a power of 2 (8: 80 ms at a 10 ms hop)
    hidden: int = 512  # vector: MLP width
    mode: str | None = None  # override the value mode (values.py)
    tokens_per_sample: int | None = None  # sequence: L (default per structure: 64, pose 128)
    serializer: dict | None = None  # sequence: serializer options (structure, mask_tokenizer, order, ...)
    holdout: float = 0.1  # share of samples kept out of training for `tokenizer eval`
    max_samples: int = 20000  # training samples
    memory_budget: int = 1 << 30  # bytes of training data held in memory; more is memory-mapped from a temporary file
    seed: int = 0
    device: str = "auto"  # cuda when present
    threads: int | None = None  # CPU threads for training (None: every core)
    progress: bool = True


def train_tokenizer(store: str, field: str, kind: str, out: str | Path, options: TrainOptions | None = None,
                    **overrides) -> Path:
    opts = with_overrides(options or TrainOptions(), overrides)
    opts, chosen = device_defaults(opts, kind)
    source = open_field(store, field)
    train_idx, heldout_idx = split(source, opts.holdout, opts.seed)
    if len(train_idx) == 0:
        raise UserError(f"{field} has no labelled samples outside the held-out split in {store}")
    rng = np.random.default_rng(opts.seed)
    if kind == "sequence":
        source, train_idx = _structure_needs(source, train_idx, opts)
    if kind == "mask" and source.frame_axes:
        raise UserError(f"{field} is labelled per frame of a clip; the mask tokenizer reads instances of images only "
                        "for now: train it on an image store's masks")
    limit = max(1, opts.max_samples // source.frames)  # a clip holds T frames, each a training sample
    if len(train_idx) > limit:
        train_idx = np.sort(rng.choice(train_idx, limit, replace=False))
    if kind == "mask":  # the instances, not the padded samples: K x 4 KB per sample would not fit
        from omnimill.tokenize.mask import instance_pool

        _one_field(kind, source)
        values = {source.fields[0]: instance_pool(source, train_idx, opts.max_instances, opts.seed)}
        if not len(values[source.fields[0]]):
            raise UserError(f"{field} holds no instances in the training split of {store}")
    config = TokenizerConfig(kind=kind, teacher=source.teacher, fields=source.fields, source={
        "store": source.store.uri, "store_created": source.store.created,
        "teacher_checkpoint_sha256": source.provenance.get("checkpoint_sha256"),
        "fields": source.specs, "teacher_spec": source.provenance.get("spec"), "id2label": source.provenance.get("config", {}).get("id2label"),
        "keypoints": source.provenance.get("config", {}).get("keypoints"),
        "omnimill_version": __version__})
    config.options.update(view_size=source.store.view_size, holdout=opts.holdout, seed=opts.seed,
                          train_samples=len(train_idx), heldout_samples=len(heldout_idx))
    if kind != "sequence":
        config.options["defaults"] = chosen
    out = Path(out)
    check_directory(out)  # before training: a user's folder is refused, not overwritten an hour later
    with tempfile.TemporaryDirectory(prefix="omnimill-train-") as scratch:
        if kind != "mask":
            values = hold(source, train_idx, opts.memory_budget if kind != "sequence" else None, Path(scratch))
        if kind == "sequence":
            from omnimill.tokenize.sequence import SequenceTokenizer

            if opts.tokens_per_sample:
                config.options["tokens_per_sample"] = opts.tokens_per_sample
            config.options.update(opts.serializer or {})
            tokenizer = SequenceTokenizer.train(config, values, view_size=source.store.view_size)
            tokenizer.save(out)
            return out

        import torch

        torch.manual_seed(opts.seed)  # the initial weights too: one seed, one tokenizer, whatever ran before
        tokenizer = _build(kind, source, values, config, opts).to(opts.device)
        log = _fit(tokenizer, values, source.store.view_size, opts, chosen["device"])
        del values  # the memory maps close before their folder goes
    tokenizer.to("cpu").save(out)
    write_atomic(out / "train_log.json", json.dumps(log))
    plot_curve(log, out / "curve.png")
    return out


def device_defaults(opts: TrainOptions, kind: str) -> tuple[TrainOptions, dict]:
    """`opts` with its unset options (None) filled in for the device it trains on, and the record of that choice
    for config.json: {"device": "cpu", "set": {option: value it took}}. Spatial tokenizers take their device's row
    of DEVICE_DEFAULTS; the other kinds the cuda row everywhere (input_size only concerns spatial ones)."""
    from dataclasses import replace

    device = opts.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    row = DEVICE_DEFAULTS["cuda" if device.startswith("cuda") or kind != "spatial" else "cpu"]
    unset = {k: v for k, v in row.items() if getattr(opts, k) is None and (k != "input_size" or kind == "spatial")}
    # input_size stays unset in the options: _build reads it from the record, or feeds a feature grid at its own side
    return replace(opts, device=device, **{k: v for k, v in unset.items() if k != "input_size"}), \
        {"device": device, "set": unset}


def hold(source, indices: np.ndarray, budget: int | None, scratch: Path, least: int = 64) -> dict[str, np.ndarray]:
    """The values of `indices`, in memory when they fit in `budget` bytes (None: always), else in memory-mapped .npy
    files under `scratch`, filled a piece at a time (~budget/8 bytes, at least `least` samples: a chunk holds many,
    so one sample a read would decompress each chunk again and again); memory stays near one piece."""
    if budget is None or not len(indices):
        return source.read(indices)
    first = source.read(indices[:1])
    per_sample = sum(v.nbytes for v in first.values())  # a clip's frames included
    if per_sample * len(indices) <= budget:
        return source.read(indices)
    step = max(least, budget // 8 // per_sample)
    rows = {f: len(v) * len(indices) for f, v in first.items()}  # frames per sample x samples
    held = {f: np.lib.format.open_memmap(scratch / f"{f}.npy", "w+", v.dtype, (rows[f], *v.shape[1:]))
            for f, v in first.items()}
    at = 0
    for start in range(0, len(indices), step):
        piece = source.read(indices[start:start + step])
        n = len(next(iter(piece.values())))
        for f, v in piece.items():
            held[f][at:at + n] = v
        at += n
    for array in held.values():
        array.flush()
    return held


def _structure_needs(source, train_idx: np.ndarray, opts: TrainOptions):
    """A structure that needs only some samples to configure (no text to learn: sam_instances) reads only those,
    and only the fields it serializes: SAM's K instance masks of 20,000 samples would take 10 GB."""
    from dataclasses import replace

    from omnimill.tokenize.serialize import serializer_for

    structure = serializer_for(source.teacher, opts.serializer or {}, source.provenance)
    if not structure.training_samples:
        return source, train_idx
    needed = structure(source.fields, dict(opts.serializer or {})).needs()
    fields = [f for f in source.fields if f in needed] or source.fields
    return replace(source, fields=fields, specs={f: source.specs[f] for f in fields}), \
        train_idx[:structure.training_samples]


def _one_field(kind: str, source) -> None:
    if len(source.fields) != 1:
        raise UserError(f"a {kind} tokenizer reads one field: give --field TEACHER/FIELD "
                        f"(one of {', '.join(f'{source.teacher}/{f}' for f in source.fields)})")


def _build(kind: str, source, values: dict, config: TokenizerConfig, opts: TrainOptions):
    _one_field(kind, source)
    field = source.fields[0]
    spec = source.specs[field]
    shape = tuple(spec["shape"])
    sample = values[field]
    if kind == "vector":
        if len(shape) != 1 or spec["dtype"] == "str":
            raise UserError(f"{source.name} has per-sample shape {shape} ({spec['dtype']}): a vector tokenizer "
                            "needs a 1-D embedding; use --kind spatial for maps, sequence for structures")
        x = sample.astype(np.float32)
        config.normalization = {"mode": "continuous", "mean": x.mean(0).tolist(),
                                "std": np.maximum(x.std(0), 1e-6).tolist()}
        config.options.update(sample_shape=list(shape), n_tokens=opts.n_tokens or 8, hidden=opts.hidden,
                              vocab=opts.vocab, quantizer=opts.quantizer)
        from omnimill.tokenize.vector import VectorTokenizer

        return VectorTokenizer(config)
    if kind == "mask":
        from omnimill.tokenize.mask import MASK_GRID, new_mask_tokenizer

        return new_mask_tokenizer(config, spec, opts.width, opts.vocab, opts.quantizer, opts.grid or MASK_GRID)
    if kind == "audio":
        from omnimill.tokenize.audio import new_audio_tokenizer

        return new_audio_tokenizer(config, spec, source.provenance, sample, opts.width, opts.vocab, opts.quantizer,
                                   opts.time_stride, opts.n_tokens)
    if kind != "spatial":
        raise UserError(f"unknown tokenizer kind {kind!r}; choose spatial, vector, mask, sequence or audio")
    if spec.get("kind") == "instance_masks":  # (K, m, m) is K masks, not an image with m channels
        raise UserError(f"{source.name} holds one mask per instance: train it with --kind mask")
    if len(shape) not in (2, 3) or spec["dtype"] == "str":
        raise UserError(f"{source.name} has per-sample shape {shape} ({spec['dtype']}): a spatial tokenizer "
                        "needs a dense map (H, W) or (H, W, C); use --kind vector for embeddings")
    mode = opts.mode or V.mode_of(field, spec)  # by the field's kind (stores without kinds: as before)
    id2label = config.source.get("id2label")
    if mode in ("image", "continuous") and len(sample) > FIT_SAMPLES:  # means and spreads of pixels, as float32:
        sample = sample[np.linspace(0, len(sample) - 1, FIT_SAMPLES).astype(int)]  # 64 RGB 384-px views: 113 MB
    config.normalization = V.fit(mode, sample, field, len(id2label) if id2label else None,
                                 relative=relative_of(field, spec))
    grid = opts.grid or SPATIAL_GRID
    feature_grid = shape[0] <= grid  # e.g. DINOv2's 16 x 16 patches: tokenize at native resolution
    chosen = config.options["defaults"]["set"]
    if feature_grid:
        chosen.pop("input_size", None)  # a feature grid is fed at its own side, on every device
    input_size = opts.input_size or (shape[0] if feature_grid else chosen["input_size"])
    grid = min(grid, input_size)
    config.options.update(sample_shape=list(shape), input_size=input_size, grid=grid, width=opts.width,
                          vocab=opts.vocab, quantizer=opts.quantizer, levels=levels_for(opts.quantizer, opts.vocab))
    from omnimill.tokenize.spatial import SpatialTokenizer

    return SpatialTokenizer(config)


def _fit(tokenizer, values: dict, view_size: int, opts: TrainOptions, device: str = "cpu") -> dict:
    import torch

    torch.manual_seed(opts.seed)
    torch.set_num_threads(opts.threads or os.cpu_count() or 1)
    model = tokenizer.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=1e-4, betas=(0.9, 0.99))
    rng = np.random.default_rng(opts.seed + 1)
    n = len(next(iter(values.values())))
    log = {"step": [], "loss": [], "codes_used": [], "seconds": []}
    started = time.time()
    running, used = 0.0, set()
    bar = None
    for step in range(opts.steps):
        if step == 1:
            timed = time.time()  # the first step pays one-time allocation: the ETA times the next ETA_STEPS
        if step == 1 + ETA_STEPS or (bar is None and step == opts.steps - 1 and step > 1):
            log["eta"] = eta(time.time() - timed, step - 1, opts.steps, device)
            if opts.progress:
                print(log["eta"]["line"], file=sys.stderr, flush=True)
        if bar is None and (step == 1 + ETA_STEPS or step == opts.steps - 1):
            bar = _bar(opts.steps, opts.progress)  # after the ETA line, so the line stands above it
        lr = opts.lr * min(1.0, (step + 1) / opts.warmup) * 0.5 * (1 + math.cos(math.pi * step / opts.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = rng.integers(0, n, min(opts.batch_size, n))
        batch = {k: v[rows] for k, v in values.items()}
        loss, indices = tokenizer.loss(batch, random_crops(len(rows), view_size, rng))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        used.update(np.unique(indices.detach().cpu().numpy()).tolist())
        if (step + 1) % 25 == 0 or step + 1 == opts.steps:
            k = 25 if (step + 1) % 25 == 0 else (step + 1) % 25
            log["step"].append(step + 1)
            log["loss"].append(running / k)
            log["codes_used"].append(len(used) / tokenizer.vocab_size)
            log["seconds"].append(round(time.time() - started, 2))
            (bar or _bar(0, False))(step + 1, running / k, len(used) / tokenizer.vocab_size)
            running, used = 0.0, set()
    (bar or _bar(0, False))(None, 0, 0)
    return log


def eta(seconds: float, steps_timed: int, steps: int, device: str) -> dict:
    """The run's projected length from `steps_timed` steps that took `seconds`, and its one line for the console."""
    per_step = seconds / steps_timed
    total = per_step * steps
    size = f"{total / 60:.0f} minutes" if total >= 90 else f"{total:.0f} seconds"
    return {"seconds_per_step": round(per_step, 4), "projected_seconds": round(total, 1), "device": device,
            "line": f"about {size} for {steps} steps on {device} ({per_step:.2f} s a step)"}


def random_crops(n: int, view_size: int, rng) -> np.ndarray:
    """Training augmentation: the distribution `make_crops` draws crops 1..n-1 from, plus whole views."""
    from omnimill.tokenize.crops import MIN_SCALE

    sides = np.where(rng.random(n) < 0.25, view_size,
                     np.rint(view_size * rng.uniform(MIN_SCALE, 1.0, n))).astype(int)
    tops = np.array([rng.integers(0, view_size - s + 1) for s in sides])
    lefts = np.array([rng.integers(0, view_size - s + 1) for s in sides])
    return np.stack([tops, lefts, sides, sides, rng.random(n) < 0.5], -1).astype(np.int32)


def _bar(total: int, enabled: bool):
    if not enabled:
        return lambda *a: None
    from rich.progress import Progress

    progress = Progress(*Progress.get_default_columns(), "{task.fields[info]}")
    task = progress.add_task("training", total=total, info="")
    progress.start()

    def update(step, loss, usage):
        if step is None:
            progress.stop()
            return
        progress.update(task, completed=step, info=f"loss {loss:.4f}, codes used {100 * usage:.0f}%")

    return update


def plot_curve(log: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=110)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(log["step"], log["loss"])
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    ax = fig.add_subplot(1, 2, 2)
    ax.plot(log["step"], [100 * u for u in log["codes_used"]])
    ax.set(xlabel="step", ylabel="% of codes used per 25 steps", ylim=(0, 105), title="codebook usage")
    fig.tight_layout()
    fig.savefig(path)
