"""The training loop: data, masking, model, AdamW with warm-up + cosine, checkpoints that resume exactly.

    RUN/
      config.json        the TrainConfig (for people: a resume reads the checkpoint's copy)
      model-STEP.safetensors   model weights
      state-STEP.safetensors   optimizer tensors (optimizer/PARAM/KEY), every rank's masking RNG (generator/RANK)
      checkpoint.json    the commit point, written last: format, step, the two files' names and sha256,
                         optimizer param groups, every rank's loader position, config, modalities ([name,
                         vocab, length], + time steps for a modality with a time axis), the data's
                         modality records (with `time` {steps, of} where there is a time axis), unigram
                         baseline, history. Nothing in a run folder is unpickled: it is data.
      log.jsonl          one line per log interval and per evaluation
      baseline.json      held-out cross-entropy of the unigram (token frequency) model, per modality
      curve.png          train loss and held-out loss per modality against the unigram baselines

Several processes: `torchrun --nproc_per_node N -m omnimill train ...` (gloo on CPU, nccl on GPU); each
rank reads its own slots of the data, DDP averages gradients, rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from omnimill.errors import UserError
from omnimill.shards.loader import TokenDataset, TokenLoader
from omnimill.train.config import TrainConfig, from_dict, to_dict
from omnimill.train.masking import sample_masks
from omnimill.train.model import ModalitySpec, MultimodalModel

CHECKPOINT = "checkpoint.json"  # the commit point of a checkpoint
LEGACY = "checkpoint.pt"  # the pickled format of omnimill < issue 11: never loaded, only converted on request
FORMAT = "omnimill-train-checkpoint/1"
BASELINE_BATCHES = 200  # batches counted for the unigram baseline (an estimate; enough for its point)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to lr, then cosine decay to min_lr at the last step."""
    o = config.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, config.steps - o.warmup_steps)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


class Session:
    """Process-group facts for this process (one process: rank 0 of 1)."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.main = self.rank == 0

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, values: dict[str, list[float]]) -> dict[str, list[float]]:
        """Element-wise sum over ranks of {name: [loss sum, count]}."""
        if self.world == 1:
            return values
        merged: dict[str, list[float]] = {}
        for part in self.gather(values):
            for k, (a, b) in part.items():
                merged.setdefault(k, [0.0, 0.0])
                merged[k][0] += a
                merged[k][1] += b
        return merged


def datasets_of(config: TrainConfig, split: str) -> list[TokenDataset]:
    """The run's datasets, each renamed as `data.rename` says and reading the chosen modalities it has (an
    image dataset has no audio; a clip dataset no depth): a chosen name that no dataset has is refused."""
    d = config.data
    if not d.datasets:
        raise UserError("no training data: give DATA (token stores or shard sets)")
    unknown = sorted(set(d.rename) - set(d.datasets))
    if unknown:
        raise UserError(f"data.rename names {', '.join(unknown)}, which is not one of the run's datasets "
                        f"({', '.join(d.datasets)})")
    datasets, found = [], set()
    for uri in d.datasets:
        rename = d.rename.get(uri) or {}
        dataset = TokenDataset(uri, split=split, holdout=d.holdout, holdout_seed=config.seed, rename=rename)
        if d.modalities:
            stored = [m for m in dataset.source.modalities if rename.get(m, m) in d.modalities]
            found.update(rename.get(m, m) for m in stored)
            if not stored:
                raise UserError(f"{uri} has none of the chosen modalities ({', '.join(d.modalities)}); it has "
                                f"{', '.join(rename.get(m, m) for m in dataset.source.modalities)}")
            dataset = TokenDataset(uri, modalities=stored, split=split, holdout=d.holdout, holdout_seed=config.seed,
                                   rename=rename)
        datasets.append(dataset)
    missing = [m for m in d.modalities if m not in found]
    if missing:
        raise UserError(f"no dataset has the modalities {', '.join(missing)}: check data.modalities")
    return datasets


def make_loader(config: TrainConfig, session: Session) -> TokenLoader:
    d = config.data
    return TokenLoader(datasets_of(config, "train"), batch_size=d.batch_size, weights=d.weights or None,
                       seed=config.seed, shuffle_buffer=d.shuffle_buffer, num_workers=d.num_workers,
                       rank=session.rank, world_size=session.world, crops=d.crops,
                       pin_memory=session.device.type == "cuda")


def time_layout(modality) -> dict | None:
    """A loader modality's time axis as its manifest or token store declares it ({"steps": T, "of": "frames" |
    "audio_segments"}), or None: no time axis, no time embedding."""
    time = modality.info.get("time")
    return {"steps": int(time["steps"]), "of": str(time.get("of", ""))} if time else None


def specs_of(loader: TokenLoader) -> list[ModalitySpec]:
    return [ModalitySpec(m.name, m.vocab_size, m.length, (time_layout(m) or {}).get("steps", 0))
            for m in loader.modalities.values()]


def spec_rows(specs: list[ModalitySpec]) -> list[list]:
    """What checkpoint.json records of the modalities: [name, vocab, length] each, and the time steps for a
    modality with a time axis (rows without them read as before time axes existed)."""
    return [[s.name, s.vocab_size, s.length] + ([s.time_steps] if s.time_steps else []) for s in specs]


def specs_from(rows: list) -> list[ModalitySpec]:
    """checkpoint.json's modalities back; rows of checkpoints from before time axes have 3 entries (no time)."""
    return [ModalitySpec(str(row[0]), int(row[1]), int(row[2]), int(row[3]) if len(row) > 3 else 0) for row in rows]


