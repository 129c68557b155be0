"""omnimill/labelers/depth.py: Depth Anything and DPT, real tiny models saved as users' checkpoints are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from conftest import jpeg_bytes

from omnimill.engine.label import EXIT_OK, label
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.registry import build
from omnimill.corpus.image import decode_view
from omnimill.corpus.listing import index_corpus

SPEC = "omnimill.labelers.depth:Depth"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def depth_anything(path, metric: bool = False):
    """A real DepthAnythingForDepthEstimation (DINOv2 backbone, 56 = 4 patches of 14) and its processor."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=14, image_size=56,
                            out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, initializer_range=0.15,  # 0.02: all ~1e-7
                                 depth_estimation_type="metric" if metric else "relative", max_depth=20)
    DepthAnythingForDepthEstimation(config).save_pretrained(path)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      image_mean=list(IMAGENET[0]), image_std=list(IMAGENET[1])).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_da(tmp_path_factory):
    return depth_anything(tmp_path_factory.mktemp("ckpt") / "tiny-depth-anything")


@pytest.fixture(scope="module")
def tiny_dpt(tmp_path_factory):
    """A MiDaS-style DPTForDepthEstimation (ViT, 64 = 4 patches of 16) with DPT's 0.5/0.5 normalisation."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-dpt"
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
                       patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
                       fusion_hidden_size=16, initializer_range=0.15)
    DPTForDepthEstimation(config).save_pretrained(path)
    DPTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)  # mean = std = 0.5
    return path


def views(side: int, n: int = 3) -> Batch:
    decoded = [decode_view(jpeg_bytes(i, (96, 72)), side) for i in range(n)]
    return Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded], [f"k{i}" for i in range(n)])


def load(path, view_size: int, **options):
    teacher = build(TeacherSpec(SPEC, str(path), options), view_size)
    teacher.load("cpu", "float32")
    return teacher


def reference(model_class, path, views: np.ndarray, size: int, mean, std, view_size: int) -> np.ndarray:
    """transformers' model run directly: views resized to its input, normalised, output resized to the view."""
    model = model_class.from_pretrained(path).eval()
    x = torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        predicted = model(pixel_values=x).predicted_depth[:, None]
    return F.interpolate(predicted, size=(view_size, view_size), mode="bilinear", align_corners=False)[:, 0].numpy()


def test_depth_anything_fields_are_disparity_on_the_view(tiny_da):
    teacher = load(tiny_da, 64)
    (field,) = teacher.fields()
    assert (field.name, field.shape, field.dtype, field.dense) == ("disparity", (64, 64), "float16", True)
    assert "inverse depth" in field.doc and "not metres" in field.doc
    assert field.kind == "continuous" and field.relative  # tokenizers standardise each image on its own
    assert teacher.provenance()["fields"]["disparity"]["relative"] is True
    assert teacher.config()["image_size"] == 56 and teacher.config()["output"] == "disparity"
    out = teacher(views(64))
    assert set(out) == {"disparity"}
    assert out["disparity"].shape == (3, 64, 64) and out["disparity"].dtype == np.float16
    assert np.isfinite(out["disparity"]).all() and (out["disparity"] >= 0).all()  # ReLU head, bilinear resize


def test_depth_anything_matches_transformers(tiny_da):
    from transformers import DepthAnythingForDepthEstimation

    batch = views(56)  # the model's own input size: nothing is resized on the way in or out
    out = load(tiny_da, 56)(batch)["disparity"].astype(np.float32)
    expected = reference(DepthAnythingForDepthEstimation, tiny_da, batch.views, 56, *IMAGENET, view_size=56)
    assert expected.std() > 0.05  # a map with structure, not a flat one
    np.testing.assert_allclose(out, expected, rtol=2e-3, atol=2e-3)  # float16 rounding
    assert not np.allclose(out[0], out[1], atol=0.05)


def test_depth_anything_resizes_in_and_out_and_batches(tiny_da):
    from transformers import DepthAnythingForDepthEstimation

    batch = views(80, n=4)
    teacher = load(tiny_da, 80)
    out = teacher(batch)["disparity"].astype(np.float32)
    expected = reference(DepthAnythingForDepthEstimation, tiny_da, batch.views, 56, *IMAGENET, view_size=80)
    np.testing.assert_allclose(out, expected, rtol=2e-3, atol=2e-3)
    one = teacher(Batch(batch.views[2:3], batch.infos[2:3], batch.keys[2:3]))["disparity"].astype(np.float32)
    np.testing.assert_allclose(one[0], out[2], rtol=2e-3, atol=2e-3)  # a sample's label does not depend on its batch


def test_metric_depth_anything_is_stored_as_depth_in_metres(tmp_path):
    path = depth_anything(tmp_path / "metric", metric=True)
    teacher = load(path, 32)
    (field,) = teacher.fields()
    assert field.name == "depth" and "metres" in field.doc and teacher.config()["output"] == "depth"
    assert field.kind == "continuous" and field.relative  # standardised per image, as depth always was
    out = teacher(views(32, n=2))["depth"]
    assert out.shape == (2, 32, 32) and ((out >= 0) & (out <= 20)).all()  # sigmoid x max_depth = 20 m


