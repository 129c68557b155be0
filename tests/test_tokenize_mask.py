"""The mask tokenizer (tokenize/mask.py) and the sam_instances sequence (serialize.py), on a real label store.

A test teacher draws simple shapes with numpy (ellipses, triangles, rings, rectangles, overlapping one another)
and stores them as the SAM teacher does: boxes, scores, count, and each mask in its box at 64 x 64 (masks64,
made by the SAM teacher's own masks_in_boxes). The engine labels a small corpus with it; the tokenizer trains
on the store's instances, is evaluated on the held-out ones, and the sequence of instances goes round trip.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
from conftest import write_images

from omnimill.errors import UserError
from omnimill.labelers.base import Batch, Field, Teacher
from omnimill.labelers.sam import mask_boxes, masks_in_boxes, paste_in_boxes
from omnimill.tokenize.mask import (crop_instances, evaluate_mask_tokenizer, instance_pool, load_mask_tokenizer,
                                    mask_iou)
from omnimill.tokenize.train import train_tokenizer

TEACHER = "test_tokenize_mask:Shapes"
K = 6  # instances per sample at most
S = 64  # view size
SMALL = dict(steps=150, batch_size=32, width=8, lr=3e-3, warmup=10, progress=False, holdout=0.25, threads=1)


def draw_shapes(rng, side: int, n: int) -> np.ndarray:
    """(n, side, side) bool: random ellipses, triangles, rings and rectangles, free to overlap."""
    yy, xx = np.mgrid[:side, :side] + 0.5
    masks = np.zeros((n, side, side), bool)
    for j in range(n):
        h, w = rng.uniform(0.2, 0.6, 2) * side
        cy, cx = rng.uniform(h / 2, side - h / 2), rng.uniform(w / 2, side - w / 2)
        u, v = (xx - cx) / (w / 2), (yy - cy) / (h / 2)  # -1..1 across the shape's box
        shape = j % 4 if rng.random() < 0.8 else rng.integers(4)
        if shape == 0:
            masks[j] = u ** 2 + v ** 2 <= 1
        elif shape == 1:  # a triangle, pointing up or down
            masks[j] = (np.abs(v) <= 1) & (np.abs(u) <= (1 + v * rng.choice([-1, 1])) / 2)
        elif shape == 2:
            masks[j] = (u ** 2 + v ** 2 <= 1) & (u ** 2 + v ** 2 >= 0.3)
        else:
            masks[j] = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    return masks


class Shapes(Teacher):
    """Stand-in for SAM: the same instance fields, with shapes drawn per key (so the same sample, same shapes)."""

    name = "shapes"
    serializer = "sam"

    def fields(self):
        return [Field("boxes", (K, 4), "float32", doc="x0, y0, x1, y1 in view pixels", kind="boxes"),
                Field("scores", (K,), "float32", doc="1", kind="scores"),
                Field("count", (), "int32", doc="instances", kind="count"),
                Field("masks64", (K, 64, 64), "bool", doc="each mask in its box", kind="instance_masks")]

    def __call__(self, batch: Batch):
        n, s = len(batch), self.view_size
        out = {"boxes": np.zeros((n, K, 4), np.float32), "scores": np.zeros((n, K), np.float32),
               "count": np.zeros(n, np.int32), "masks64": np.zeros((n, K, 64, 64), bool)}
        for i, key in enumerate(batch.keys):
            rng = np.random.default_rng(zlib.crc32(key.encode()))
            c = int(rng.integers(2, K + 1))
            masks = torch.from_numpy(draw_shapes(rng, s, c))
            boxes = mask_boxes(masks)
            out["count"][i], out["scores"][i, :c] = c, 1.0
            out["boxes"][i, :c] = boxes.numpy()
            out["masks64"][i, :c] = masks_in_boxes(masks, boxes).numpy()
        return out


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> str:
    from omnimill.engine.label import label

    root = tmp_path_factory.mktemp("shapes")
    write_images(root / "corpus", 48, size=(64, 64))
    store = str(root / "labels.zarr")
    result = label(str(root / "corpus"), store, [TEACHER], workers=1, unit_size=16, view_size=S, progress=False)
    assert result.exit_code == 0
    return store


@pytest.fixture(scope="module")
def mask_tokenizer(labels, tmp_path_factory):
    torch.manual_seed(0)
    return train_tokenizer(labels, "shapes/masks64", "mask", tmp_path_factory.mktemp("mask") / "tok", **SMALL)


def test_instance_pool_takes_only_real_instances(labels):
    from omnimill.tokenize.data import open_field

    source = open_field(labels, "shapes/masks64")
    rows = np.arange(10)
    pool = instance_pool(source, rows)
    counts = source.store.read("shapes/count", rows)
    assert len(pool) == counts.sum() and pool.any((1, 2)).all()  # padding rows (empty) are not data
    assert len(instance_pool(source, rows, limit=5)) == 5


def test_mask_tokenizer_directory_and_shapes(mask_tokenizer, labels):
    names = {p.name for p in mask_tokenizer.iterdir()}
    assert {"config.json", "model.safetensors", "train_log.json", "curve.png"} <= names
    config = json.loads((mask_tokenizer / "config.json").read_text())
    assert config["kind"] == "mask" and config["fields"] == ["masks64"] and config["vocab_size"] == 1000
    assert config["tokens_per_sample"] == K * 16 and config["options"]["grid"] == 4
    tok = load_mask_tokenizer(mask_tokenizer)
    masks = draw_shapes(np.random.default_rng(1), 64, 5)
    tokens = tok.encode_masks(masks)
    assert tokens.shape == (5, 16) and tokens.dtype == np.int32 and 0 <= tokens.min() and tokens.max() < 1000
    assert tok.decode_masks(tokens).shape == (5, 64, 64)
    from omnimill.store.labels import LabelStore

    values = LabelStore.open(labels).outputs("shapes", slice(0, 3), ["masks64"])
    per_sample = tok.encode(values)  # the Tokenizer interface: every row of K
    assert per_sample.shape == (3, K * 16)
    flipped = tok.encode(values, np.array([[0, 0, S, S, 1]] * 3))
    np.testing.assert_array_equal(flipped, tok.encode({"masks64": values["masks64"][..., ::-1]}))
    assert tok.decode(per_sample)["masks64"].shape == (3, K, 64, 64)


def test_round_trip_beats_the_box_filled_mask(mask_tokenizer, labels):
    metrics = evaluate_mask_tokenizer(mask_tokenizer, labels)
    assert metrics["heldout_instances"] > 10
    # ellipses, triangles and rings fill ~50-80% of their box: the box alone scores that; the tokens do better
    assert metrics["mask_iou"] > metrics["baseline_iou_box_filled"] + 0.05, metrics
    assert 0 < metrics["codebook_usage"] <= 1 and metrics["perplexity"] > 1
    for name in ("metrics.json", "reconstructions.png", "usage.png"):
        assert (mask_tokenizer / name).stat().st_size > 0
    assert json.loads((mask_tokenizer / "metrics.json").read_text())["mask_iou"] == metrics["mask_iou"]


def test_a_field_that_is_no_instance_mask_is_refused(labels, tmp_path):
    with pytest.raises(UserError, match=r"\(K, m, m\) bool"):
        train_tokenizer(labels, "shapes/boxes", "mask", tmp_path / "t", **SMALL)
    with pytest.raises(UserError, match="--kind mask"):
        train_tokenizer(labels, "shapes/masks64", "spatial", tmp_path / "s", **SMALL)
    with pytest.raises(UserError, match="not a mask tokenizer"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "config.json").write_text(json.dumps({"format": "omnimill.tokenizer/1",
                                                                    "kind": "vector"}))
        load_mask_tokenizer(tmp_path / "other")


# ---------------------------------------------------------------------- crops


def test_crop_instances_cuts_masks_with_their_boxes():
    masks = np.zeros((3, 20, 20), bool)
    masks[0] = True  # a rectangle: fills its box
    masks[1, :, :10] = True  # the left half of its box
    boxes = np.array([[10, 10, 30, 30], [0, 0, 40, 40], [50, 50, 60, 60]], np.float32)
    framed, cut, keep = crop_instances(boxes, masks, (0, 20, 40, 40, 0))  # the crop: x 20..60, y 0..40
    assert keep.tolist() == [True, True, False]  # the third box lies below the crop
    np.testing.assert_allclose(framed[0], [0, 0.25, 0.25, 0.75])  # x 20..30, y 10..30 of a 40 px crop
    assert cut[0].all()  # still filled
    assert not cut[1].any()  # its left half (x 0..20) is cut away: nothing of it is left in x 20..40
    framed, cut, keep = crop_instances(boxes, masks, (0, 0, 40, 40, 1))  # whole box 1 inside, mirrored
    np.testing.assert_array_equal(cut[1], masks[1][:, ::-1])
    np.testing.assert_allclose(framed[1], [0, 0, 1, 1])
    framed, cut, _ = crop_instances(boxes, masks, (0, 0, 40, 20, 0))  # x 0..20: the left half of box 1
    assert cut[1].all()


# ---------------------------------------------------------------------- the sequence of instances


def test_sam_instances_sequence_round_trip(mask_tokenizer, labels, tmp_path):
    from omnimill.store.labels import LabelStore
    from omnimill.tokenize.base import load_tokenizer
    from omnimill.tokenize.crops import make_crops

    out = train_tokenizer(labels, "shapes", "sequence", tmp_path / "seq", progress=False, holdout=0.25,
                          serializer={"structure": "sam_instances", "mask_tokenizer": str(mask_tokenizer)})
    tok = load_tokenizer(out)
    o = tok.config.options
    assert tok.config.fields == ["boxes", "masks64", "count"] and tok.tokens_per_sample == 256
    assert o["structure"] == "sam_instances" and o["mask_tokens"] == 16 and o["mask_vocab"] == 1000
    assert tok.config.options["train_samples"] <= 64  # configure reads shapes only

    store = LabelStore.open(labels)
    rows = slice(0, 12)
    values = store.outputs("shapes", rows, ["boxes", "masks64", "count"])
    crops = make_crops(store.keys()[rows], S, 2)[:, 1]
    for crop_set in (None, crops):
        tokens = tok.encode(values, crop_set)
        assert tokens.shape == (12, 256)
        decoded = tok.decode(tokens)
        expected = tok.quantize(values, crop_set)
        for f in ("boxes", "masks64", "count"):
            np.testing.assert_array_equal(decoded[f], expected[f], err_msg=f)
    decoded = tok.decode(tok.encode(values))  # whole views: every instance comes back, largest first
    np.testing.assert_array_equal(decoded["count"], values["count"])
    ious = []
    for i in range(12):
        n = int(values["count"][i])
        area = (values["boxes"][i, :n, 2] - values["boxes"][i, :n, 0]) * (values["boxes"][i, :n, 3]
                                                                          - values["boxes"][i, :n, 1])
        order = np.argsort(-area, kind="stable")
        np.testing.assert_allclose(decoded["boxes"][i, :n] * S, values["boxes"][i, order], atol=S / 999)
        ious += mask_iou(decoded["masks64"][i, :n], values["masks64"][i, order]).tolist()
        views = paste_in_boxes(decoded["masks64"][i, :n], decoded["boxes"][i, :n] * S, S, S)
        assert views.any((1, 2)).all()  # each instance whole on the view, overlapping ones included
    assert np.mean(ious) > 0.6


def test_sam_instances_needs_its_mask_tokenizer(labels, mask_tokenizer, tmp_path):
    with pytest.raises(UserError, match="mask_tokenizer"):
        train_tokenizer(labels, "shapes", "sequence", tmp_path / "a", progress=False,
                        serializer={"structure": "sam_instances"})
    import shutil

    copy = tmp_path / "mask"
    shutil.copytree(mask_tokenizer, copy)
    out = train_tokenizer(labels, "shapes", "sequence", tmp_path / "b", progress=False,
                          serializer={"structure": "sam_instances", "mask_tokenizer": str(copy)})
    config = json.loads((copy / "config.json").read_text())
    config["options"]["seed"] = 7  # a retrained mask tokenizer in the same place
    (copy / "config.json").write_text(json.dumps(config))
    from omnimill.store.labels import LabelStore
    from omnimill.tokenize.base import load_tokenizer

    values = LabelStore.open(labels).outputs("shapes", slice(0, 2), ["boxes", "masks64", "count"])
    with pytest.raises(UserError, match="changed"):
        load_tokenizer(out).encode(values)


def test_the_cli_evaluates_tokenizes_and_serializes_with_a_mask_tokenizer(mask_tokenizer, labels, tmp_path):
    """What a user types: eval gives mask IoU, tokenize writes the (N, crops, K x 16) modality, and a sequence
    tokenizer of instances takes its serializer settings with --option."""
    import json

    from conftest import invoke
    from omnimill.store.tokens import TokenStore

    evaluated = invoke("tokenizer", "eval", str(mask_tokenizer), labels)
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((mask_tokenizer / "metrics.json").read_text())
    assert metrics["mask_iou"] > metrics["baseline_iou_box_filled"]

    tokens = tmp_path / "tokens.zarr"
    done = invoke("tokenize", labels, str(tokens), "--tokenizer", str(mask_tokenizer), "--crops", "2", "--workers", "1")
    assert done.exit_code == 0, done.output
    store = TokenStore.open(str(tokens))
    (modality,) = store.parts()
    shape, _ = store.array_info(f"{modality}/tokens")
    assert shape[1] == 2 and shape[2] == load_mask_tokenizer(mask_tokenizer).tokens_per_sample

    seq = tmp_path / "seq"
    trained = invoke("tokenizer", "train", labels, "--field", "shapes", "--kind", "sequence", "--out", str(seq),
                     "--option", "structure=sam_instances", "--option", f"mask_tokenizer={mask_tokenizer}",
                     "--no-progress")
    assert trained.exit_code == 0, trained.output
    assert json.loads((seq / "config.json").read_text())["options"]["structure"] == "sam_instances"
    wrong = invoke("tokenizer", "train", labels, "--field", "shapes/masks64", "--kind", "mask", "--out",
                   str(tmp_path / "x"), "--option", "structure=sam_instances")
    assert wrong.exit_code == 2 and "sequence" in wrong.output and not (tmp_path / "x").exists()