def unigram_baseline(config: TrainConfig, session: Session, specs: list[ModalitySpec],
                     heldout: list[TokenDataset]) -> dict[str, float]:
    """Held-out cross-entropy (nats/token) of predicting every token from its modality's training
    frequencies (add-one smoothed): the loss a model that ignores all context would reach."""
    counts = {s.name: np.ones(s.vocab_size) for s in specs}
    for ds in datasets_of(config, "train"):
        loader = TokenLoader(ds, batch_size=config.data.batch_size, epochs=1, shuffle_buffer=0, seed=config.seed,
                             rank=session.rank, world_size=session.world)
        for i, batch in zip(range(BASELINE_BATCHES), loader):
            for s in specs:
                if s.name in batch["tokens"]:
                    tokens = batch["tokens"][s.name][batch["masks"][s.name]].numpy()
                    counts[s.name] += np.bincount(tokens, minlength=s.vocab_size)
    if session.world > 1:  # every rank counted its own slots: add them up, so all ranks share one model
        for name, c in counts.items():
            merged = torch.from_numpy(c - 1)
            dist.all_reduce(merged)
            counts[name] = merged.numpy() + 1
    totals = {}
    for ds in heldout:
        loader = TokenLoader(ds, batch_size=config.data.batch_size, epochs=eval_passes(config), shuffle_buffer=0,
                             crops="first", rank=session.rank, world_size=session.world)
        for i, batch in zip(range(config.eval_batches), loader):
            for s in specs:
                if s.name in batch["tokens"]:
                    tokens = batch["tokens"][s.name][batch["masks"][s.name]].numpy()
                    nll = -np.log(counts[s.name] / counts[s.name].sum())
                    total = totals.setdefault(s.name, [0.0, 0.0])
                    total[0] += float(nll[tokens].sum())
                    total[1] += len(tokens)
    totals = session.sum(totals)
    return {k: a / b for k, (a, b) in sorted(totals.items()) if b}