def test_dpt_uses_its_own_input_size_and_normalisation(tiny_dpt):
    from transformers import DPTForDepthEstimation

    teacher = load(tiny_dpt, 64)
    assert teacher.config()["model_type"] == "dpt" and teacher.config()["output"] == "disparity"
    assert teacher.config()["image_size"] == 64
    batch = views(64)
    out = teacher(batch)["disparity"].astype(np.float32)
    half = ((0.5,) * 3, (0.5,) * 3)
    expected = reference(DPTForDepthEstimation, tiny_dpt, batch.views, 64, *half, view_size=64)
    imagenet = reference(DPTForDepthEstimation, tiny_dpt, batch.views, 64, *IMAGENET, view_size=64)
    np.testing.assert_allclose(out, expected, rtol=2e-3, atol=2e-3)
    assert np.abs(out - imagenet).max() > 1e-2  # the checkpoint's mean/std, not ImageNet's


def test_image_size_option_must_tile_the_patches(tiny_da):
    assert load(tiny_da, 32, image_size=28).config()["image_size"] == 28
    with pytest.raises(UserError, match="not a multiple of the patch size 14"):
        build(TeacherSpec(SPEC, str(tiny_da), {"image_size": 50}), 32)


def test_provenance_has_the_checkpoint_hash(tiny_da):
    info = build(TeacherSpec(SPEC, str(tiny_da)), 32).provenance()
    assert info["teacher"] == "depth" and len(info["checkpoint_sha256"]) == 64
    assert info["fields"]["disparity"]["dtype"] == "float16" and info["config"]["output"] == "disparity"


def test_wrong_or_missing_checkpoints_are_user_errors(tmp_path):
    from transformers import DPTConfig, DPTForSemanticSegmentation, DPTModel, SegformerConfig, SegformerModel

    with pytest.raises(UserError, match="does not exist"):
        build(TeacherSpec(SPEC, str(tmp_path / "nowhere")), 32)
    segformer = tmp_path / "segformer"
    SegformerModel(SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 8, 8])).save_pretrained(segformer)
    with pytest.raises(UserError, match="model_type is 'segformer'"):
        build(TeacherSpec(SPEC, str(segformer)), 32)
    # other checkpoints of model type dpt: a segmentation model (its head does not fit) and a bare
    # backbone (no neck, no head); loaded for depth, transformers would fill the gaps with random weights
    small = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
                 neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16)
    DPTForSemanticSegmentation(DPTConfig(**small)).save_pretrained(tmp_path / "dpt-ade")
    DPTModel(DPTConfig(**small)).save_pretrained(tmp_path / "dpt-backbone")
    with pytest.raises(UserError, match="not a loadable depth-estimation"):
        build(TeacherSpec(SPEC, str(tmp_path / "dpt-ade")), 32).load("cpu", "float32")
    teacher = build(TeacherSpec(SPEC, str(tmp_path / "dpt-backbone")), 32)  # the config alone looks fine
    with pytest.raises(UserError, match="weights missing from the checkpoint, e.g. head"):
        teacher.load("cpu", "float32")


def test_engine_labels_a_corpus_with_depth(corpus, tmp_path, tiny_da):
    store = tmp_path / "labels.zarr"
    result = label(str(corpus), str(store), [f"{SPEC}={tiny_da}"], workers=1, unit_size=8, view_size=64,
                   progress=False)
    assert result.exit_code == EXIT_OK

    labels = zarr.open_group(str(store), mode="r")
    disparity = labels["depth/disparity"]
    assert disparity.shape == (20, 64, 64) and disparity.dtype == np.float16
    assert labels["depth/ok"][:].all()
    assert labels["depth"].attrs["config"]["output"] == "disparity"

    index = index_corpus(str(corpus))
    teacher = load(tiny_da, 64)
    for start in (0, 16):  # units 0 and 2 (a full one and the last, short one)
        stop = min(start + 8, 20)
        decoded = [decode_view(open(index.sources[i], "rb").read(), 64) for i in range(start, stop)]
        direct = teacher(Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded], ["k"] * len(decoded)))
        np.testing.assert_allclose(disparity[start:stop].astype(np.float32),
                                   direct["disparity"].astype(np.float32), rtol=2e-3, atol=2e-3)


def test_bfloat16_weights_still_store_float16(tiny_da):
    """On a GPU the default dtype is bfloat16: the output is cast back, and stays close to float32's."""
    batch = views(56, n=2)
    exact = load(tiny_da, 56)(batch)["disparity"].astype(np.float32)
    teacher = build(TeacherSpec(SPEC, str(tiny_da)), 56)
    teacher.load("cpu", "bfloat16")
    assert next(teacher.model.parameters()).dtype == torch.bfloat16
    out = teacher(batch)["disparity"]
    assert out.dtype == np.float16 and out.shape == (2, 56, 56)
    assert np.corrcoef(out.astype(np.float32).ravel(), exact.ravel())[0, 1] > 0.99  # bf16 keeps 8 bits of mantissa
