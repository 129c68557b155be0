"""omnimill/labelers/pose.py: ViTPose keypoints of detected people, from tiny real checkpoints; and detection +
pose end to end through the engine (a real Dask cluster writing a real Zarr store)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from conftest import jpeg_bytes
from omnimill.engine.label import EXIT_OK, label
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.pose import crop, decode, person_regions
from omnimill.labelers.registry import build
from omnimill.corpus.image import decode_view
from omnimill.corpus.listing import index_corpus
from test_detection import tiny_detector

SPEC = "omnimill.labelers.pose:Pose"
S = 64
CROP = (32, 24)  # the tiny ViTPose's input (H, W), 3:4 like the real 256 x 192; heatmaps 16 x 12


@pytest.fixture(scope="module")
def vitpose(tmp_path_factory):
    """A real VitPoseForPoseEstimation from a tiny config with random weights, and its image processor."""
    from transformers import VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    path = tmp_path_factory.mktemp("ckpt") / "tiny-vitpose"
    torch.manual_seed(0)
    config = VitPoseConfig(num_labels=17, backbone_config=dict(
        model_type="vitpose_backbone", image_size=list(CROP), patch_size=[8, 8], hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, mlp_ratio=2, out_indices=[2]))
    VitPoseForPoseEstimation(config).save_pretrained(path)
    VitPoseImageProcessor(size={"height": CROP[0], "width": CROP[1]}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def views():
    return np.stack([decode_view(jpeg_bytes(i, (96, 72)), S).view for i in range(3)])


def load(path, view_size: int = S, dtype: str = "float32", **options):
    teacher = build(TeacherSpec(SPEC, str(path), options), view_size)
    teacher.load("cpu", dtype)
    return teacher


def detections(rows: list[list[tuple]], person_class: int = 0, k: int = 8) -> dict:
    """A detection teacher's output from (class, x0, y0, x1, y1) tuples per image, best first."""
    n = len(rows)
    out = {"boxes": np.zeros((n, k, 4), np.float32), "classes": np.full((n, k), -1, np.int32),
           "scores": np.zeros((n, k), np.float32), "count": np.array([len(r) for r in rows], np.int32),
           "person_class": np.full(n, person_class, np.int32)}
    for i, row in enumerate(rows):
        for j, (c, *box) in enumerate(row):
            out["boxes"][i, j], out["classes"][i, j], out["scores"][i, j] = box, c, 0.9 - 0.1 * j
    return out


def run(teacher, views, detection: dict) -> dict:
    return teacher(Batch(views, [None] * len(views), [f"k{i}" for i in range(len(views))],
                         {"detection": detection}))


def gaussian(h: int, w: int, x: float, y: float, sigma: float = 1.5) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)


# ---------------------------------------------------------------- crop and decode


def test_person_regions_follow_vitpose_box_convention():
    from transformers.models.vitpose.image_processing_vitpose import box_to_center_and_scale

    boxes = torch.tensor([[10.0, 20, 40, 60], [0, 0, 80, 20], [5, 5, 15, 45]])  # 3:4, wide, tall
    centres, sizes = person_regions(boxes, (256, 192))
    # 30 x 40 is already 3:4 -> grown by 1.25; 80 x 20 -> height 80 * 4/3; 10 x 40 -> width 40 * 3/4
    np.testing.assert_allclose(sizes.numpy(), np.array([[30, 40], [80, 80 * 4 / 3], [30, 40]]) * 1.25, rtol=1e-6)
    np.testing.assert_allclose(centres.numpy(), [[25, 40], [40, 10], [10, 25]])
    for box, centre, size in zip(boxes.tolist(), centres, sizes):  # transformers' (x, y, w, h) boxes, scale / 200
        ref_centre, ref_scale = box_to_center_and_scale([box[0], box[1], box[2] - box[0], box[3] - box[1]], 192, 256)
        np.testing.assert_allclose(centre.numpy(), ref_centre, rtol=1e-6)
        np.testing.assert_allclose(size.numpy(), ref_scale * 200, rtol=1e-5)