@torch.no_grad()
def evaluate(model, config: TrainConfig, session: Session, specs: list[ModalitySpec],
             heldout: list[TokenDataset]) -> dict[str, float]:
    """Held-out loss per modality (nats/token) on eval_batches batches, whole views, masks drawn from a fixed
    seed: the same inputs and targets at every evaluation. A held-out set smaller than eval_batches batches
    is gone through again with new masks: a short modality (a transcript of 10 tokens beside 200 of frames)
    is often all input under one draw, and one pass over 9 clips could leave it without a single target."""
    model.eval()
    names = [s.name for s in specs]
    generator = torch.Generator().manual_seed(config.seed + 1_000_003)
    totals: dict[str, list[float]] = {}
    for ds in heldout:
        loader = TokenLoader(ds, batch_size=config.data.batch_size, epochs=eval_passes(config), shuffle_buffer=0,
                             crops="first", rank=session.rank, world_size=session.world)
        for _, batch in zip(range(config.eval_batches), loader):
            masked = sample_masks(complete(batch, specs), names, config.mask, generator).to(session.device)
            with _autocast(config, session):
                _, per = model(*masked.model_inputs(), masked.dec_tok)
            for name, (loss, n) in per.items():
                total = totals.setdefault(name, [0.0, 0.0])
                total[0] += float(loss)
                total[1] += n
    model.train()
    totals = session.sum(totals)
    return {k: a / b for k, (a, b) in sorted(totals.items()) if b}


def eval_passes(config: TrainConfig) -> int:
    """Passes over a held-out set enough to fill eval_batches batches even from one sample, and finite: a
    slot whose share of the set is empty must end, not go round nothing forever."""
    return config.eval_batches * config.data.batch_size


def complete(batch: dict, specs: list[ModalitySpec]) -> dict:
    """A loader over one dataset of a mixture lacks the modalities only other datasets have: add them,
    absent (mask false)."""
    b = len(batch["keys"])
    for s in specs:
        if s.name not in batch["tokens"]:
            batch["tokens"][s.name] = torch.zeros(b, s.length, dtype=torch.long)
            batch["masks"][s.name] = torch.zeros(b, s.length, dtype=torch.bool)
            batch["present"][s.name] = torch.zeros(b, dtype=torch.bool)
    return batch


def _autocast(config: TrainConfig, session: Session):
    if config.optim.amp and session.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


