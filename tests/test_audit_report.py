"""omnimill.audit.report and the renderers of every teacher, checked as pictures and in a real headless Chromium.

The store: photos labelled by the real engine (rgb, metadata, palette, canny, tiny DINOv2), plus one group
per teacher of the zoo (sam, depth, normals, semseg, detection, pose, clip, captioner, caption_embed) written
through LabelStore as the engine writes them, with label arrays made by hand so each picture can be
checked: a known instance map, a stick figure with two low-confidence joints, named classes, named boxes.

The HTML report is opened in Debian's Chromium (/usr/bin/chromium), driven over the DevTools protocol
(`websocket-client`, tests/chromium.py): the page loads, every <img> decoded (complete, naturalWidth > 0), no exception or
console error; a full-page screenshot is kept next to the report in the test's tmp dir.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from chromium import open_in_chromium
from conftest import write_images
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from typer.testing import CliRunner

from omnimill.audit import report as report_module
from omnimill.audit.index import build_index
from omnimill.audit.query import query
from omnimill.audit.render import (COCO_SKELETON, Tile, generic, render_sample, sample_tiles, tile_png)
from omnimill.audit.report import report_html, write_report
from omnimill.cli import app
from omnimill.labelers.base import Field
from omnimill.store.labels import LabelStore

S = 64  # view size
CLASS_NAMES = ["wall", "building", "sky", "floor", "tree", "grass", "road", "water", "car", "person"]
ID2LABEL = {"0": "person", "1": "bicycle", "2": "car", "3": "dog"}
LOW_JOINTS = (9, 16)  # left wrist, right ankle: below the drawing threshold


# ---------------------------------------------------------------------------- hand-made labels
def _disc(cx, cy, r):
    y, x = np.mgrid[0:S, 0:S]
    return (x - cx) ** 2 + (y - cy) ** 2 < r * r


def _stick_figure() -> np.ndarray:
    """17 COCO keypoints (x, y) of a person standing in the middle of the view."""
    return np.array([[32, 8], [30, 6], [34, 6], [28, 7], [36, 7],  # nose, eyes, ears
                     [26, 16], [38, 16], [22, 26], [42, 26], [20, 36], [44, 36],  # shoulders, elbows, wrists
                     [28, 36], [36, 36], [27, 48], [37, 48], [27, 60], [37, 60]], np.float32)  # hips, knees, ankles


def zoo(n: int, has_caption: np.ndarray) -> dict[str, tuple[list[Field], dict, dict]]:
    """teacher -> (fields, outputs for n samples, provenance), shaped as the zoo's teachers declare them."""
    rng = np.random.default_rng(0)
    instances = np.zeros((S, S), np.uint16)
    instances[_disc(18, 18, 10)] = 1
    instances[40:60, 30:60] = 2
    instances[_disc(50, 14, 8)] = 3
    edges = np.zeros((S, S), bool)
    edges[:, 1:] |= instances[:, 1:] != instances[:, :-1]
    edges[1:, :] |= instances[1:, :] != instances[:-1, :]
    boxes = np.zeros((8, 4), np.float32)
    boxes[:3] = [[8, 8, 28, 28], [30, 40, 60, 60], [42, 6, 58, 22]]
    y, x = np.mgrid[0:S, 0:S] / S
    disparity = (1 - y + 0.3 * _disc(20, 40, 12)).astype(np.float16)
    nz = np.sqrt(np.clip(1 - (x - 0.5) ** 2 - (y - 0.5) ** 2, 0, 1))
    normals = np.stack([x - 0.5, y - 0.5, nz], -1)
    normals = (normals / np.linalg.norm(normals, axis=-1, keepdims=True)).astype(np.float16)
    classes = np.where(y < 0.4, 2, 5).astype(np.uint16)  # sky over grass
    classes[_disc(32, 40, 9)] = 9  # a person
    det_boxes = np.zeros((10, 4), np.float32)
    det_boxes[:2] = [[20, 2, 46, 62], [2, 44, 18, 60]]
    det_classes = np.full(10, -1, np.int32)
    det_classes[:2] = [0, 3]
    det_scores = np.zeros(10, np.float32)
    det_scores[:2] = [0.93, 0.61]
    keypoints = np.zeros((3, 17, 2), np.float32)
    keypoints[0] = _stick_figure()
    keypoint_scores = np.zeros((3, 17), np.float32)
    keypoint_scores[0] = 0.9
    keypoint_scores[0, list(LOW_JOINTS)] = 0.1
    unit = lambda v: (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    clip_image, clip_text = unit(rng.standard_normal((n, 16))), unit(rng.standard_normal((n, 16)))
    sentence = unit(rng.standard_normal((n, 24))) * has_caption[:, None]

    def repeat(a):
        return np.repeat(a[None], n, axis=0)

    def teacher(name, fields, outputs, config=None):
        provenance = {"teacher": name, "spec": name, "config": config or {},
                      "fields": {f.name: {"shape": list(f.shape), "dtype": f.dtype} for f in fields}}
        return fields, outputs, provenance

    return {
        "sam": teacher("sam", [Field("instances", (S, S), "uint16", True), Field("boxes", (8, 4), "float32"),
                               Field("scores", (8,), "float32"), Field("areas", (8,), "int32"),
                               Field("count", (), "int32"), Field("edges", (S, S), "bool", True)],
                       {"instances": repeat(instances), "boxes": repeat(boxes),
                        "scores": repeat(np.array([0.97, 0.9, 0.8, 0, 0, 0, 0, 0], np.float32)),
                        "areas": repeat(np.bincount(instances.ravel(), minlength=9)[1:9].astype(np.int32)),
                        "count": np.full(n, 3, np.int32), "edges": repeat(edges)}),
        "depth": teacher("depth", [Field("disparity", (S, S), "float16", True)], {"disparity": repeat(disparity)},
                         {"output": "disparity"}),
        "normals": teacher("normals", [Field("normals", (S, S, 3), "float16", True)], {"normals": repeat(normals)}),
        "semseg": teacher("semseg", [Field("classes", (S, S), "uint16", True)], {"classes": repeat(classes)},
                          {"class_names": CLASS_NAMES}),
        "detection": teacher("detection", [Field("boxes", (10, 4), "float32"), Field("classes", (10,), "int32"),
                                           Field("scores", (10,), "float32"), Field("count", (), "int32"),
                                           Field("person_class", (), "int32")],
                             {"boxes": repeat(det_boxes), "classes": repeat(det_classes),
                              "scores": repeat(det_scores), "count": np.full(n, 2, np.int32),
                              "person_class": np.zeros(n, np.int32)}, {"id2label": ID2LABEL}),
        "pose": teacher("pose", [Field("keypoints", (3, 17, 2), "float32"),
                                 Field("keypoint_scores", (3, 17), "float32"),
                                 Field("boxes", (3, 4), "float32"), Field("count", (), "int32")],
                        {"keypoints": repeat(keypoints), "keypoint_scores": repeat(keypoint_scores),
                         "boxes": repeat(np.array([[18, 2, 46, 62], [0] * 4, [0] * 4], np.float32)),
                         "count": np.ones(n, np.int32)}),
        "clip": teacher("clip", [Field("embedding", (16,), "float32"), Field("patches", (7, 7, 24), "float16", True),
                                 Field("text_embedding", (16,), "float32"), Field("has_text", (), "bool")],
                        {"embedding": clip_image, "patches": rng.standard_normal((n, 7, 7, 24)).astype(np.float16),
                         "text_embedding": clip_text * has_caption[:, None], "has_text": has_caption}),
        "captioner": teacher("captioner", [Field("captions", (4,), "str"), Field("count", (), "int32")],
                           {"captions": np.array([["a colourful abstract picture", "round shapes on a gradient",
                                                   "", ""]] * n, dtype=object), "count": np.full(n, 2, np.int32)}),
        "caption_embed": teacher("caption_embed", [Field("embedding", (24,), "float32"), Field("has_text", (), "bool")],
                                 {"embedding": sentence, "has_text": has_caption}),
    }


def add_teacher(labels: LabelStore, name: str, fields, outputs, provenance) -> None:
    """Write a teacher's labels unit by unit, as the engine does; samples the engine could not decode fail here too."""
    labels.prepare_teacher(name, fields, provenance)
    for u, marker in enumerate(labels.markers("rgb")):
        unit = labels.unit(u)
        errors = [e for e in marker["errors"] if e["stage"] == "decode"]  # the engine's own error records
        ok = ~np.isin(np.arange(unit.start, unit.stop), [e["index"] for e in errors])
        labels.write_unit(name, unit, {f: v[unit.start:unit.stop] for f, v in outputs.items()}, ok,
                          {"unit": u, "ok": int(ok.sum()), "failed": len(errors), "errors": errors})


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_dinov2) -> Path:
    from omnimill.engine.label import label

    root = tmp_path_factory.mktemp("report") / "corpus"
    write_images(root, 8)
    (root / "img0002.txt").write_text("a <b>bold</b> & 'quoted' caption\n")  # must come out escaped
    (root / "bad_text.jpg").write_text("not a picture\n")
    path = root.parent / "labels.zarr"
    label(str(root), str(path), ["rgb", "metadata", "palette", "canny", f"dinov2={tiny_dinov2}"], workers=1,
          unit_size=4, view_size=S, progress=False)
    labels = LabelStore.open(str(path), "r+")
    has_caption = np.array([bool(c) for c in labels.group["caption"][:]])
    for name, (fields, outputs, provenance) in zoo(labels.n, has_caption).items():
        add_teacher(labels, name, fields, outputs, provenance)
    return path


