"""Value modes, crops and quantizers of the spatial and vector tokenizers, on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnimill.tokenize import values as V
from omnimill.tokenize.base import TokenizerConfig
from omnimill.tokenize.crops import crop_boxes, crop_dense, crop_points, make_crops
from omnimill.tokenize.quantizer import Quantizer, fsq_levels
from omnimill.tokenize.spatial import SpatialTokenizer
from omnimill.tokenize.vector import VectorTokenizer

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("field, dtype, shape, mode", [
    ("image", "uint8", (64, 64, 3), "image"),
    ("disparity", "float16", (64, 64), "continuous"),
    ("patches", "float16", (16, 16, 32), "continuous"),
    ("normals", "float16", (64, 64, 3), "unit"),
    ("edges", "bool", (64, 64), "binary"),
    ("classes", "uint16", (64, 64), "classes"),
])
def test_mode_follows_dtype_shape_and_name(field, dtype, shape, mode):
    assert V.infer_mode(field, dtype, shape) == mode


def test_normalisation_round_trips_for_continuous_and_image_values():
    x = RNG.normal(3.0, 2.0, (8, 16, 16, 4)).astype(np.float32)
    norm = V.fit("continuous", x, "features")
    t = V.to_target(x, norm)
    assert abs(float(t.mean())) < 0.1 and abs(float(t.std()) - 1) < 0.1
    np.testing.assert_allclose(V.from_output(t, norm), x, rtol=1e-4, atol=1e-4)
    image = RNG.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    norm = V.fit("image", image, "image")
    np.testing.assert_array_equal(V.from_output(V.to_target(image, norm), norm), image)


def test_depth_is_standardised_per_image():
    depth = np.stack([np.full((8, 8), 1.0), np.full((8, 8), 100.0)]) + RNG.normal(0, 0.1, (2, 8, 8))
    norm = V.fit("continuous", depth.astype(np.float32), "disparity")
    t = V.to_target(depth.astype(np.float32), norm)
    assert norm["per_image"] and np.allclose(t.mean(dim=(1, 2, 3)).numpy(), 0, atol=1e-3)


def test_crops_are_deterministic_per_key_and_inside_the_view():
    a = make_crops(["x", "y", "z"], 100, 5, seed=3)
    b = make_crops(["z", "x"], 100, 5, seed=3)
    np.testing.assert_array_equal(a[0], b[1])  # depends on the key, not the order
    assert not np.array_equal(a, make_crops(["x", "y", "z"], 100, 5, seed=4))
    top, left, h, w = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    assert (h == w).all() and (h >= 50).all() and (top + h <= 100).all() and (left + w <= 100).all()
    assert (a[:, 0] == [0, 0, 100, 100, 0]).all()


def test_crop_dense_cuts_the_right_region_and_mirrors():
    ramp = np.tile(np.arange(8, dtype=np.float32), (1, 8, 1))  # value = x
    out = crop_dense(ramp, np.array([[0, 4, 4, 4, 0]]), view_size=8, size=4, mode="nearest")
    np.testing.assert_array_equal(out[0, 0], [4, 5, 6, 7])
    flipped = crop_dense(ramp, np.array([[0, 4, 4, 4, 1]]), view_size=8, size=4, mode="nearest")
    np.testing.assert_array_equal(flipped[0, 0], [7, 6, 5, 4])
    grid = crop_dense(np.tile(np.arange(4, dtype=np.float32), (1, 4, 1)), np.array([[0, 4, 4, 4, 0]]), 8, 2,
                      "nearest")  # a 4 x 4 grid over an 8 px view: crop coordinates scale by 4 / 8
    np.testing.assert_array_equal(grid[0, 0], [2, 3])


def test_points_and_boxes_move_into_the_crop():
    xy, inside = crop_points(np.array([[60.0, 20.0], [10.0, 10.0]]), (0, 50, 50, 50, 0))
    np.testing.assert_allclose(xy[0], [0.2, 0.4])
    assert inside.tolist() == [True, False]
    xy, _ = crop_points(np.array([[60.0, 20.0]]), (0, 50, 50, 50, 1))
    np.testing.assert_allclose(xy[0], [0.8, 0.4])
    boxes, keep = crop_boxes(np.array([[40.0, 0, 60, 10], [0, 0, 10, 10]]), (0, 50, 50, 50, 0))
    np.testing.assert_allclose(boxes[0], [0, 0, 0.2, 0.2])
    assert keep.tolist() == [True, False]


@pytest.mark.parametrize("vocab, codes", [(256, 240), (1024, 1000), (4096, 4375), (16384, 15360)])
def test_fsq_levels_follow_the_paper(vocab, codes):
    assert int(np.prod(fsq_levels(vocab))) == codes


@pytest.mark.parametrize("kind", ["fsq", "vq"])
def test_quantizer_indices_map_back_to_codes(kind):
    torch.manual_seed(0)
    q = Quantizer(8, 64, kind)
    z = torch.randn(2, 300, 8)
    q(z)  # a training step: VQ initialises its codebook by k-means and updates it by EMA
    q.eval()  # encoding: the codebook stays put
    codes, indices, _ = q(z)
    assert indices.shape == (2, 300) and int(indices.max()) < q.vocab_size
    torch.testing.assert_close(q.indices_to_codes(indices), codes, atol=1e-5, rtol=1e-5)


def spatial(mode: str, sample, **norm_kw) -> SpatialTokenizer:
    norm = V.fit(mode, sample, "normals" if mode == "unit" else "x", **norm_kw)
    config = TokenizerConfig("spatial", "t", ["x"], normalization=norm,
                             options=dict(view_size=32, input_size=16, grid=4, width=16, vocab=256,
                                          sample_shape=list(sample.shape[1:])))
    return SpatialTokenizer(config)


def test_class_maps_and_normals_go_through_the_spatial_tokenizer():
    classes = RNG.integers(0, 5, (3, 32, 32)).astype(np.uint16)
    tok = spatial("classes", classes, n_classes=5)
    tokens = tok.encode({"x": classes})
    assert tokens.shape == (3, 16) and tokens.max() < tok.vocab_size == 240
    decoded = tok.decode(tokens)["x"]
    assert decoded.shape == (3, 16, 16) and decoded.max() < 5

    normals = RNG.normal(size=(2, 32, 32, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    tok = spatial("unit", normals)
    decoded = tok.decode(tok.encode({"x": normals}))["x"]
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=-1), 1, atol=1e-4)
    whole = np.array([[0, 0, 32, 32, 0]] * 2)
    mirrored = np.array([[0, 0, 32, 32, 1]] * 2)
    a, b = tok.target({"x": normals}, whole).numpy(), tok.target({"x": normals}, mirrored).numpy()
    np.testing.assert_allclose(b[:, 0], -a[:, 0, :, ::-1], atol=1e-5)  # mirroring flips the normals' x
    np.testing.assert_allclose(b[:, 1], a[:, 1, :, ::-1], atol=1e-5)


def test_wrong_shape_is_refused_before_encoding():
    from omnimill.errors import UserError

    tok = spatial("binary", RNG.random((2, 32, 32)) > 0.5)
    with pytest.raises(UserError, match="expects samples of shape"):
        tok.encode({"x": np.zeros((2, 48, 48), bool)})
    config = TokenizerConfig("vector", "t", ["v"], normalization={"mean": [0.0] * 8, "std": [1.0] * 8},
                             options={"sample_shape": [8], "n_tokens": 2, "hidden": 16})
    with pytest.raises(UserError, match="expects vectors"):
        VectorTokenizer(config).encode({"v": np.zeros((2, 9), np.float32)})


def test_shrinking_an_edge_map_keeps_thin_edges():
    edges = np.zeros((1, 64, 64), np.float32)
    edges[0, :, 33] = 1  # a one-pixel vertical line
    out = crop_dense(edges, np.array([[0, 0, 64, 64, 0]]), 64, 8, mode="max")
    assert out[0, :, 4].all() and out.sum() == 8  # every cell the line crosses is on, no other
    assert crop_dense(edges, np.array([[0, 0, 64, 64, 0]]), 64, 8, mode="nearest").sum() == 0  # why "max"