class _StopOnSignal:
    """SIGTERM / SIGINT (a scheduler's preemption, Ctrl-C) finish the current step, checkpoint, and stop.
    Under several processes the flag is all-reduced each step, so every rank stops at the same step."""

    def __init__(self):
        import signal
        import threading

        self.flag, self.previous = False, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._set)

    def _set(self, *_):
        self.flag = True

    def requested(self, session: "Session") -> bool:
        if session.world == 1:
            return self.flag
        flag = torch.tensor([float(self.flag)], device=session.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------- checkpoints
def first_line(error: Exception) -> str:
    """An exception as one line of a UserError (some libraries' messages span lines, or are empty)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _atomic(path: Path, write) -> None:
    """write(tmp) then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(out: Path, model: dict, optimizer: dict, generators: list[torch.Tensor], meta: dict) -> None:
    """model-STEP.safetensors and state-STEP.safetensors, then checkpoint.json naming them with their sha256:
    the commit. A kill before the commit leaves the previous checkpoint whole (its files have other names)."""
    from safetensors.torch import save_file

    tensors, optim = {}, {"param_groups": optimizer["param_groups"], "state": {}}
    for pid, values in optimizer["state"].items():  # AdamW: exp_avg, exp_avg_sq and step are tensors
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{pid}/{key}"] = value
            else:
                optim["state"].setdefault(str(pid), {})[key] = value
    tensors.update({f"generator/{rank}": g for rank, g in enumerate(generators)})
    files = {}
    for kind, part in (("model", model), ("state", tensors)):
        path = out / f"{kind}-{meta['step']:08d}.safetensors"
        part = {k: v.detach().cpu().contiguous() for k, v in part.items()}
        _atomic(path, lambda tmp: save_file(part, str(tmp)))
        files[kind] = {"name": path.name, "sha256": _sha256(path)}
    commit = {"format": FORMAT, **meta, "optimizer": optim, "files": files}
    _atomic(out / CHECKPOINT, lambda tmp: tmp.write_text(json.dumps(commit, indent=1)))
    for kind in files:  # the previous checkpoint's files, and any left by a run killed before its commit
        for path in out.glob(f"{kind}-*.safetensors"):
            if path.name != files[kind]["name"]:
                path.unlink(missing_ok=True)


def read_commit(out: str | Path) -> dict | None:
    """checkpoint.json of a run folder (None when it has none), checked for shape only. An old pickled
    checkpoint.pt is refused unread: unpickling a file can run any code in it."""
    out = Path(out)
    if (out / LEGACY).exists():
        raise UserError(f"{out / LEGACY} is a pickled checkpoint of an older omnimill, which is not loaded (a "
                        f"pickle can run code); retrain into a new --out, or convert it if you trust it: "
                        f"`omnimill train-convert {out}`")
    path = out / CHECKPOINT
    if not path.exists():
        return None
    try:
        commit = json.loads(path.read_text())
        from_dict(commit["config"])  # raises on a config of another shape
        shaped = commit["format"] == FORMAT and all(isinstance(commit["files"][kind][key], str)
                                                    for kind in ("model", "state") for key in ("name", "sha256"))
    except (ValueError, TypeError, KeyError, AttributeError, UserError):  # not JSON, or JSON of another shape
        shaped = False
    if not shaped:
        raise UserError(f"{path} is not a checkpoint of this omnimill (damaged?); use a new --out")
    return commit


def load_checkpoint(out: str | Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]] | None:
    """(checkpoint.json, {"model": tensors, "state": tensors}) on the CPU, or None when there is none yet.
    Every file must match the sha256 the commit recorded: a file of an interrupted save or a damaged copy is
    refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    commit = read_commit(out)
    if commit is None:
        return None
    tensors = {}
    for kind in ("model", "state"):
        entry = commit["files"][kind]
        path = Path(out) / Path(entry["name"]).name  # a bare name: nothing outside the run folder
        try:
            if _sha256(path) != entry["sha256"]:
                raise ValueError("sha256 differs")
            tensors[kind] = load_file(path)
        except (OSError, ValueError, SafetensorError) as e:
            raise UserError(f"{path} does not match {Path(out) / CHECKPOINT} ({e}): the checkpoint is damaged; "
                            "use a new --out") from None
    return commit, tensors


def optimizer_state(commit: dict, state: dict[str, torch.Tensor]) -> dict:
    """The optimizer's state_dict back from state-STEP.safetensors and checkpoint.json."""
    per_param: dict[int, dict] = {}
    for name, value in state.items():
        if name.startswith("optimizer/"):
            _, pid, key = name.split("/", 2)
            per_param.setdefault(int(pid), {})[key] = value
    for pid, values in commit["optimizer"]["state"].items():
        per_param.setdefault(int(pid), {}).update(values)
    return {"state": per_param, "param_groups": commit["optimizer"]["param_groups"]}


