"""Tokenizers trained, evaluated and applied on a real label store made by the engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_images

from omnimill.engine.label import label
from omnimill.engine.tokenize import tokenize
from omnimill.errors import UserError
from omnimill.store.labels import LabelStore
from omnimill.store.tokens import TokenStore
from omnimill.tokenize.base import load_tokenizer
from omnimill.tokenize.crops import make_crops
from omnimill.tokenize.evaluate import evaluate_tokenizer
from omnimill.tokenize.train import train_tokenizer

SMALL = dict(steps=40, batch_size=8, input_size=32, grid=4, width=16, progress=False, holdout=0.25)


@pytest.fixture(scope="module")
def labels(tmp_path_factory, tiny_dinov2) -> str:
    root = tmp_path_factory.mktemp("tok")
    write_images(root / "corpus", 24, size=(80, 64))
    store = str(root / "labels.zarr")
    label(str(root / "corpus"), store, ["rgb", "canny", "palette", f"dinov2={tiny_dinov2}"], workers=1,
          unit_size=8, view_size=64, progress=False)
    return store


@pytest.fixture(scope="module")
def tokenizers(labels, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "canny": train_tokenizer(labels, "canny/edges", "spatial", root / "canny", **SMALL),
        "cls": train_tokenizer(labels, "dinov2/cls", "vector", root / "cls", steps=40, n_tokens=4, hidden=64,
                               progress=False, holdout=0.25),
        "palette": train_tokenizer(labels, "palette", "sequence", root / "palette", progress=False, holdout=0.25),
    }


def test_tokenizer_directory_holds_what_it_needs(tokenizers, labels):
    directory = tokenizers["canny"]
    assert {p.name for p in directory.iterdir()} >= {"config.json", "model.safetensors", "train_log.json",
                                                     "curve.png"}
    config = json.loads((directory / "config.json").read_text())
    assert config["kind"] == "spatial" and config["normalization"]["mode"] == "binary"
    assert config["vocab_size"] == 1000 and config["tokens_per_sample"] == 16  # FSQ [8,5,5,5]; 4 x 4 grid

    tok = load_tokenizer(directory)
    edges = LabelStore.open(labels).group["canny/edges"][:5]
    tokens = tok.encode({"edges": edges})
    assert tokens.shape == (5, 16) and tokens.dtype == np.int32 and 0 <= tokens.min() and tokens.max() < 1000
    assert tok.decode(tokens)["edges"].shape == (5, 32, 32)
    np.testing.assert_array_equal(load_tokenizer(directory).encode({"edges": edges}), tokens)  # same weights


def test_vector_tokenizer_round_trip_shapes(tokenizers, labels):
    tok = load_tokenizer(tokenizers["cls"])
    cls = LabelStore.open(labels).group["dinov2/cls"][:6]
    tokens = tok.encode({"cls": cls})
    assert tokens.shape == (6, 4)
    assert tok.decode(tokens)["cls"].shape == cls.shape


def test_training_beats_the_mean_baseline(labels, tmp_path):
    directory = train_tokenizer(labels, "rgb/image", "spatial", tmp_path / "rgb", steps=150, batch_size=8,
                                input_size=32, grid=8, width=16, lr=3e-3, progress=False, holdout=0.25)
    metrics = evaluate_tokenizer(directory, labels)
    assert metrics["psnr"] > metrics["baseline_psnr_mean"] + 3  # 3 dB better than predicting the mean
    log = json.loads((directory / "train_log.json").read_text())
    assert log["loss"][-1] < log["loss"][0]


def test_eval_writes_metrics_and_pictures(tokenizers, labels):
    for name in ("canny", "cls", "palette"):
        metrics = evaluate_tokenizer(tokenizers[name], labels)
        assert 0 < metrics["codebook_usage"] <= 1
        assert (tokenizers[name] / "metrics.json").exists() and (tokenizers[name] / "usage.png").exists()
    assert "iou" in evaluate_tokenizer(tokenizers["canny"], labels)
    assert (tokenizers["canny"] / "reconstructions.png").exists()
    assert "baseline_cosine_mean_vector" in evaluate_tokenizer(tokenizers["cls"], labels)
    assert evaluate_tokenizer(tokenizers["palette"], labels)["exact_round_trip"] == 1.0


@pytest.mark.parametrize("field, kind, fragment", [
    ("dinov2/cls", "spatial", "needs a dense map"),
    ("canny/edges", "vector", "needs a 1-D embedding"),
    ("palette", "spatial", "reads one field"),
    ("depth/depth", "spatial", "has no teacher 'depth'"),
    ("canny/nope", "spatial", "has no field 'nope'"),
])
def test_wrong_field_for_the_kind_is_refused(labels, tmp_path, field, kind, fragment):
    with pytest.raises(UserError, match=fragment):
        train_tokenizer(labels, field, kind, tmp_path / "t", **SMALL)
    assert not (tmp_path / "t").exists()


def test_tokenize_writes_aligned_crops_and_resumes(labels, tokenizers, tmp_path):
    tokens = str(tmp_path / "tokens.zarr")
    result = tokenize(labels, tokens, [str(tokenizers["canny"]), str(tokenizers["cls"])], n_crops=3, workers=1,
                      progress=False)
    assert result.exit_code == 0 and result.units_planned == 3

    store = TokenStore.open(tokens)
    source = LabelStore.open(labels)
    assert list(store.group["keys"][:]) == list(source.keys())
    crops = store.group["crops"][:]
    np.testing.assert_array_equal(crops, make_crops(source.keys(), 64, 3, 0))
    assert (crops[:, 0] == [0, 0, 64, 64, 0]).all()

    canny = load_tokenizer(tokenizers["canny"])
    edges = source.group["canny/edges"][:]
    for c in range(3):  # every crop's tokens are the tokenizer applied to that crop
        np.testing.assert_array_equal(store.group["canny_edges/tokens"][:, c],
                                      canny.encode({"edges": edges}, crops[:, c]))
    cls_tokens = store.group["dinov2_cls/tokens"][:]
    assert (cls_tokens[:, 0] == cls_tokens[:, 2]).all()  # a global embedding is the same for every crop
    assert store.group["canny_edges/tokens"].dtype == np.uint16
    assert store.group["canny_edges/ok"][:].all()

    again = tokenize(labels, tokens, [str(tokenizers["canny"]), str(tokenizers["cls"])], workers=1,
                     progress=False)
    assert again.units_planned == 0
    added = tokenize(labels, tokens, [str(tokenizers["canny"]), str(tokenizers["palette"])], workers=1,
                     progress=False)
    assert added.units_planned == 3 and TokenStore.open(tokens).done_units("palette").all()
    assert TokenStore.open(tokens).status()["modalities"]["palette"]["samples_ok"] == 24


def test_tokenize_refuses_mismatches(labels, tokenizers, tmp_path, corpus):
    tokens = str(tmp_path / "tokens.zarr")
    tokenize(labels, tokens, [str(tokenizers["canny"])], n_crops=2, workers=1, progress=False)
    with pytest.raises(UserError, match="crops per sample"):
        tokenize(labels, tokens, [str(tokenizers["canny"])], n_crops=3, workers=1, progress=False)
    with pytest.raises(UserError, match="not a tokenizer directory"):
        tokenize(labels, tokens, [str(tmp_path)], workers=1, progress=False)

    other = str(tmp_path / "other.zarr")  # a store without canny
    label(str(corpus), other, ["rgb"], workers=1, unit_size=8, view_size=64, progress=False)
    with pytest.raises(UserError, match="has no teacher 'canny'"):
        tokenize(other, str(tmp_path / "t2.zarr"), [str(tokenizers["canny"])], workers=1, progress=False)
    rgb_tokenizer = str(train_tokenizer(other, "rgb/image", "spatial", tmp_path / "rgb-tok", **SMALL))
    with pytest.raises(UserError, match="was made from"):
        tokenize(other, tokens, [rgb_tokenizer], workers=1, progress=False)
    big = str(tmp_path / "big.zarr")  # same field, other shape: view 96 instead of 64
    label(str(corpus), big, ["canny"], workers=1, unit_size=8, view_size=96, progress=False)
    with pytest.raises(UserError, match="trained on"):
        tokenize(big, str(tmp_path / "t3.zarr"), [str(tokenizers["canny"])], workers=1, progress=False)
    assert not (tmp_path / "t3.zarr").exists()
