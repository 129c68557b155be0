"""omnimill/labelers/detection.py: DETR-family boxes on the canonical view, from tiny real checkpoints.

The run through the engine (a real Dask cluster and Zarr store) is in test_pose.py, with pose reading these boxes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import jpeg_bytes
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.detection import postprocess
from omnimill.labelers.registry import build
from omnimill.corpus.image import decode_view

SPEC = "omnimill.labelers.detection:Detection"
S = 64  # view size = the tiny detectors' input size, so no resize stands between teacher and reference
LABELS = {0: "person", 1: "car", 2: "dog"}


def tiny_detector(path, model_type: str = "rt_detr_v2", person_bias: float = 0.0):
    """A real detector of `model_type` from a tiny config, random weights, saved as save_pretrained writes it.

    person_bias > 0 tilts every class head towards "person" (class 0), so every query finds a person.
    """
    import transformers as T

    resnet = dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1])
    rt_backbone = dict(model_type="rt_detr_resnet", embedding_size=8, hidden_sizes=[16, 16, 32, 32],
                       depths=[1, 1, 1, 1], out_indices=[2, 3, 4])
    heads = dict(encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                 encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, id2label=LABELS)
    rt = dict(heads, encoder_hidden_dim=16, encoder_in_channels=[16, 32, 32], decoder_in_channels=[16, 16, 16],
              d_model=16)
    config = {
        "rt_detr_v2": lambda: T.RTDetrV2Config(backbone_config=rt_backbone, **rt),
        "rt_detr": lambda: T.RTDetrConfig(backbone_config=rt_backbone, **rt),
        "d_fine": lambda: T.DFineConfig(backbone_config=dict(
            model_type="hgnet_v2", stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 32, 32],
            stage_mid_channels=[8, 8, 16, 16], stage_out_channels=[16, 32, 32, 32], stage_num_blocks=[1, 1, 1, 1],
            stage_downsample=[False, True, True, True], stage_light_block=[False, False, True, True],
            stage_kernel_size=[3, 3, 5, 5], stage_numb_of_layers=[1, 1, 1, 1], hidden_sizes=[16, 32, 32, 32],
            out_indices=[2, 3, 4]), **dict(rt, encoder_in_channels=[32, 32, 32])),
        "detr": lambda: T.DetrConfig(use_timm_backbone=False, backbone_config=dict(resnet, out_features=["stage4"]),
                                     d_model=32, **heads),
        "conditional_detr": lambda: T.ConditionalDetrConfig(
            use_timm_backbone=False, backbone_config=dict(resnet, out_features=["stage4"]), d_model=32, **heads),
        "deformable_detr": lambda: T.DeformableDetrConfig(
            use_timm_backbone=False, backbone_config=dict(resnet, out_features=["stage2", "stage3", "stage4"]),
            d_model=32, num_feature_levels=3, **heads),
        "yolos": lambda: T.YolosConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, image_size=[S, S], num_detection_tokens=10,
                                       id2label=LABELS),
    }[model_type]()
    torch.manual_seed(0)
    model = T.AutoModelForObjectDetection.from_config(config)
    if person_bias:
        with torch.no_grad():
            for layer in model.modules():  # every class head: logits of person up, of the rest down
                if isinstance(layer, torch.nn.Linear) and layer.out_features == len(LABELS):
                    layer.bias.fill_(-person_bias)
                    layer.bias[0] = person_bias
    model.save_pretrained(path)
    if model_type.startswith("rt_detr") or model_type == "d_fine":
        T.RTDetrImageProcessor(size={"height": S, "width": S}).save_pretrained(path)  # as the hub ships them
    return path


@pytest.fixture(scope="module")
def rtdetr(tmp_path_factory):
    return tiny_detector(tmp_path_factory.mktemp("ckpt") / "tiny-rtdetr-v2")


@pytest.fixture(scope="module")
def views():
    return np.stack([decode_view(jpeg_bytes(i, (96, 72)), S).view for i in range(3)])


def load(path, view_size: int = S, dtype: str = "float32", **options):
    teacher = build(TeacherSpec(SPEC, str(path), options), view_size)
    teacher.load("cpu", dtype)
    return teacher


def run(teacher, views, upstream=None) -> dict:
    return teacher(Batch(views, [None] * len(views), [f"k{i}" for i in range(len(views))], upstream or {}))


# ---------------------------------------------------------------- post-processing on hand-made outputs


def test_sigmoid_scores_rank_every_query_class_pair():
    # 3 queries x 2 classes; sigmoid: q0c0 .881, q2c1 .731, q1c1 .622, q2c0 .500, q0c1 = q1c0 .007
    logits = torch.tensor([[[2.0, -5.0], [-5.0, 0.5], [0.0, 1.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.2, 0.2, 0.2], [0.95, 0.5, 0.2, 0.2]]])
    out = {k: v.numpy() for k, v in postprocess(logits, boxes, 2, view_size=100, k=8, threshold=0.3).items()}
    assert out["count"].tolist() == [4]
    assert out["classes"][0].tolist() == [0, 1, 1, 0, -1, -1, -1, -1]
    np.testing.assert_allclose(out["scores"][0, :4], 1 / (1 + np.exp(-np.array([2.0, 1.0, 0.5, 0.0]))), rtol=1e-6)
    assert (out["scores"][0, 4:] == 0).all() and (out["boxes"][0, 4:] == 0).all()
    np.testing.assert_allclose(out["boxes"][0, :4], [[40, 30, 60, 70],   # q0: centre (50, 50), 20 x 40
                                                     [85, 40, 100, 60],  # q2 reaches x = 105: cut at the view's edge
                                                     [0, 10, 20, 30],    # q1
                                                     [85, 40, 100, 60]], atol=1e-4)  # q2 again, other class


def test_softmax_scores_drop_the_no_object_class():
    # DETR: 2 classes + "no object" last; query 1 is mostly "no object", so its best real class scores low
    logits = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 1.0, 5.0]]])
    boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    out = {k: v.numpy() for k, v in postprocess(logits, boxes, 2, view_size=64, k=5, threshold=0.3).items()}
    p0 = np.exp(3.0) / (np.exp(3.0) + 2)
    assert out["count"].tolist() == [1] and out["classes"][0].tolist() == [0, -1, -1, -1, -1]
    assert out["scores"][0, 0] == pytest.approx(p0, rel=1e-6) and (out["scores"][0, 1:] == 0).all()
    np.testing.assert_allclose(out["boxes"][0, 0], [0, 0, 32, 32], atol=1e-5)
    low = postprocess(logits, boxes, 2, view_size=64, k=5, threshold=0.01)  # e / (1 + e + e^5) = 0.018 passes
    assert low["count"].tolist() == [2] and low["classes"][0, :2].tolist() == [0, 1]


def test_postprocess_of_a_batch_equals_one_image_at_a_time():
    g = torch.Generator().manual_seed(0)
    logits, boxes = torch.randn(4, 30, 5, generator=g) - 1.5, torch.rand(4, 30, 4, generator=g)
    batched = postprocess(logits, boxes, 5, view_size=S, k=20, threshold=0.5)
    for i in range(4):
        single = postprocess(logits[i:i + 1], boxes[i:i + 1], 5, view_size=S, k=20, threshold=0.5)
        for name in batched:
            assert torch.equal(batched[name][i], single[name][0]), name
    assert (batched["count"] > 0).all() and (batched["count"] < 20).any()  # some images padded, none empty


# ---------------------------------------------------------------- the teacher on tiny real checkpoints


def test_fields_config_and_provenance(rtdetr):
    teacher = load(rtdetr)
    fields = {f.name: (f.shape, f.dtype) for f in teacher.fields()}
    assert fields == {"boxes": ((100, 4), "float32"), "classes": ((100,), "int32"), "scores": ((100,), "float32"),
                      "count": ((), "int32"), "person_class": ((), "int32")}
    assert [f.kind for f in teacher.fields()] == ["boxes", "classes", "scores", "count", "scalar"]
    assert teacher.serializer == "detection" and teacher.provenance()["fields"]["boxes"]["kind"] == "boxes"
    assert teacher.name == "detection" and teacher.default_checkpoint == "PekingU/rtdetr_v2_r50vd"
    assert teacher.image_size == S  # from the checkpoint's preprocessor_config.json
    assert teacher.normalisation() == ((0, 0, 0), (1, 1, 1))  # RT-DETR sees plain 0..1 pixels
    info = teacher.provenance()
    assert info["config"]["id2label"] == {"0": "person", "1": "car", "2": "dog"}
    assert info["config"]["person_class"] == 0 and info["config"]["model_type"] == "rt_detr_v2"
    assert info["config"]["threshold"] == 0.3 and len(info["checkpoint_sha256"]) == 64


def test_matches_transformers_post_processing(rtdetr, views):
    from transformers import RTDetrImageProcessor, RTDetrV2ForObjectDetection

    teacher = load(rtdetr, max_detections=10)  # transformers keeps the best num_queries = 10 pairs
    out = run(teacher, views)
    assert all(np.array_equal(v, w) for v, w in zip(out.values(), run(teacher, views).values()))  # deterministic
    assert out["person_class"].tolist() == [0, 0, 0] and (out["count"] > 0).all()

    model = RTDetrV2ForObjectDetection.from_pretrained(rtdetr).eval()
    with torch.no_grad():
        raw = model(pixel_values=torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255)
    reference = RTDetrImageProcessor.from_pretrained(rtdetr).post_process_object_detection(
        raw, threshold=0.3, target_sizes=[(S, S)] * len(views))
    for i, ref in enumerate(reference):
        n = len(ref["scores"])
        assert out["count"][i] == n
        np.testing.assert_allclose(out["scores"][i, :n], ref["scores"].numpy(), rtol=1e-5)
        assert out["classes"][i, :n].tolist() == ref["labels"].tolist()
        np.testing.assert_allclose(out["boxes"][i, :n], ref["boxes"].clamp(0, S).numpy(), atol=1e-4)
        assert (out["classes"][i, n:] == -1).all() and (out["boxes"][i, n:] == 0).all()


def test_detr_softmax_family_matches_transformers(tmp_path, views):
    from transformers import DetrForObjectDetection, DetrImageProcessor

    path = tiny_detector(tmp_path / "detr", "detr")
    teacher = load(path, threshold=0.2)
    assert teacher.image_size == 640 and teacher.normalisation()[0] == (0.485, 0.456, 0.406)  # no preprocessor
    teacher.image_size = S  # compare on the view itself, without a resize between the two
    out = run(teacher, views)
    model = DetrForObjectDetection.from_pretrained(path).eval()
    x = (torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255 - teacher.mean) / teacher.std
    with torch.no_grad():
        raw = model(pixel_values=x)
    reference = DetrImageProcessor().post_process_object_detection(raw, threshold=0.2, target_sizes=[(S, S)] * 3)
    for i, ref in enumerate(reference):
        order = ref["scores"].argsort(descending=True)  # DETR's processor keeps query order; ours is by score
        n = len(order)
        assert out["count"][i] == n > 0
        np.testing.assert_allclose(out["scores"][i, :n], ref["scores"][order].numpy(), rtol=1e-5)
        assert out["classes"][i, :n].tolist() == ref["labels"][order].tolist()
        np.testing.assert_allclose(out["boxes"][i, :n], ref["boxes"][order].clamp(0, S).numpy(), atol=1e-4)


@pytest.mark.parametrize("model_type", ["rt_detr", "d_fine", "conditional_detr", "deformable_detr", "yolos"])
def test_every_supported_family_loads_and_labels(model_type, tmp_path, views):
    teacher = load(tiny_detector(tmp_path / model_type, model_type), image_size=S)
    out = run(teacher, views[:2])
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "boxes": ((2, 100, 4), np.float32), "classes": ((2, 100), np.int32), "scores": ((2, 100), np.float32),
        "count": ((2,), np.int32), "person_class": ((2,), np.int32)}
    for i in range(2):
        n = out["count"][i]
        assert np.isfinite(out["boxes"][i]).all() and (out["boxes"][i] >= 0).all() and (out["boxes"][i] <= S).all()
        assert (out["scores"][i, :n] > 0.3).all() and (np.diff(out["scores"][i, :n]) <= 0).all()
        assert set(out["classes"][i, :n].tolist()) <= {0, 1, 2} and (out["classes"][i, n:] == -1).all()


def test_a_small_view_is_resized_to_the_input_and_boxes_come_back_in_view_pixels(rtdetr, views):
    from transformers import RTDetrV2ForObjectDetection

    small = views[:, ::2, ::2].copy()  # 32-pixel views; the detector still sees 64 x 64
    teacher = load(rtdetr, view_size=S // 2, max_detections=10)
    out = run(teacher, small)
    with torch.no_grad():
        raw = RTDetrV2ForObjectDetection.from_pretrained(rtdetr).eval()(pixel_values=teacher.pixels(small, S))
    assert teacher.pixels(small, S).shape == (3, 3, S, S)
    cx, cy, w, h = (raw.pred_boxes * (S // 2)).unbind(-1)  # fractions of the input = fractions of the view
    expected = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0, S // 2).numpy()
    pairs = raw.logits.sigmoid().flatten(1).topk(10).indices // len(LABELS)  # query of each kept pair
    for i in range(3):
        n = out["count"][i]
        np.testing.assert_allclose(out["boxes"][i, :n], expected[i, pairs[i, :n].numpy()], atol=1e-4)
    assert out["boxes"].max() <= S // 2


def test_bfloat16_gives_float32_outputs(rtdetr, views):
    out16, out32 = run(load(rtdetr, dtype="bfloat16"), views), run(load(rtdetr), views)
    assert out16["boxes"].dtype == np.float32 and out16["scores"].dtype == np.float32
    assert np.abs(out16["scores"][:, 0] - out32["scores"][:, 0]).max() < 0.05  # the best score barely moves


def test_wrong_checkpoints_say_what_to_do(tmp_path):
    from transformers import DetrConfig, VitPoseConfig, VitPoseForPoseEstimation

    pose = tmp_path / "vitpose"
    VitPoseForPoseEstimation(VitPoseConfig(backbone_config=dict(
        model_type="vitpose_backbone", image_size=[32, 24], patch_size=[8, 8], hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, out_indices=[1]))).save_pretrained(pose)
    with pytest.raises(UserError, match="not a loadable DETR-family detector checkpoint.*vitpose"):
        build(TeacherSpec(SPEC, str(pose)), S)
    with pytest.raises(UserError, match="does not exist"):
        build(TeacherSpec(SPEC, str(tmp_path / "nothing-here")), S)
    with pytest.raises(UserError, match="could not be fetched"):  # a hub id, offline in tests
        build(TeacherSpec(SPEC, "nobody/no-such-detector"), S)
    timm = tmp_path / "detr-timm"
    DetrConfig().save_pretrained(timm)  # facebook/detr-resnet-50's config: a timm ResNet-50 backbone
    with pytest.raises(UserError, match="pip install timm"):
        build(TeacherSpec(SPEC, str(timm)), S)


def test_fixed_anchors_refuse_another_input_size(rtdetr, tmp_path):
    import json
    import shutil

    path = tmp_path / "anchored"
    shutil.copytree(rtdetr, path)
    config = json.loads((path / "config.json").read_text())
    config["anchor_image_size"] = [S, S]  # RT-DETR can precompute its anchors for one input size
    (path / "config.json").write_text(json.dumps(config))
    assert build(TeacherSpec(SPEC, str(path)), S).image_size == S
    with pytest.raises(UserError, match=r"anchors for \[64, 64\] inputs; image_size 128"):
        build(TeacherSpec(SPEC, str(path), {"image_size": 128}), S)