def convert_legacy(run: str | Path) -> int:
    """Rewrite a run's pickled checkpoint.pt in the current format; returns its step. Read by torch's
    weights-only unpickler (tensors and plain containers only, no code), for a file the user chose to trust;
    checkpoint.pt is renamed checkpoint.pt.converted."""
    run = Path(run)
    try:
        state = torch.load(run / LEGACY, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{run} holds no {LEGACY} to convert") from None
    except Exception as e:  # weights_only refuses anything but tensors and plain data; any damage ends here too
        raise UserError(f"{run / LEGACY} is damaged or holds more than tensors and plain data ({type(e).__name__}); "
                        "it was not converted: retrain") from None
    meta = {k: state[k] for k in ("config", "step", "loader", "baseline", "modalities", "history", "datasets")}
    save_checkpoint(run, state["model"], state["optimizer"], state["generator"], json.loads(json.dumps(meta)))
    os.replace(run / LEGACY, run / (LEGACY + ".converted"))
    return int(state["step"])


def train(config: TrainConfig, out: str | Path, progress: bool = True, stop_at: int | None = None) -> dict:
    """Train (or resume, when OUT holds a checkpoint) and return the last held-out losses and baseline.
    `stop_at`: checkpoint and return after that step, as if the job were stopped there (a time-limited
    allocation); running again resumes. `objective=causal` trains causal.train_causal instead."""
    if config.objective == "causal":
        from omnimill.train.causal import train_causal

        return train_causal(config, out, progress, stop_at)
    out = Path(out)
    session = Session(config.device)
    torch.manual_seed(config.seed)
    loader = make_loader(config, session)
    heldout = datasets_of(config, "heldout")  # opened once: evaluations reuse them
    specs = specs_of(loader)
    names = [s.name for s in specs]
    model = MultimodalModel(config.model, specs).to(session.device)
    optimizer = torch.optim.AdamW(model.parameter_groups(config.optim.weight_decay), lr=config.optim.lr,
                                  betas=(config.optim.beta1, config.optim.beta2))
    generator = torch.Generator().manual_seed(config.seed * 1000 + session.rank)
    step, history, baseline = 0, [], None
    loaded = load_checkpoint(out)
    if loaded:
        state, tensors = loaded
        if specs_from(state["modalities"]) != specs:  # names, vocabularies, lengths and time axes
            raise UserError(f"{out / CHECKPOINT} was trained on other modalities; use a new --out")
        model.load_state_dict(tensors["model"])
        optimizer.load_state_dict(optimizer_state(state, tensors["state"]))
        loader.load_state_dict(state["loader"][session.rank])
        generator.set_state(tensors["state"][f"generator/{session.rank}"])
        step, history, baseline = state["step"], state["history"], state["baseline"]
    baseline = start_files(out, config, session, baseline, lambda: unigram_baseline(config, session, specs, heldout))
    ddp = torch.nn.parallel.DistributedDataParallel(model) if session.world > 1 else model
    n_params = sum(p.numel() for p in model.parameters())
    if session.main and progress:
        print(f"model: {n_params / 1e6:.2f} M parameters; modalities {', '.join(names)}; "
              f"{session.world} process(es) on {session.device}; starting at step {step}", flush=True)

    def save(step: int) -> None:
        loaders, generators = session.gather(loader.state_dict()), session.gather(generator.get_state())
        if session.main:
            meta = {"config": to_dict(config), "step": step, "loader": loaders, "baseline": baseline,
                    "modalities": spec_rows(specs), "history": history,
                    "datasets": {name: asdict_modality(m) for name, m in loader.modalities.items()}}
            save_checkpoint(out, model.state_dict(), optimizer.state_dict(), generators, meta)

    def micro_step(batch: dict):
        masked = sample_masks(batch, names, config.mask, generator).to(session.device)
        with _autocast(config, session):
            loss, per = ddp(*masked.model_inputs(), masked.dec_tok)
        return loss, per, masked.enc_valid.sum() + masked.dec_valid.sum()

    return run_steps(config, session, model, ddp, optimizer, out, progress, stop_at, step, history, baseline,
                     loader, micro_step, lambda: evaluate(model, config, session, specs, heldout), save,
                     "per_modality")


def start_files(out: Path, config: TrainConfig, session: Session, baseline: dict | None, make_baseline) -> dict:
    """What a run writes before its first step, for every objective: OUT itself, config.json (this run's
    settings, a resume's too), and the unigram baseline (`make_baseline()` when the checkpoint holds none)
    in baseline.json. Rank 0 writes; every rank computes the baseline (its counts are summed over ranks)."""
    if session.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(config), indent=1))
    if baseline is None:
        baseline = make_baseline()
        if session.main:
            (out / "baseline.json").write_text(json.dumps(baseline, indent=1))
    return baseline