def test_crop_samples_the_region_edge_to_edge():
    # a view whose pixels hold their own coordinates: bilinear sampling of it returns the sampled point exactly
    side = 64
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    view = torch.from_numpy(np.stack([xx, yy, np.zeros_like(xx)]))[None]  # (1, 3, S, S)
    centres, sizes = torch.tensor([[30.0, 25.0]]), torch.tensor([[23.0, 31.0]])
    out = crop(view, centres, sizes, (32, 24))[0]  # (3, 32, 24)
    u, v = np.arange(24), np.arange(32)
    np.testing.assert_allclose(out[0, 0].numpy(), 30 - 11.5 + u * 23 / 23, atol=1e-4)  # first column at x0
    np.testing.assert_allclose(out[1, :, 0].numpy(), 25 - 15.5 + v * 31 / 31, atol=1e-4)  # last row at y1
    # outside the view: zeros (a region hanging over the left edge)
    out = crop(view + 1, torch.tensor([[0.0, 30.0]]), torch.tensor([[23.0, 31.0]]), (32, 24))[0]
    assert (out[:, :, :11] == 0).all() and (out[0, :, 12:] > 0).all()


def test_crop_matches_transformers_vitpose_processor(vitpose, views):
    from transformers import VitPoseImageProcessor

    teacher = load(vitpose)
    boxes = torch.tensor([[20.0, 14, 44, 46], [24, 20, 40, 44]])  # regions well inside the view
    centres, sizes = person_regions(boxes, CROP)
    x = torch.from_numpy(views[:2]).permute(0, 3, 1, 2).float() / 255
    ours = (crop(x, centres, sizes, CROP) - teacher.mean) / teacher.std
    coco = [[[20, 14, 24, 32]], [[24, 20, 16, 24]]]  # the same boxes as (x, y, w, h)
    theirs = VitPoseImageProcessor.from_pretrained(vitpose)(list(views[:2]), boxes=coco, return_tensors="pt")
    # transformers warps the uint8 image and rounds: half a grey level, / std 0.225 after normalising
    np.testing.assert_allclose(ours.numpy(), theirs.pixel_values.numpy(), atol=0.5 / 255 / 0.224 + 1e-4)


def test_decode_finds_a_peak_exactly_in_view_pixels():
    h, w = 64, 48
    heatmaps = torch.from_numpy(np.stack([gaussian(h, w, 30, 20), gaussian(h, w, 5, 50)]))[None]  # (1, 2, h, w)
    centres, sizes = torch.tensor([[100.0, 200.0]]), torch.tensor([[47.0, 63.0]])  # 1 view pixel per heatmap pixel
    keypoints, scores = decode(heatmaps, centres, sizes)
    # heatmap (30, 20) -> region's left edge 100 - 23.5 plus 30, top 200 - 31.5 plus 20
    np.testing.assert_allclose(keypoints[0, 0].numpy(), [106.5, 188.5], atol=1e-4)
    np.testing.assert_allclose(keypoints[0, 1].numpy(), [76.5 + 5, 168.5 + 50], atol=1e-4)
    np.testing.assert_allclose(scores.numpy(), [[1.0, 1.0]], atol=1e-6)

    sizes = torch.tensor([[94.0, 63.0]])  # 2 view pixels per heatmap pixel across
    keypoints, _ = decode(heatmaps, centres, sizes)
    assert keypoints[0, 0, 0].item() == pytest.approx(100 - 47 + 60, abs=1e-4)


def test_decode_refines_to_the_sub_pixel_peak():
    h, w = 64, 48
    heatmaps = torch.from_numpy(gaussian(h, w, 30.3, 20.6, sigma=2.0))[None, None]
    keypoints, _ = decode(heatmaps, torch.tensor([[23.5, 31.5]]), torch.tensor([[47.0, 63.0]]))
    x, y = keypoints[0, 0].tolist()  # region 0..47 x 0..63: view pixels = heatmap pixels
    assert abs(x - 30.3) < 0.05 and abs(y - 20.6) < 0.05  # the argmax alone is off by 0.3 and 0.4