@pytest.fixture(scope="module")
def index(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "dinov2"
    build_index(str(store), "dinov2/cls", out)
    return out


def _tiles(store, key):
    labels = LabelStore.open(str(store))
    return labels, sample_tiles(labels, labels.index_of(key))


def _draw(tile: Tile):
    figure = Figure(figsize=(3, 3))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    tile.draw(ax)
    figure.canvas.draw()
    return ax


# ---------------------------------------------------------------------------- renderers
def test_every_teacher_gets_its_own_pictures_in_order(store):
    _, tiles = _tiles(store, "img0002")
    heads = [t.title.split(" · ")[0] for t in tiles]
    assert heads == ["rgb", "canny", "canny over rgb", "sam", "sam", "depth", "normals", "semseg", "detection",
                     "pose", "dinov2", "clip", "clip", "palette", "captioner", "caption_embed", "metadata"]
    titles = "\n".join(t.title for t in tiles)
    for expected in ("sam · 3 instances, best IoU 0.97", "sam · edges",
                     "depth · relative inverse depth (bright = near)", "normals · RGB = (n + 1) / 2",
                     "semseg · 3 classes", "detection · 2 boxes", "pose · 1 people", "clip · 7×7×24 patches",
                     "clip · embedding (16)\ncos(image, caption) = ", "captioner · 2 generated",
                     "caption_embed · caption embedding (24)"):
        assert expected in titles
    caption = next(t for t in tiles if t.title.startswith("captioner ·"))
    assert "a colourful abstract picture" in caption.text and "round shapes" in caption.text
    _, plain = _tiles(store, "img0003")  # no corpus caption: nothing was embedded, and the tile says so
    assert any(t.title.startswith("caption_embed") and "no caption" in t.text for t in plain)
    assert any(t.title.startswith("clip · embedding") and "no caption" in t.title for t in plain)


def test_sam_instances_are_painted_over_the_view(store):
    labels, tiles = _tiles(store, "img0001")
    view = labels.group["rgb/image"][labels.index_of("img0001")]
    sam = next(t for t in tiles if t.title.startswith("sam · 3"))
    picture = _draw(sam).images[0].get_array()
    inside, outside = _disc(18, 18, 6), np.zeros((S, S), bool)
    outside[30:36, 2:8] = True  # no instance there
    assert np.abs(picture[inside] - view[inside] / 255.0).mean() > 0.05  # coloured
    assert np.allclose(picture[outside], view[outside] / 255.0, atol=1e-6)  # the view itself
    assert (picture[4:8, 18] == 1.0).all() or picture.max() == 1.0  # white instance boundaries


def test_pose_skeleton_leaves_out_low_confidence_joints(store):
    _, tiles = _tiles(store, "img0001")
    ax = _draw(next(t for t in tiles if t.title.startswith("pose")))
    limbs = [a for a in COCO_SKELETON if not set(a) & set(LOW_JOINTS)]
    assert len(ax.lines) == len(limbs) == len(COCO_SKELETON) - 2
    assert len(ax.collections[0].get_offsets()) == 17 - len(LOW_JOINTS)  # the joints drawn as dots
    assert len(ax.patches) == 1  # the person's (dashed) box


def test_segmentation_and_detection_are_named(store):
    _, tiles = _tiles(store, "img0001")
    semseg = _draw(next(t for t in tiles if t.title.startswith("semseg")))
    legend = [t.get_text() for t in semseg.get_legend().get_texts()]
    assert [name.split(" ")[0] for name in legend] == ["grass", "sky", "person"]  # largest first
    detection = _draw(next(t for t in tiles if t.title.startswith("detection")))
    assert [t.get_text() for t in detection.texts] == ["person 0.93", "dog 0.61"] and len(detection.patches) == 2


def test_depth_and_normals_pictures(store):
    _, tiles = _tiles(store, "img0001")
    depth = _draw(next(t for t in tiles if t.title.startswith("depth")))
    assert depth.images[0].get_cmap().name == "inferno" and len(depth.figure.axes) == 2  # + colour bar
    normals = _draw(next(t for t in tiles if t.title.startswith("normals"))).images[0].get_array()
    assert normals.min() >= 0 and normals.max() <= 1 and normals[32, 32, 2] == pytest.approx(1.0, abs=0.01)


def test_renamed_or_extra_fields_fall_back_to_generic_tiles():
    from omnimill.audit.render import RENDERERS, Sample

    sample = Sample("k", 0, S, {"config": {}})
    renamed = RENDERERS["depth"]("depth", {"zmap": np.ones((S, S), np.float32)}, sample)
    assert [t.title.split(" ")[0] for t in renamed] == ["depth/zmap"]
    no_count = RENDERERS["detection"]("detection", {"boxes": np.zeros((4, 4), np.float32),
                                                     "classes": np.zeros(4, np.int32)}, sample)
    assert sorted(t.title.split(" ")[0] for t in no_count) == ["detection/boxes", "detection/classes"]
    extra = RENDERERS["normals"]("normals", {"normals": np.ones((S, S, 3), np.float16),
                                             "confidence": np.ones((S, S), np.float32)}, sample)
    assert [t.title.split(" · ")[0] for t in extra] == ["normals", "normals/confidence"]
    assert generic("t", {}, sample) == []
    for tile in renamed + no_count + extra:
        assert tile_png(tile).startswith(b"\x89PNG")  # and they draw without a view (grey canvas)


def test_show_panel_with_every_teacher(store, tmp_path):
    out = render_sample(str(store), "img0002", tmp_path / "panel.png")
    with Image.open(out) as image:
        assert image.size[0] >= 1000 and image.size[1] >= 1200  # 17 tiles: 5 rows of 4
    labels, failed = _tiles(store, "bad_text")
    assert len(failed) == 1 and len(failed[0].title.split(", ")) == 14  # every teacher failed alike


# ---------------------------------------------------------------------------- HTML report
def test_report_renders_in_chromium(store, index, tmp_path):
    result = query(index, key="img0002", k=3)
    page = write_report(result, tmp_path / "report" / "img0002.html")
    labels = LabelStore.open(str(store))
    expected = sum(len(sample_tiles(labels, i)) for i in [result.index] + [n.index for n in result.neighbours])
    shot = tmp_path / "report" / "img0002.png"  # kept for people to look at
    seen = open_in_chromium(page, shot)
    assert seen["errors"] == [] and seen["title"].startswith("omnimill audit · neighbours of img0002")
    assert len(seen["images"]) == expected > 50  # 4 samples x ~17 tiles, all of them
    assert all(image["ok"] and image["width"] > 100 for image in seen["images"]), \
        [i["alt"] for i in seen["images"] if not i["ok"]]
    with Image.open(shot) as picture:
        assert picture.size[0] >= 1000 and picture.size[1] > 2000
        assert np.asarray(picture.convert("L")).std() > 20  # pictures, not a blank page


def test_report_contents_and_escaping(store, index):
    labels = LabelStore.open(str(store))
    result = query(index, key="img0002", k=2)
    page = report_html(result, labels)
    assert page.count("<section id=") == 3 and "href='#n1'" in page and "href='#n2'" in page
    assert "a &lt;b&gt;bold&lt;/b&gt; &amp; &#x27;quoted&#x27; caption" in page and "<b>bold</b>" not in page
    # neighbours without a corpus caption show the captioner's, marked as generated
    assert all(n.caption == "a colourful abstract picture (generated)" for n in result.neighbours)
    for n in result.neighbours:
        assert f"<code>{n.key}</code> · cosine {n.score:.4f} · distance {n.distance:.4f}" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    for title in ("sam · 3 instances", "pose · 1 people", "semseg · 3 classes", "depth · relative inverse depth"):
        assert title in page


def test_image_query_report_shows_the_query_picture(store, index, tmp_path):
    result = query(index, image=store.parent / "corpus" / "img0005.jpg", k=2)
    page = report_html(result, LabelStore.open(str(store)))
    assert "canonical view of img0005.jpg" in page and result.neighbours[0].key == "img0005"


def test_a_label_that_cannot_be_drawn_gets_a_tile_saying_why():
    def broken(ax):
        raise ValueError("odd shape")

    png = report_module._tile_png(Tile("weird · field", broken))
    assert png.startswith(b"\x89PNG")


def test_cli_query_html(store, index, tmp_path):
    out = tmp_path / "cli" / "report.html"
    result = CliRunner().invoke(app, ["audit", "query", str(index), "--key", "img0004", "-k", "2", "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "") and out.read_text().count("<figure>") > 30