def run_steps(config: TrainConfig, session: Session, model, ddp, optimizer, out: Path, progress: bool,
              stop_at: int | None, step: int, history: list, baseline: dict, loader, micro_step, scores, save,
              per_key: str) -> dict:
    """The training loop both objectives share, from `step` to config.steps (or stop_at, or a signal): lr
    schedule, grad accumulation, clip and step, log.jsonl records and prints every log_every steps, held-out
    scores every eval_every, a checkpoint every checkpoint_every and on stopping, the curve at the end.
    What differs is given: `micro_step(batch)` -> (loss, {part: (summed loss, count)}, tokens counted), its
    forward run under autocast, inside DDP's no_sync but for the last micro-batch; `scores()` -> held-out
    losses; `save(step)` writes a checkpoint; `per_key` names the per-part losses in a log record. Returns
    the last step, held-out losses, baseline and parameter count."""
    log = open(out / "log.jsonl", "a") if session.main else None
    batches = iter(loader)
    stop = _StopOnSignal()
    window = {"loss": 0.0, "tokens": 0, "time": time.perf_counter(), "per": {}}
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        for micro in range(config.optim.grad_accum):
            batch = next(batches)
            last = micro == config.optim.grad_accum - 1
            with nullcontext() if last or session.world == 1 else ddp.no_sync():  # DDP syncs the last only
                loss, per, tokens = micro_step(batch)
                (loss / config.optim.grad_accum).backward()
            window["loss"] += float(loss.detach()) / config.optim.grad_accum
            window["tokens"] += int(tokens)
            for name, (value, n) in per.items():
                acc = window["per"].setdefault(name, [0.0, 0.0])
                acc[0] += float(value)
                acc[1] += n
        if config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            per = session.sum(window["per"])
            seconds = time.perf_counter() - window["time"]
            tokens = sum(session.gather(window["tokens"]))
            steps_in_window = (step - 1) % config.log_every + 1
            record = {"step": step, "loss": window["loss"] / steps_in_window, "lr": lr_at(step - 1, config),
                      "tokens_per_s": tokens / seconds, per_key: {k: a / b for k, (a, b) in per.items() if b}}
            history.append(record)
            if session.main:
                log.write(json.dumps(record) + "\n")
                log.flush()
                if progress:
                    print(f"step {step}/{config.steps} loss {record['loss']:.3f} lr {record['lr']:.2e} "
                          f"{record['tokens_per_s']:.0f} tok/s", flush=True)
            window = {"loss": 0.0, "tokens": 0, "time": time.perf_counter(), "per": {}}
        if step % config.eval_every == 0 or step == config.steps:
            held = scores()
            history.append({"step": step, "heldout": held})
            if session.main:
                log.write(json.dumps({"step": step, "heldout": held, "baseline": baseline}) + "\n")
                log.flush()
                if progress:
                    print("  held-out " + ", ".join(f"{k} {v:.2f} (unigram {baseline.get(k, float('nan')):.2f})"
                                                    for k, v in held.items()), flush=True)
        stopping = step == stop_at or stop.requested(session)
        if step % config.checkpoint_every == 0 or step == config.steps or stopping:
            save(step)
        if stopping:
            if session.main and progress:
                print(f"stopped at step {step}; checkpoint saved, run the same command to resume", flush=True)
            break
    if session.main:
        log.close()
    if session.main and step == config.steps:
        from omnimill.train.plots import plot_curve

        plot_curve(history, baseline, out / "curve.png")
    stop.restore()
    last = next((h["heldout"] for h in reversed(history) if "heldout" in h), {})
    return {"step": step, "heldout": last, "baseline": baseline,
            "parameters": sum(p.numel() for p in model.parameters())}


def asdict_modality(m) -> dict:
    """checkpoint.json's record of a data modality; `time` only for one with a time axis."""
    record = {"vocab_size": m.vocab_size, "length": m.length, "pad_id": m.pad_id, "tokenizer": m.info}
    return {**record, "time": time_layout(m)} if time_layout(m) else record

