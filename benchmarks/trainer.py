"""Trainer benchmark: does the real data loader keep the training step fed?

One model and config, the same training step (omnimill/train/loop.py's: masking, forward, backward, grad
clip, AdamW), fed two ways in one run:

1. real: omnimill's TokenLoader over a token shard set, with DataLoader workers (`--workers`, a list: each
   is measured). Step time includes waiting for the next batch, as in the trainer.
2. synthetic: the same batches, already in memory. Before the timed runs the first warm-up + steps
   batches of that same loader (same seed and workers, so the same batches in the same order) are
   collected into a list; the synthetic run takes them from the list. Masking is still drawn per step on
   the main process with the same seed, and the model starts from the same weights, so both runs compute
   exactly the same thing (their losses are compared) and the only difference is where the batch comes
   from. Goal: synthetic step time / real step time >= 0.95 (data never starves the step).
3. the loader alone: batches/s with no model (the first batches, worker start-up, not counted), so the
   headroom over the step rate shows.

Tokens/s counts what the model processed: input plus target tokens (masked.enc_valid.sum() +
masked.dec_valid.sum()), as the trainer logs it. The first `--warmup` steps of every run are not timed
(worker start-up, allocator warm-up).

The machine may be shared, so three things guard the comparison. Real and synthetic runs alternate in
`--rounds` rounds (real first in odd rounds, synthetic first in even ones), and each row is the mean over
rounds of its timed steps, so drift in the load and any cost of going first hit both alike. The waiting
column is the main process's time in next(): what the data costs the step directly, and not disturbed by
other load. With workers it is mostly receiving a ready batch (unpickling it, one shared-memory tensor per
field); what the workers' own CPU takes from the step's threads shows only in the ratio. And "cores used"
is the main process's CPU seconds per second of step: well below its torch threads, it did not get the
machine (another job ran), and that row's times say little. The load average is printed per round.

On this project's 2-core CPU the default model's step takes about 2 s, so few steps are timed (about 3
minutes in all on an idle machine); on a GPU raise --steps and --rounds.

Data: by default a shard set made here: `--samples` samples of benchmarks/shards.py's four 4M-like
modalities (rgb_image 256 tokens V=16384, depth 256 V=8192, dinov2_cls 16 V=8192, caption 64 V=30522
0-padded), written as a token store in the `omnimill.tokens/1` layout by benchmarks/shards.py's writer and
exported with `omnimill.shards.wds.export_wds` (shards of 1,000 samples); kept in --workdir for the next
run. `--data PATH` trains from any token store or shard set instead (e.g. the demo's).

    .venv/bin/python benchmarks/trainer.py [--workers 1,2] [--steps 4] [--warmup 1] [--rounds 4]
        [--dim 256] [--layers 4] [--batch-size 32] [--tokens 128] [--device cpu] [--data PATH]

Prints a table and writes benchmarks/results/trainer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import nullcontext
from itertools import islice
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from shards import MODALITIES, make_tokens, omnimill_write_store  # noqa: E402  (benchmarks/shards.py)

from omnimill.shards.loader import TokenDataset, TokenLoader  # noqa: E402
from omnimill.shards.wds import MANIFEST, export_wds  # noqa: E402
from omnimill.train.config import TrainConfig, apply_overrides  # noqa: E402
from omnimill.train.masking import sample_masks  # noqa: E402
from omnimill.train.model import ModalitySpec, MultimodalModel  # noqa: E402

SAMPLES_PER_SHARD = 1000


# ---------------------------------------------------------------- data
def make_shards(work: Path, n: int) -> Path:
    """A shard set of n samples (made once per n, then reused): token store, then export_wds."""
    shards = work / f"shards-{n}"
    if (shards / MANIFEST).exists():
        return shards
    store = work / f"tokens-{n}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(shards, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    omnimill_write_store(make_tokens(n), store, unit_size=128)
    export_wds(str(store), str(shards), samples_per_shard=SAMPLES_PER_SHARD)
    shutil.rmtree(store)  # training reads the shards only
    print(f"made {shards} in {time.perf_counter() - start:.0f}s", flush=True)
    return shards


def make_config(args, data: str, workers: int) -> TrainConfig:
    config = TrainConfig()
    apply_overrides(config, [f"datasets={data}", f"dim={args.dim}", f"encoder_layers={args.layers}",
                             f"decoder_layers={args.layers}", f"heads={args.heads}", f"batch_size={args.batch_size}",
                             f"input_tokens={args.tokens}", f"target_tokens={args.tokens}", f"num_workers={workers}",
                             f"device={args.device}"])
    return config


def make_loader(config: TrainConfig, device: torch.device) -> TokenLoader:
    """As omnimill/train/loop.py's make_loader, for one process."""
    d = config.data
    return TokenLoader([TokenDataset(uri, split="train", holdout=d.holdout, holdout_seed=config.seed)
                        for uri in d.datasets], batch_size=d.batch_size, seed=config.seed,
                       shuffle_buffer=d.shuffle_buffer, num_workers=d.num_workers, crops=d.crops,
                       pin_memory=device.type == "cuda")