def test_decode_matches_transformers_post_processing():
    from transformers import VitPoseImageProcessor
    from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

    rng = np.random.default_rng(0)
    h, w = 64, 48
    maps = np.stack([np.stack([gaussian(h, w, *rng.uniform(2, 45, 2), sigma=rng.uniform(1, 3)) *
                               rng.uniform(0.2, 1) + rng.uniform(0, 0.05, (h, w)) for _ in range(17)])
                     for _ in range(3)]).astype(np.float32)
    boxes = [[[10.0, 20.0, 30.0, 50.0], [0.0, 0.0, 64.0, 64.0]], [[40.0, 5.0, 10.0, 30.0]]]  # (x, y, w, h)
    reference = VitPoseImageProcessor().post_process_pose_estimation(
        VitPoseEstimatorOutput(heatmaps=torch.from_numpy(maps)), boxes=boxes)
    xyxy = torch.tensor([[x, y, x + bw, y + bh] for image in boxes for x, y, bw, bh in image])
    centres, sizes = person_regions(xyxy, (256, 192))
    keypoints, scores = decode(torch.from_numpy(maps), centres, sizes)
    expected = [person for image in reference for person in image]
    np.testing.assert_allclose(keypoints.numpy(), np.stack([p["keypoints"].numpy() for p in expected]), atol=1e-3)
    np.testing.assert_allclose(scores.numpy(), np.stack([p["scores"].numpy() for p in expected]), atol=1e-6)


# ---------------------------------------------------------------- the teacher on a tiny real checkpoint


def test_fields_config_and_wrong_checkpoint(vitpose, tmp_path):
    teacher = load(vitpose)
    assert teacher.name == "pose" and teacher.requires == ("detection",)
    assert teacher.default_checkpoint == "usyd-community/vitpose-base-simple"
    fields = {f.name: (f.shape, f.dtype) for f in teacher.fields()}
    assert fields == {"keypoints": ((20, 17, 2), "float32"), "keypoint_scores": ((20, 17), "float32"),
                      "boxes": ((20, 4), "float32"), "count": ((), "int32")}
    assert [f.kind for f in teacher.fields()] == ["keypoints", "scores", "boxes", "count"]
    assert teacher.serializer == "pose" and teacher.renderer == "pose"
    info = teacher.provenance()
    assert info["config"]["crop"] == [32, 24] and len(info["config"]["keypoints"]) == 17
    assert info["config"]["model_type"] == "vitpose" and len(info["checkpoint_sha256"]) == 64

    detector = tiny_detector(tmp_path / "detector")
    with pytest.raises(UserError, match="not a loadable ViTPose checkpoint.*rt_detr_v2"):
        build(TeacherSpec(SPEC, str(detector)), S)
    with pytest.raises(UserError, match="does not exist"):
        build(TeacherSpec(SPEC, str(tmp_path / "missing")), S)


def test_people_are_the_person_detections_best_first(vitpose, views):
    teacher = load(vitpose, max_people=2)
    det = detections([[(0, 10, 10, 30, 50), (1, 0, 0, 64, 64), (0, 30, 5, 60, 60), (0, 1, 1, 20, 20)],
                      [(2, 5, 5, 20, 20)],  # a dog: nobody to label
                      []])
    det["boxes"][0, 5] = [1, 2, 3, 4]  # past the count: not a detection, whatever its class
    det["classes"][0, 5] = 0
    out = run(teacher, views, det)
    assert out["count"].tolist() == [2, 0, 0]
    np.testing.assert_array_equal(out["boxes"][0], [[10, 10, 30, 50], [30, 5, 60, 60]])  # 2 of 3 persons, best
    assert (out["keypoints"][1:] == 0).all() and (out["keypoint_scores"][1:] == 0).all()
    assert np.isfinite(out["keypoints"][0]).all() and (out["keypoint_scores"][0] != 0).all()

    other = load(vitpose, person_class=2)  # another label set's "person", given as an option
    assert run(other, views, det)["count"].tolist() == [0, 1, 0]
    nobody = detections([[(0, 10, 10, 30, 50)]] * 3, person_class=-1)  # a detector without a person class
    assert run(teacher, views, nobody)["count"].tolist() == [0, 0, 0]


