"""tokenize/train.py: defaults chosen by device, the ETA line, and training data memory-mapped past its budget.
Real label stores made by the engine, real models at tiny widths and a few steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import invoke, write_images

from omnimill.engine.label import label
from omnimill.tokenize.base import load_tokenizer
from omnimill.tokenize.data import open_field, split
from omnimill.tokenize.train import DEVICE_DEFAULTS, TrainOptions, device_defaults, hold, train_tokenizer

TINY = dict(steps=6, batch_size=2, width=8, grid=4, progress=False, holdout=0.25)


@pytest.fixture(scope="module")
def labels(tmp_path_factory, tiny_dinov2) -> str:
    root = tmp_path_factory.mktemp("train")
    write_images(root / "corpus", 12, size=(80, 64))
    store = str(root / "labels.zarr")
    label(str(root / "corpus"), store, ["rgb", "canny", f"dinov2={tiny_dinov2}"], workers=1, unit_size=8,
          view_size=64, progress=False)
    return store


def test_spatial_defaults_by_device_and_explicit_options_win():
    cpu, chosen = device_defaults(TrainOptions(device="cpu"), "spatial")
    assert (cpu.steps, cpu.batch_size, cpu.width) == (400, 16, 16) and cpu.input_size is None  # _build reads it
    assert chosen == {"device": "cpu", "set": DEVICE_DEFAULTS["cpu"]}
    cuda, chosen = device_defaults(TrainOptions(device="cuda:0", steps=7), "spatial")
    assert (cuda.steps, cuda.batch_size, cuda.width) == (7, 32, 64)
    assert chosen == {"device": "cuda:0", "set": {"batch_size": 32, "width": 64, "input_size": 256}}
    vector, chosen = device_defaults(TrainOptions(device="cpu"), "vector")  # only spatial ones shrink on a CPU
    assert (vector.steps, vector.batch_size) == (2000, 32) and "input_size" not in chosen["set"]


def test_cpu_defaults_are_used_and_recorded(labels, tmp_path):
    directory = train_tokenizer(labels, "canny/edges", "spatial", tmp_path / "edges", device="cpu", **TINY)
    config = json.loads((directory / "config.json").read_text())
    assert config["options"]["defaults"] == {"device": "cpu", "set": {"input_size": 64}}  # the rest were given
    assert config["options"]["input_size"] == 64 and config["tokens_per_sample"] == 16
    assert load_tokenizer(directory).round_trip({"edges": np.zeros((1, 64, 64), bool)})[1].shape == (1, 1, 64, 64)


def test_a_feature_grid_keeps_its_own_side_on_a_cpu(labels, tmp_path):
    side = open_field(labels, "dinov2/patches").specs["patches"]["shape"][0]
    options = {**TINY, "grid": side}
    directory = train_tokenizer(labels, "dinov2/patches", "spatial", tmp_path / "patches", device="cpu", **options)
    config = json.loads((directory / "config.json").read_text())
    assert config["options"]["input_size"] == side and "input_size" not in config["options"]["defaults"]["set"]


def test_eta_line_after_the_first_steps(labels, tmp_path, capsys):
    directory = train_tokenizer(labels, "canny/edges", "spatial", tmp_path / "edges", device="cpu", input_size=32,
                                **{**TINY, "progress": True})
    eta = json.loads((directory / "train_log.json").read_text())["eta"]
    assert eta["device"] == "cpu" and eta["seconds_per_step"] > 0
    assert eta["projected_seconds"] == pytest.approx(6 * eta["seconds_per_step"], rel=0.01, abs=0.1)
    err = capsys.readouterr().err
    assert "for 6 steps on cpu (" in err and err.count("about ") == 1


def test_training_data_past_the_budget_is_memory_mapped_and_trains_the_same(labels, tmp_path):
    source = open_field(labels, "rgb/image")
    train_idx, _ = split(source, 0.25)
    held = hold(source, train_idx, 1, tmp_path, least=2)  # 1 byte: every sample past it; pieces of 2 samples
    assert isinstance(held["image"], np.memmap) and len(train_idx) > 4
    np.testing.assert_array_equal(held["image"], source.read(train_idx)["image"])
    assert not isinstance(hold(source, train_idx, 1 << 30, tmp_path)["image"], np.memmap)

    runs = [train_tokenizer(labels, "rgb/image", "spatial", tmp_path / f"rgb{budget}", device="cpu", input_size=32,
                            memory_budget=budget, **TINY) for budget in (1, 1 << 30)]
    logs = [json.loads((run / "train_log.json").read_text()) for run in runs]
    assert logs[0]["loss"] == logs[1]["loss"]  # the same batches, the same steps


def test_cli_help_says_which_defaults_apply_where(labels, tmp_path):
    result = invoke("tokenizer", "train", "--help")
    words = " ".join(result.output.replace("│", " ").split())  # rich wraps the help in a box
    assert result.exit_code == 0 and "400 on CPU" in words and "256 on CUDA, 64 on CPU" in words
    out = tmp_path / "edges"
    result = invoke("tokenizer", "train", labels, "--field", "canny/edges", "--kind", "spatial", "--out", out,
                    "--steps", "2", "--batch-size", "2", "--width", "8", "--input-size", "32", "--grid", "4",
                    "--holdout", "0.25", "--no-progress")
    assert result.exit_code == 0, result.output
    defaults = json.loads((out / "config.json").read_text())["options"]["defaults"]
    assert defaults["set"] == {}  # every device default was given