# ---------------------------------------------------------------- the step (omnimill/train/loop.py's)
class Trainer:
    """A fresh model and optimizer from a fixed seed, and the loop's step. Every run gets a new one, so all
    runs start from the same weights and draw the same masks."""

    def __init__(self, config: TrainConfig, specs: list[ModalitySpec], device: torch.device):
        torch.manual_seed(config.seed)
        self.config, self.device, self.names = config, device, [s.name for s in specs]
        self.model = MultimodalModel(config.model, specs).to(device)
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.model.parameter_groups(o.weight_decay), lr=o.lr,
                                           betas=(o.beta1, o.beta2))
        self.generator = torch.Generator().manual_seed(config.seed * 1000)

    def step(self, batch: dict) -> tuple[int, float]:
        """One optimizer step (grad_accum 1); returns (input + target tokens, loss)."""
        c = self.config
        masked = sample_masks(batch, self.names, c.mask, self.generator).to(self.device)
        amp = c.optim.amp and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext():
            loss, _ = self.model(*masked.model_inputs(), masked.dec_tok)
        loss.backward()
        if c.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # float(loss) syncs the device, as the loop's logging does: the step is over when this returns
        return int(masked.enc_valid.sum() + masked.dec_valid.sum()), float(loss.detach())


def timed_steps(trainer: Trainer, batches, warmup: int, steps: int) -> dict:
    """warmup untimed steps, then `steps` timed ones. A step's time runs from the end of the previous step
    to the end of this one, so waiting for the batch (next()) counts, as it does in the trainer."""
    batches = iter(batches)
    for batch in islice(batches, warmup):
        trainer.step(batch)
    times, waits, tokens, losses = [], [], 0, []
    last, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        batch = next(batches)
        got = time.perf_counter()
        n, loss = trainer.step(batch)
        end = time.perf_counter()
        times.append(end - last)
        waits.append(got - last)
        tokens, last = tokens + n, end
        losses.append(loss)
    # CPU seconds of this process's threads (not the workers') per second: how many cores the step got
    cores = (time.process_time() - cpu) / sum(times)
    return {"step_s": times, "wait_s": waits, "tokens": tokens, "losses": losses, "cores": cores}


def in_memory(batch: dict) -> dict:
    """A private copy of what the step reads: a worker's tensors live in shared memory, one file descriptor
    each, and holding hundreds of batches could run out of them."""
    return {**batch, "tokens": {m: t.clone() for m, t in batch["tokens"].items()},
            "masks": {m: t.clone() for m, t in batch["masks"].items()}}


def loader_alone(config: TrainConfig, device: torch.device, skip: int, batches: int) -> float:
    """Batches/s of the loader with nothing consuming them, after `skip` batches (worker start-up)."""
    it = iter(make_loader(config, device))
    for _ in islice(it, skip):
        pass
    start = time.perf_counter()
    for _ in islice(it, batches):
        pass
    return batches / (time.perf_counter() - start)


# ---------------------------------------------------------------- the run
def summarise(runs: list[dict], batch_size: int) -> dict:
    step_s = np.concatenate([r["step_s"] for r in runs])
    wait_s = np.concatenate([r["wait_s"] for r in runs])
    return {"steps": len(step_s), "step_ms": 1000 * step_s.mean(), "step_ms_median": 1000 * float(np.median(step_s)),
            "step_ms_per_round": [1000 * float(np.mean(r["step_s"])) for r in runs],
            "wait_ms": 1000 * wait_s.mean(), "wait_ms_max": 1000 * wait_s.max(),
            "tokens_s": sum(r["tokens"] for r in runs) / step_s.sum(),
            "samples_s": batch_size * len(step_s) / step_s.sum(),
            "cores": float(np.mean([r["cores"] for r in runs])), "cores_per_round": [r["cores"] for r in runs]}