def test_keypoints_equal_vitpose_on_the_same_crops(vitpose, views):
    from transformers import VitPoseForPoseEstimation

    teacher = load(vitpose)
    det = detections([[(0, 10, 12, 30, 50), (0, 20, 5, 60, 30)], [(0, 15, 15, 40, 45)], []])
    out = run(teacher, views, det)
    assert out["count"].tolist() == [2, 1, 0]
    assert all(np.array_equal(a, b) for a, b in zip(out.values(), run(teacher, views, det).values()))

    boxes = torch.tensor([[10.0, 12, 30, 50], [20, 5, 60, 30], [15, 15, 40, 45]])
    centres, sizes = person_regions(boxes, CROP)
    x = torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255
    pixels = (crop(x[[0, 0, 1]], centres, sizes, CROP) - teacher.mean) / teacher.std
    with torch.no_grad():
        heatmaps = VitPoseForPoseEstimation.from_pretrained(vitpose).eval()(pixel_values=pixels).heatmaps
    assert heatmaps.shape == (3, 17, 16, 12)
    keypoints, scores = decode(heatmaps, centres, sizes)
    np.testing.assert_allclose(out["keypoints"][[0, 0, 1], [0, 1, 0]], keypoints.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["keypoint_scores"][[0, 0, 1], [0, 1, 0]], scores.numpy(), atol=1e-5)
    # each keypoint lies in its person's region (the crop) mapped back to view pixels, give or take the one
    # heatmap pixel DARK may move it on these random (peakless) heatmaps
    pixel = sizes / torch.tensor([12 - 1, 16 - 1])
    lo, hi = (centres - sizes / 2 - pixel)[:, None], (centres + sizes / 2 + pixel)[:, None]
    assert ((keypoints >= lo - 1e-3) & (keypoints <= hi + 1e-3)).all()


def test_bfloat16_gives_float32_outputs(vitpose, views):
    det = detections([[(0, 10, 12, 30, 50)], [(0, 15, 15, 40, 45)], []])
    out16, out32 = run(load(vitpose, dtype="bfloat16"), views, det), run(load(vitpose), views, det)
    assert out16["keypoints"].dtype == np.float32 and out16["keypoint_scores"].dtype == np.float32
    assert out16["count"].tolist() == out32["count"].tolist() == [1, 1, 0]
    assert np.abs(out16["keypoint_scores"] - out32["keypoint_scores"]).max() < 0.1


# ---------------------------------------------------------------- detection + pose through the engine


def test_engine_runs_detection_then_pose_and_stores_what_the_teachers_give(corpus, vitpose, tmp_path):
    detector = tiny_detector(tmp_path / "detector", person_bias=4.0)  # every query finds a person
    store = tmp_path / "labels.zarr"
    specs = [f"{SPEC}={vitpose}", f"omnimill.labelers.detection:Detection={detector}"]  # the engine orders them
    result = label(str(corpus), str(store), specs, workers=1, unit_size=8, view_size=S, progress=False)
    assert result.exit_code == EXIT_OK

    group = zarr.open_group(str(store), mode="r")  # plain zarr from here on
    assert group["detection/ok"][:].all() and group["pose/ok"][:].all()
    assert group["pose/keypoints"].shape == (20, 20, 17, 2) and group["pose/keypoints"].dtype == np.float32
    assert group["pose/count"].dtype == np.int32 and group["detection/boxes"].shape == (20, 100, 4)
    count = group["pose/count"][:]
    assert (count == 10).all()  # 10 queries, all "person", all kept
    np.testing.assert_array_equal(group["pose/boxes"][:, :10], group["detection/boxes"][:, :10])

    sources = index_corpus(str(corpus)).sources
    rows = [0, 9, 19]
    views = np.stack([decode_view(open(sources[i], "rb").read(), S).view for i in rows])
    detection = build(TeacherSpec.parse(specs[1]), S)
    detection.load("cpu", "float32")
    det = detection(Batch(views, [None] * 3, ["a", "b", "c"]))
    for name, value in det.items():
        np.testing.assert_allclose(group[f"detection/{name}"][rows], value, atol=1e-4, err_msg=name)
    pose = run(load(vitpose), views, det)
    for name, value in pose.items():
        np.testing.assert_allclose(group[f"pose/{name}"][rows], value, atol=1e-3, err_msg=name)
