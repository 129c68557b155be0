"""omnimill.audit.render: one PNG panel per sample, from a store labelled by the real engine.

One store for the whole module (a LocalCluster start costs ~2 s): 10 good JPEGs, one with a
caption, plus the `bad_` files of the `bad_corpus` fixture that fail to decode.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import bad_files, write_images
from PIL import Image
from typer.testing import CliRunner

from omnimill.audit.render import FAILED_FACE, render_sample, sample_tiles
from omnimill.cli import app
from omnimill.errors import UserError
from omnimill.labelers.base import Field
from omnimill.store.labels import LabelStore

TEACHERS = ["rgb", "metadata", "palette", "canny"]  # + dinov2=<tiny checkpoint>
OMNIMILL = Path(sys.executable).parent / "omnimill"


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_dinov2) -> Path:
    from omnimill.engine.label import label

    root = tmp_path_factory.mktemp("render") / "corpus"
    write_images(root, 10)
    (root / "img0003.txt").write_text("a red ball on grass\n")
    for name, data in bad_files().items():
        if name.startswith("bad_") and name != "bad_bomb.png":  # the bomb is slow to build, and fails alike
            (root / name).write_bytes(data)
    path = root.parent / "labels.zarr"
    result = label(str(root), str(path), TEACHERS + [f"dinov2={tiny_dinov2}"], workers=1, unit_size=8,
                   view_size=64, progress=False)
    assert result.samples_failed == 3 * 5  # three bad files x five teachers
    return path


def _pixels(png: Path) -> np.ndarray:
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


def test_render_sample_draws_every_label(store, tmp_path):
    out = render_sample(str(store), "img0003", tmp_path / "nested" / "img0003.png")
    assert out == tmp_path / "nested" / "img0003.png" and out.exists()
    pixels = _pixels(out)
    height, width, _ = pixels.shape
    assert 600 <= width <= 2000 and 400 <= height <= 1500
    assert pixels.std() > 0
    labels = LabelStore.open(str(store))
    titles = [t.title for t in sample_tiles(labels, labels.index_of("img0003"))]
    assert [t.split(" · ")[0] for t in titles] == ["rgb", "canny", "canny over rgb", "dinov2", "palette", "metadata"]
    assert "|cls| = " in titles[3]
    assert not (pixels == np.array(Image.new("RGB", (1, 1), FAILED_FACE))[0, 0]).all(-1).any()


def test_rgb_tile_shows_the_canonical_view(store, tmp_path):
    labels = LabelStore.open(str(store))
    i = labels.index_of("img0003")
    view = labels.group["rgb/image"][i]
    out = render_sample(store, "img0003", tmp_path / "s.png")  # a Path is fine too
    # The view's mean colour shows up somewhere in the panel (the 64px view is drawn at ~230px).
    pixels = _pixels(out).reshape(-1, 3).astype(int)
    nearest = np.abs(pixels - view.reshape(-1, 3)[0].astype(int)).sum(1).min()
    assert nearest <= 24


def test_failed_sample_gets_a_failed_tile(store, tmp_path):
    labels = LabelStore.open(str(store))
    tiles = sample_tiles(labels, labels.index_of("bad_text"))
    assert len(tiles) == 1  # one decode failure, shared by all five teachers
    assert tiles[0].text.startswith("failed") and "decode" in tiles[0].text and "not an image" in tiles[0].text
    assert set(tiles[0].title.split(", ")) == {"rgb", "metadata", "palette", "canny", "dinov2"}
    out = render_sample(store, "bad_empty", tmp_path / "bad.png")
    pixels = _pixels(out)
    assert pixels.std() > 0
    assert (pixels == np.array(Image.new("RGB", (1, 1), FAILED_FACE))[0, 0]).all(-1).mean() > 0.2


def test_unknown_key_raises_user_error(store, tmp_path):
    with pytest.raises(UserError, match="nope"):
        render_sample(store, "nope", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_audit_show(store, tmp_path):
    out = tmp_path / "cli.png"
    result = CliRunner().invoke(app, ["audit", "show", str(store), "img0000", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    assert _pixels(out).std() > 0


def test_cli_unknown_key_exits_2_with_one_line(store, tmp_path):
    run = subprocess.run([str(OMNIMILL), "audit", "show", str(store), "no_such_key", "--out", str(tmp_path / "x.png")],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_key" in lines[0] and "Traceback" not in run.stderr
    assert not (tmp_path / "x.png").exists()


def test_unknown_teacher_unlabelled_unit_and_no_rgb(store, tmp_path):
    """A teacher with no renderer of its own is drawn by field shape; a unit without marker says so."""
    copy = tmp_path / "labels.zarr"
    shutil.copytree(store, copy)
    labels = LabelStore.open(str(copy), "r+")
    s = labels.view_size
    fields = [Field("depth", (s, s), "float32", dense=True), Field("picture", (s, s, 3), "uint8", dense=True),
              Field("features", (4, 4, 8), "float16"), Field("probs", (10,), "float32"),
              Field("embedding", (100,), "float32"), Field("score", (), "float32"), Field("label", (), "str")]
    provenance = {"teacher": "toy", "config": {}, "fields": {f.name: {"shape": list(f.shape)} for f in fields}}
    labels.prepare_teacher("toy", fields, provenance)
    unit = labels.unit(0)  # label unit 0 only; unit 1 stays without a marker
    n = unit.stop - unit.start
    rng = np.random.default_rng(0)
    outputs = {"depth": rng.random((n, s, s), np.float32), "picture": rng.integers(0, 255, (n, s, s, 3), np.uint8),
               "features": rng.standard_normal((n, 4, 4, 8)).astype(np.float16),
               "probs": rng.random((n, 10), np.float32), "embedding": rng.standard_normal((n, 100)).astype(np.float32),
               "score": rng.random(n, np.float32), "label": np.array(["cat"] * n, dtype=object)}
    labels.write_unit("toy", unit, outputs, np.ones(n, bool), {"unit": 0, "ok": n, "failed": 0, "errors": []})
    del zarr.open_group(str(copy), mode="r+")["_runs/rgb"]  # the store now has no rgb teacher

    labelled = [k for k in labels.keys()[:n] if k.startswith("img")][0]
    tiles = sample_tiles(labels, labels.index_of(labelled))
    titles = [t.title for t in tiles]
    assert titles[0] == "canonical view" and "no rgb teacher" in tiles[0].text
    toy = [t for t in titles if t.startswith("toy")]
    assert [t.split(" ")[0] for t in toy] == ["toy/depth", "toy/picture", "toy/features", "toy/probs",
                                             "toy/embedding", "toy"]
    out = render_sample(copy, labelled, tmp_path / "toy.png")
    assert _pixels(out).std() > 0

    unlabelled = str(labels.keys()[-1])  # in unit 1
    tiles = sample_tiles(labels, labels.index_of(unlabelled))
    assert tiles[-1].title == "toy" and tiles[-1].text.startswith("not labelled yet")
    render_sample(copy, unlabelled, tmp_path / "unlabelled.png")


def test_sam_picture_draws_every_instance_outline_overlaps_included():
    """SAM's picture: the instance map (a pixel shows one instance), and masks64 as outlines (every instance)."""
    import torch
    from matplotlib.figure import Figure

    from omnimill.audit.render import RENDERERS, Sample, colors_for, instance_outlines
    from omnimill.labelers.sam import mask_boxes, masks_in_boxes, paint_instances

    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 0:16, 0:16] = True
    masks[1, 8:24, 8:24] = True  # covers a corner of the first: that corner is gone from the map
    boxes = mask_boxes(masks)
    view = np.full((32, 32, 3), 128, np.uint8)
    fields = {"instances": paint_instances(masks).numpy().astype(np.uint16), "boxes": boxes.numpy(),
              "scores": np.array([0.9, 0.8], np.float32), "count": np.int32(2),
              "masks64": masks_in_boxes(masks, boxes).numpy(), "edges": np.zeros((32, 32), bool)}
    sample = Sample("k", 0, 32, {}, view)
    tiles = RENDERERS["sam"]("sam", fields, sample)
    assert [t.title.split(" (")[0] for t in tiles] == ["sam · 2 instances, best IoU 0.90", "sam · edges",
                                                      "sam · every instance's outline"]
    outlines = instance_outlines(fields["masks64"], fields["boxes"], (32, 32), sample)
    first, second = colors_for(np.array([1, 2]))
    np.testing.assert_allclose(outlines[15, 12], first)  # the first square's edge, under the second square
    np.testing.assert_allclose(outlines[12, 8], second)
    np.testing.assert_allclose(outlines[4, 4], 0.5 * 128 / 255)  # inside: the dimmed view
    figure = Figure()
    for tile in tiles:
        tile.draw(figure.add_subplot(1, 1, 1))