def measure(args, data: str, workers: int, device: torch.device) -> dict:
    """Real vs synthetic for one worker count, alternating in rounds; then the loader alone."""
    config = make_config(args, data, workers)
    loader = make_loader(config, device)
    specs = [ModalitySpec(m.name, m.vocab_size, m.length) for m in loader.modalities.values()]
    # the synthetic run's batches: exactly what the real run will be fed, in the same order
    held = [in_memory(b) for b in islice(make_loader(config, device), args.warmup + args.steps)]
    real, synthetic = [], []
    for r in range(args.rounds):
        # real first in even rounds, synthetic first in odd ones: a cost of going first (or drift in the
        # machine's load) falls on both alike
        for feed in ("real", "synthetic")[::1 if r % 2 == 0 else -1]:
            if feed == "real":
                real.append(timed_steps(Trainer(config, specs, device), make_loader(config, device), args.warmup,
                                        args.steps))
            else:
                synthetic.append(timed_steps(Trainer(config, specs, device), held, args.warmup, args.steps))
        print(f"  {workers} workers, round {r + 1}: real {1000 * np.mean(real[-1]['step_s']):.0f} ms/step "
              f"(waiting {1000 * np.mean(real[-1]['wait_s']):.1f}, {real[-1]['cores']:.2f} cores), synthetic "
              f"{1000 * np.mean(synthetic[-1]['step_s']):.0f} ms/step ({synthetic[-1]['cores']:.2f} cores); "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    rows = {"real": summarise(real, args.batch_size), "synthetic": summarise(synthetic, args.batch_size)}
    rows["loader_alone_batches_s"] = loader_alone(config, device, skip=2 * max(workers, 1), batches=args.loader_batches)
    rows["ratio"] = rows["synthetic"]["step_ms"] / rows["real"]["step_ms"]
    rows["ratio_per_round"] = [s / r for s, r in zip(rows["synthetic"]["step_ms_per_round"],
                                                     rows["real"]["step_ms_per_round"])]
    # same weights, batches and masks: a difference would mean the two runs did not compute the same thing
    rows["max_loss_diff"] = max(abs(a - b) for x, y in zip(real, synthetic) for a, b in zip(x["losses"], y["losses"]))
    rows["headroom"] = rows["loader_alone_batches_s"] * rows["real"]["step_ms"] / 1000
    rows["parameters"] = sum(p.numel() for p in MultimodalModel(config.model, specs).parameters())
    return rows


def table(results: dict[int, dict], threads: int) -> str:
    lines = ["| workers | feed | step ms (mean) | median | waiting for batch ms (mean / max) | waiting share | "
             "tokens/s | samples/s | cores used |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for w, rows in results.items():
        for feed in ("real", "synthetic"):
            r = rows[feed]
            lines.append(f"| {w} | {feed} | {r['step_ms']:.0f} | {r['step_ms_median']:.0f} | "
                         f"{r['wait_ms']:.2f} / {r['wait_ms_max']:.1f} | {100 * r['wait_ms'] / r['step_ms']:.2f}% | "
                         f"{r['tokens_s']:,.0f} | {r['samples_s']:.1f} | {r['cores']:.2f} |")
    lines += ["", "| workers | synthetic / real step time (goal >= 0.95) | per round | loader alone batches/s | "
              "headroom (loader batches per step) | max loss diff |", "|---:|---:|---|---:|---:|---:|"]
    for w, rows in results.items():
        lines.append(f"| {w} | {rows['ratio']:.3f} | {', '.join(f'{x:.3f}' for x in rows['ratio_per_round'])} | "
                     f"{rows['loader_alone_batches_s']:,.0f} | "
                     f"{rows['headroom']:,.0f}x | {rows['max_loss_diff']:.1e} |")
    lines.append(f"\nmain process: {threads} torch threads; DataLoader workers run 1 torch thread each. cores used: "
                 f"the main process's CPU seconds per second of step (below {threads}: it did not get the machine)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="a token store or shard set (default: make one in --workdir)")
    parser.add_argument("--samples", type=int, default=20000, help="samples in the shard set made here")
    parser.add_argument("--workdir", default="/tmp/omnimill-bench-trainer")
    parser.add_argument("--workers", default="1,2", help="DataLoader worker counts to measure, comma-separated")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every run")
    parser.add_argument("--rounds", type=int, default=4, help="real/synthetic alternations per worker count")
    parser.add_argument("--loader-batches", type=int, default=200, help="batches timed for the loader alone")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4, help="encoder layers and decoder layers (each)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128, help="input tokens and target tokens per sample (each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the main process (0: torch's)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "trainer.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    workers = [int(w) for w in args.workers.split(",") if w]
    started = time.time()
    data = args.data or str(make_shards(Path(args.workdir), args.samples))
    threads = torch.get_num_threads()
    print(f"data {data}; model dim {args.dim}, {args.layers}+{args.layers} layers, {args.heads} heads; batch "
          f"{args.batch_size}, {args.tokens} input + {args.tokens} target tokens; {args.device}, {threads} torch "
          f"threads, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; torch {torch.__version__}", flush=True)
    results = {w: measure(args, data, w, device) for w in workers}
    print(f"\n{table(results, threads)}")
    print(f"step = end of the previous step to the end of this one (waiting for the batch included); "
          f"{args.warmup} warm-up steps per run untimed;\n{args.rounds} rounds x {args.steps} timed steps per row. "
          f"headroom = loader-alone batches/s x real step time.\n"
          f"total {time.time() - started:.0f}s, load {os.getloadavg()[0]:.1f} at the end")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({
        "args": vars(args), "data": data, "modalities": None if args.data else
        [{"name": m, "tokens": length, "vocab_size": v, "pad_id": p} for m, length, v, p in MODALITIES],
        "torch_threads": threads, "cores": os.cpu_count(), "torch": torch.__version__,
        "seconds": round(time.time() - started), "load_end": os.getloadavg()[0],
        "results": {str(w): rows for w, rows in results.items()}}, indent=2) + "\n")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
