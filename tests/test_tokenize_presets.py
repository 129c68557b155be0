"""Tokenizer presets (`--preset 4m`: 4M-21's shapes by field kind), exact FSQ vocabularies, and the vector
tokenizer's codebook-usage term. Presets at full shape, tiny widths and a few steps: the shapes are the test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import invoke, one_line_error, write_images

from omnimill.engine.label import label
from omnimill.errors import UserError
from omnimill.tokenize.base import TokenizerConfig, load_tokenizer
from omnimill.tokenize.presets import PRESETS, row_for, table
from omnimill.tokenize.quantizer import Quantizer, exact_fsq_levels, fsq_levels, levels_for
from omnimill.tokenize.vector import USAGE_WEIGHT, VectorTokenizer

QUICK = ["--steps", "2", "--batch-size", "2", "--holdout", "0.25", "--no-progress"]


@pytest.fixture(scope="module")
def labels(tmp_path_factory, tiny_dinov2) -> str:
    root = tmp_path_factory.mktemp("presets")
    write_images(root / "corpus", 8, size=(80, 64))
    store = str(root / "labels.zarr")
    label(str(root / "corpus"), store, ["rgb", "canny", f"dinov2={tiny_dinov2}"], workers=1, unit_size=8,
          view_size=64, progress=False)
    return store


def train(labels, tmp_path, field, kind, *extra):
    out = tmp_path / field.replace("/", "-")
    result = invoke("tokenizer", "train", labels, "--field", field, "--kind", kind, "--out", out, "--preset", "4m",
                    *QUICK, *extra)
    assert result.exit_code == 0, result.output
    return load_tokenizer(out), json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("field, kind, extra, tokens, vocab, row", [
    ("rgb/image", "spatial", ["--width", "8"], 196, 16384, "rgb"),  # 224 in, 14 x 14
    ("canny/edges", "spatial", ["--width", "8"], 196, 8192, "maps"),
    ("dinov2/patches", "spatial", ["--width", "8"], 256, 8192, "feature grids"),  # the grid's 16 x 16
    ("dinov2/cls", "vector", [], 16, 8192, "globals"),
])
def test_4m_preset_gives_4m_shapes_by_field_kind(labels, tmp_path, field, kind, extra, tokens, vocab, row):
    tok, config = train(labels, tmp_path, field, kind, *extra)
    assert (tok.tokens_per_sample, tok.vocab_size) == (tokens, vocab)
    preset = config["options"]["preset"]
    assert (preset["name"], preset["row"], preset["overridden"]) == ("4m", row, {})
    assert config["options"]["quantizer"] == "fsq-exact" and preset["set"]["quantizer"] == "fsq-exact"
    assert math.prod(preset["levels"]) == vocab
    if kind == "spatial":
        side = 224 if row != "feature grids" else 16
        assert (config["options"]["input_size"], config["options"]["grid"]) == (side, math.isqrt(tokens))
    values = {tok.field: np.zeros((2, *config["source"]["fields"][tok.field]["shape"]),
                                  config["source"]["fields"][tok.field]["dtype"])}
    ids = tok.encode(values)
    assert ids.shape == (2, tokens) and 0 <= ids.min() and ids.max() < vocab


def test_options_given_beside_the_preset_win_and_are_recorded(labels, tmp_path):
    tok, config = train(labels, tmp_path, "canny/edges", "spatial", "--width", "8", "--vocab", "1024", "--grid", "7")
    assert (tok.vocab_size, tok.tokens_per_sample) == (1024, 49)
    preset = config["options"]["preset"]
    assert preset["overridden"] == {"vocab": 1024, "grid": 7}
    assert preset["set"] == {"input_size": 224, "quantizer": "fsq-exact"}


def test_preset_table_and_refusals(labels, tmp_path):
    for command in (["tokenizer", "presets"], ["tokenizer", "train", labels, "--preset", "list"]):
        result = invoke(*command)
        assert result.exit_code == 0 and "--preset 4m" in result.output and "16384" in result.output
    assert "embedding_grid" in table()
    assert row_for("4m", "spatial", "classes").settings["vocab"] == 4096  # semseg
    assert row_for("4m", "spatial", "unit_vectors").settings["vocab"] == 8192
    with pytest.raises(UserError, match="raw text"):
        row_for("4m", "sequence", "text")
    for args, fragment in [(["--field", "dinov2/cls", "--kind", "vector", "--preset", "5m"], "unknown preset"),
                           (["--field", "canny/edges", "--kind", "vector", "--preset", "4m"], "no vector tokenizer")]:
        one_line_error(invoke("tokenizer", "train", labels, "--out", tmp_path / "x", *args, *QUICK), fragment)


def test_every_4m_vocabulary_is_exact():
    for rows in PRESETS.values():
        for row in rows:
            s = row.settings
            assert math.prod(levels_for(s["quantizer"], s["vocab"])) == s["vocab"]
    assert exact_fsq_levels(4096) == [8, 8, 4, 4, 4] and math.prod(fsq_levels(4096)) == 4375  # why fsq-exact
    assert Quantizer(8, 8192, "fsq-exact").vocab_size == 8192
    with pytest.raises(ValueError, match="power of two"):
        exact_fsq_levels(1000)


def test_usage_term_is_low_when_a_batch_spreads_over_the_codebook():
    torch.manual_seed(0)
    q = Quantizer(4, 256, "fsq")
    spread, collapsed = torch.randn(64, 8, 4) * 3, torch.randn(64, 8, 4) * 0.01
    assert q.usage_loss(spread) < 0.3 < 0.6 < q.usage_loss(collapsed) <= 1
    z = collapsed.clone().requires_grad_()
    q.usage_loss(z).backward()
    assert z.grad.abs().sum() > 0  # it moves the encoder, not only the metric
    assert float(Quantizer(4, 16, "vq").usage_loss(spread)) == 0.0


def test_vector_tokenizer_records_its_usage_weight():
    x = np.random.default_rng(0).normal(size=(16, 12)).astype(np.float32)
    config = TokenizerConfig("vector", "t", ["v"], normalization={"mean": x.mean(0).tolist(), "std": x.std(0).tolist()},
                             options={"sample_shape": [12], "n_tokens": 4, "hidden": 16, "vocab": 256})
    tok = VectorTokenizer(config)
    assert config.options["usage_weight"] == USAGE_WEIGHT > 0
    loss, indices = tok.loss({"v": x})
    loss.backward()
    assert indices.shape == (16, 4)
