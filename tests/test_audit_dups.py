"""omnimill.audit.dups: near-duplicate groups on a corpus with real near-duplicates, labelled by the real engine.

Eight photos; four of them also come as a JPEG recompressed at quality 60, a copy shifted by 3 pixels and a
mirrored copy. Both DINOv2s here have random weights (no downloads), so what they can find is limited, and
the tests say exactly what is found:
- `dinov2` (the shared tiny checkpoint, init std 0.02, unseeded): every CLS token points nearly the same way
  (distinct photos reach cosine 0.9999), yet recompressed copies are closer still. Over 12 random inits of
  this architecture on this corpus, recompressed copies stayed within 1 - cos <= 2.0e-5 and distinct photos
  never came closer than 1.1e-4, so at cosine >= 0.99995 (5e-5) each photo groups with its recompressed
  copy and no two photos merge. Shifted (up to 8e-5) and mirrored (up to 1.6e-4) copies may or may not join.
- `dinov2_wide` (the same architecture, init std 0.2, seeded; a DINOv2 subclass plugged in by import path):
  recompressed 2.4e-4 and shifted 3.0e-3 vs distinct photos >= 1.2e-2, so at cosine >= 0.992 each photo
  groups with its recompressed and its shifted copy. Mirrored copies (1.3e-2) are not found: random
  features are not flip-invariant; a trained DINOv2's are far more so.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import photo
from PIL import Image
from typer.testing import CliRunner

from omnimill.audit.dups import UnionFind, find_duplicates
from omnimill.audit.index import build_index
from omnimill.cli import app
from omnimill.errors import UserError
from omnimill.labelers.dinov2 import DINOv2

PHOTOS = 8
COPIED = (0, 2, 5, 7)  # photos that also come as near-duplicates


class DINOv2Wide(DINOv2):
    """DINOv2 stored under another name, so a second checkpoint can label the same store."""

    name = "dinov2_wide"


@pytest.fixture(scope="module")
def wide_dinov2(tmp_path_factory):
    import torch
    from transformers import Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("ckpt") / "wide-dinov2"
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          patch_size=14, image_size=56, initializer_range=0.2)
    Dinov2Model(config).save_pretrained(path)
    return path


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_dinov2, wide_dinov2):
    from omnimill.engine.label import label

    root = tmp_path_factory.mktemp("dups") / "corpus"
    root.mkdir()
    for p in range(PHOTOS):
        wide = photo(p, 100, 72)  # 4 px wider than the originals: room for a shifted copy
        original = wide[:, :96]
        (root / f"p{p}.jpg").write_bytes(_jpeg(original, 95))
        if p in COPIED:
            decoded = np.asarray(Image.open(io.BytesIO(_jpeg(original, 95))))
            (root / f"p{p}_recompressed.jpg").write_bytes(_jpeg(decoded, 60))
            (root / f"p{p}_shifted.jpg").write_bytes(_jpeg(wide[:, 3:99], 95))
            (root / f"p{p}_mirrored.jpg").write_bytes(_jpeg(original[:, ::-1], 95))
    path = root.parent / "labels.zarr"
    result = label(str(root), str(path), ["rgb", f"dinov2={tiny_dinov2}", f"test_audit_dups:DINOv2Wide={wide_dinov2}"],
                   workers=1, unit_size=8, view_size=64, progress=False)
    assert result.samples_failed == 0
    return path


@pytest.fixture(scope="module")
def indexes(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx")
    build_index(str(store), "dinov2/cls", out / "tiny")
    build_index(str(store), "dinov2_wide/cls", out / "wide")
    return out


def _photo_of(key: str) -> str:
    return key.split("_")[0]


def _assert_pure(groups):
    """No group mixes two different photos."""
    for group in groups:
        assert len({_photo_of(k) for k in group.keys}) == 1, group.keys


def test_recompressed_copies_are_found_with_the_shared_tiny_dinov2(indexes):
    groups, info = find_duplicates(indexes / "tiny", threshold=0.99995)
    _assert_pure(groups)
    for p in COPIED:
        assert any({f"p{p}", f"p{p}_recompressed"} <= set(g.keys) for g in groups), (p, [g.keys for g in groups])
    assert info["field"] == "dinov2/cls"


def test_recompressed_and_shifted_copies_are_found_with_a_wider_init(indexes):
    groups, _ = find_duplicates(indexes / "wide", threshold=0.992)
    _assert_pure(groups)
    found = {_photo_of(g.keys[0]): set(g.keys) for g in groups}
    for p in COPIED:
        assert {f"p{p}", f"p{p}_recompressed", f"p{p}_shifted"} <= found.get(f"p{p}", set()), found
    for p in set(range(PHOTOS)) - set(COPIED):
        assert f"p{p}" not in found  # photos without copies stay alone
    assert all(g.min_cosine >= 0.992 for g in groups)
    assert [len(g.keys) for g in groups] == sorted((len(g.keys) for g in groups), reverse=True)


def test_a_low_threshold_merges_everything_and_a_high_one_nothing(indexes):
    everything, info = find_duplicates(indexes / "tiny", threshold=-1.0)
    assert len(everything) == 1 and len(everything[0].keys) == info["n"] == PHOTOS + 3 * len(COPIED)
    assert find_duplicates(indexes / "wide", threshold=1.0)[0] == []


def test_groups_are_transitive(tmp_path):
    """a ~ b and b ~ c (cosine 0.98 each), a and c only 0.92: one group of three at threshold 0.97."""
    from test_audit_index import vector_store

    angle = np.arccos(0.98)
    chain = np.zeros((3, 16), np.float32)
    chain[:, 0], chain[:, 1] = np.cos([0, angle, 2 * angle]), np.sin([0, angle, 2 * angle])
    rng = np.random.default_rng(0)
    others = rng.standard_normal((20, 16)).astype(np.float32)
    others[:, :2] = 0  # orthogonal to the chain, and far from each other in 14 dimensions
    vectors = np.vstack([chain, others])
    store = vector_store(tmp_path / "chain.zarr", vectors)
    build_index(store, "emb/vec", tmp_path / "idx")
    groups, _ = find_duplicates(tmp_path / "idx", threshold=0.97, k=1)  # k = 1: a and c never see each other
    assert groups[0].keys == ["s00000", "s00001", "s00002"] and groups[0].min_cosine == pytest.approx(0.98, abs=1e-4)


def test_union_find():
    links = UnionFind(6)
    links.union(0, 1)
    links.union(4, 5)
    links.union(1, 4)
    assert len({links.find(a) for a in (0, 1, 4, 5)}) == 1 and links.find(2) != links.find(3)


def test_cli_dups(indexes):
    runner = CliRunner()
    text = runner.invoke(app, ["audit", "dups", str(indexes / "wide"), "--threshold", "0.992"])
    assert text.exit_code == 0, text.output
    assert f"{len(COPIED)} groups" in text.output and "p0_recompressed" in text.output
    as_json = runner.invoke(app, ["audit", "dups", str(indexes / "wide"), "--threshold", "0.992", "--json"])
    data = json.loads(as_json.stdout)
    assert data["threshold"] == 0.992 and len(data["groups"]) == len(COPIED)
    assert all(g["size"] == len(g["keys"]) >= 3 for g in data["groups"])
    bad = runner.invoke(app, ["audit", "dups", str(indexes / "wide"), "--threshold", "2"])
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1 and "[-1, 1]" in bad.stderr


def test_bad_threshold_and_k(indexes):
    with pytest.raises(UserError, match="cosine similarity lies in"):
        find_duplicates(indexes / "wide", threshold=1.5)
    with pytest.raises(UserError, match="one neighbour at least"):
        find_duplicates(indexes / "wide", k=0)
