"""The trainer on a real token store: it learns, resumes exactly, runs under torchrun, and generates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from omnimill.errors import UserError
from omnimill.train.config import TrainConfig, apply_overrides
from omnimill.train.generate import generate_picture, maskgit, resolve
from omnimill.train.loop import convert_legacy, load_checkpoint, lr_at, optimizer_state, read_commit, train

TINY = ["dim=32", "encoder_layers=1", "decoder_layers=1", "heads=2", "batch_size=8", "num_workers=0",
        "input_tokens=24", "target_tokens=24", "shuffle_buffer=16", "holdout=0.25", "warmup_steps=5",
        "eval_batches=4", "log_every=5"]


def config(data: str, *flags: str) -> TrainConfig:
    c = TrainConfig()
    apply_overrides(c, [f"datasets={data}", *TINY, *flags])
    return c


def test_lr_warms_up_then_decays_to_min():
    c = config("x", "steps=100", "warmup_steps=10", "lr=1e-3", "min_lr=1e-4")
    assert lr_at(0, c) == pytest.approx(1e-4) and lr_at(9, c) == pytest.approx(1e-3)
    assert lr_at(55, c) == pytest.approx(5.5e-4) and lr_at(100, c) == pytest.approx(1e-4)


def test_it_learns_below_the_unigram_baseline(token_data, tmp_path):
    run = tmp_path / "run"
    result = train(config(token_data["tokens"], "steps=150", "eval_every=150", "lr=3e-3", "dim=64"), run,
                   progress=False)
    assert set(result["heldout"]) == {"caption", "palette", "rgb_image"}
    # Palette sequences have structure (counts, colour coordinates, weights in their places) that the
    # unigram model cannot see.
    assert result["heldout"]["palette"] < 0.8 * result["baseline"]["palette"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.7 * losses[0]
    assert (run / "curve.png").stat().st_size > 10_000 and json.loads((run / "baseline.json").read_text())


def test_resume_is_exact(token_data, tmp_path):
    settings = config(token_data["tokens"], "steps=8", "eval_every=100", "checkpoint_every=100", "num_workers=2")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(settings, straight, progress=False)
    train(settings, stopped, progress=False, stop_at=3)
    assert read_commit(stopped)["step"] == 3
    shutil.copytree(stopped, tmp_path / "damaged")
    # a save killed before its commit leaves files of a later step: the committed step-3 checkpoint is used
    (stopped / "model-00000005.safetensors").write_bytes(b"half a file")
    train(settings, stopped, progress=False)
    (a_commit, a), (b_commit, b) = load_checkpoint(straight), load_checkpoint(stopped)
    assert a_commit["step"] == b_commit["step"] == 8
    for part in ("model", "state"):  # weights; optimizer moments and steps, masking RNG
        assert a[part].keys() == b[part].keys()
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), name
    assert a_commit["loader"] == b_commit["loader"] and a_commit["optimizer"] == b_commit["optimizer"]
    assert sorted(p.name for p in stopped.glob("*.safetensors")) == ["model-00000008.safetensors",
                                                                      "state-00000008.safetensors"]
    # a file that is not the one the commit names (a damaged copy) is refused, not half-loaded
    weights = tmp_path / "damaged" / "model-00000003.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"x")
    with pytest.raises(UserError, match="model-00000003.safetensors does not match .*damaged"):
        train(settings, tmp_path / "damaged", progress=False)

    # a run of the old pickled format: refused unread, converted only on request (weights-only unpickler)
    old = tmp_path / "old"
    old.mkdir()
    legacy = {key: a_commit[key] for key in ("config", "step", "loader", "baseline", "history", "datasets")}
    legacy.update(model=a["model"], optimizer=optimizer_state(a_commit, a["state"]),
                  generator=[a["state"]["generator/0"]], modalities=[tuple(m) for m in a_commit["modalities"]])
    torch.save(legacy, old / "checkpoint.pt")
    with pytest.raises(UserError, match="checkpoint.pt is a pickled checkpoint .* retrain .* train-convert"):
        train(settings, old, progress=False)
    assert convert_legacy(old) == 8 and not (old / "checkpoint.pt").exists()
    c_commit, c = load_checkpoint(old)
    assert c_commit["loader"] == a_commit["loader"] and c_commit["optimizer"] == a_commit["optimizer"]
    assert all(torch.equal(t, c["state"][name]) for name, t in a["state"].items())
    assert all(torch.equal(t, c["model"][name]) for name, t in a["model"].items())


def test_cli_resume_refuses_changed_settings_and_generate(token_data, tmp_path):
    run = tmp_path / "run"
    base = [sys.executable, "-m", "omnimill", "train", token_data["tokens"], "--out", str(run), "--no-progress",
            *[f"--{f}" for f in TINY], "--steps=4", "--eval_every=4"]
    subprocess.run(base, check=True, capture_output=True)
    changed = subprocess.run(base[:-2] + ["--steps=6", "--dim=48"], capture_output=True, text=True)
    assert changed.returncode == 2 and "model.dim" in changed.stderr
    more = subprocess.run(base[:-2] + ["--steps=6", "--eval_every=6"], capture_output=True, text=True)
    assert more.returncode == 0, more.stderr
    assert read_commit(run)["step"] == 6
    bad = subprocess.run(base[:-2] + ["--model.layers=2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown setting" in bad.stderr

    key = next(k for k in token_data["captions"])
    out = tmp_path / "gen.png"
    facts = generate_picture(run, "rgb", "palette", key, out, steps=4)
    assert out.stat().st_size > 10_000 and 0 <= facts["token_accuracy"] <= 1
    with pytest.raises(UserError, match="not in this run"):
        generate_picture(run, "depth", "palette", key, out)
    with pytest.raises(UserError, match="no sample"):
        generate_picture(run, "rgb", "palette", "nope", out)


def test_maskgit_fills_every_position(token_data, tmp_path):
    from omnimill.train.model import ModalitySpec, MultimodalModel

    specs = [ModalitySpec("a", 10, 5), ModalitySpec("b", 7, 9)]
    model = MultimodalModel(config("x").model, specs).eval()
    out = maskgit(model, {0: torch.tensor([1, 2, 3, -1, 4]).numpy()}, 1, steps=3)
    assert out.shape == (9,) and (out >= 0).all() and (out < 7).all()
    assert resolve("a,b", specs) == [0, 1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs a POSIX host")
def test_two_processes_under_torchrun(token_data, tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "omnimill",
               "train", token_data["tokens"], "--out", str(run), "--no-progress", *[f"--{f}" for f in TINY],
               "--num_workers=1", "--grad_accum=2", "--steps=4", "--eval_every=4"]  # accumulation: DDP's no_sync
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = read_commit(run)
    assert state["step"] == 4 and len(state["loader"]) == 2
    assert state["loader"][0]["config"]["rank"] == 0 and state["loader"][1]["config"]["rank"] == 1
    # resume with both processes
    resumed = subprocess.run(command[:-2] + ["--steps=6", "--eval_every=6"], capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_commit(run)["step"] == 6


def test_sigterm_checkpoints_and_the_rerun_finishes(token_data, tmp_path):
    import signal

    run = tmp_path / "run"
    command = [sys.executable, "-m", "omnimill", "train", token_data["tokens"], "--out", str(run),
               *[f"--{f}" for f in TINY], "--steps=100000", "--eval_every=100000", "--log_every=1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:  # wait until it is training
        if line.startswith("step 3/"):
            break
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0 and "checkpoint saved" in output
    stopped = read_commit(run)["step"]
    assert stopped >= 3
    finish = subprocess.run(command[:-3] + ["--steps=" + str(stopped + 2), "--eval_every=100000", "--log_every=1"],
                            capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    assert f"starting at step {stopped}" in finish.stdout
    assert read_commit(run)["step"] == stopped + 2
