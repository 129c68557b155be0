"""omnimill/labelers/normals.py: TIPSv2-DPT surface normals, real tiny models saved as users' checkpoints are."""

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

SPEC = "omnimill.labelers.normals:Normals"


def tips_config():
    """TIPSv2-DPT in miniature: a 4-layer ViT-14 backbone at 56 = 4 patches, the real DPT neck and heads."""
    from transformers import Tipsv2DptConfig
    from transformers.models.tipsv2.configuration_tipsv2 import Tipsv2VisionConfig

    backbone = Tipsv2VisionConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=56,
                                  patch_size=14, out_indices=[1, 2, 3, 4], apply_layernorm=True,
                                  reshape_hidden_states=False)
    return Tipsv2DptConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16)


def save_processor(path, **kwargs):
    from transformers.models.tipsv2_dpt.image_processing_tipsv2_dpt import Tipsv2DptImageProcessor

    Tipsv2DptImageProcessor(size={"height": 56, "width": 56}, **kwargs).save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_tips(tmp_path_factory):
    from transformers import Tipsv2DptForNormalEstimation

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-tipsv2-dpt"
    Tipsv2DptForNormalEstimation(tips_config()).save_pretrained(path)
    save_processor(path)  # do_normalize=False: TIPS takes [0, 1] pixels
    return path


def views(side: int, n: int = 3) -> Batch:
    decoded = [decode_view(jpeg_bytes(i, (96, 72)), side) for i in range(n)]
    return Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded], [f"k{i}" for i in range(n)])


def load(path, view_size: int):
    teacher = build(TeacherSpec(SPEC, str(path)), view_size)
    teacher.load("cpu", "float32")
    return teacher


def raw_normals(model_class, path, views: np.ndarray, mean=0.0, std=1.0) -> torch.Tensor:
    """transformers' model run directly on the views (already at its 56-pixel input): (b, 3, h', w')."""
    model = model_class.from_pretrained(path).eval()
    x = (torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        return model(pixel_values=x).normals


def on_view(raw: torch.Tensor, side: int) -> np.ndarray:
    unit = F.interpolate(F.normalize(raw, dim=1), size=(side, side), mode="bilinear", align_corners=False)
    return F.normalize(unit, dim=1).permute(0, 2, 3, 1).numpy()


def test_normals_are_unit_vectors_on_the_view(tiny_tips):
    teacher = load(tiny_tips, 64)
    (field,) = teacher.fields()
    assert (field.name, field.shape, field.dtype, field.dense) == ("normals", (64, 64, 3), "float16", True)
    assert field.kind == "unit_vectors"
    assert teacher.config()["image_size"] == 56 and teacher.config()["model_type"] == "tipsv2_dpt"
    out = teacher(views(64))["normals"]
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.float16
    norms = np.linalg.norm(out.astype(np.float32), axis=-1)
    assert np.abs(norms - 1).max() < 2e-3  # float16 components
    assert out[..., 2].std() > 0.05 and not np.allclose(out[0], out[1], atol=0.05)  # varied, not a constant


def test_normals_match_transformers(tiny_tips):
    from transformers import Tipsv2DptForNormalEstimation

    batch = views(56)
    out = load(tiny_tips, 56)(batch)["normals"].astype(np.float32)
    raw = raw_normals(Tipsv2DptForNormalEstimation, tiny_tips, batch.views)
    assert raw.shape[-2:] == (32, 32)  # 4 patches x 8: the head's grid, resized up to the view
    np.testing.assert_allclose(out, on_view(raw, 56), atol=2e-3)
    # the original TIPS pixels are [0, 1]: ImageNet normalisation would give other normals
    imagenet = raw_normals(Tipsv2DptForNormalEstimation, tiny_tips, batch.views,
                           torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
                           torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    assert np.abs(out - on_view(imagenet, 56)).max() > 0.05


def test_checkpoint_without_processor_still_takes_unit_pixels_and_one_that_normalises_is_honoured(tiny_tips, tmp_path):
    from transformers import Tipsv2DptForNormalEstimation

    batch = views(56)
    bare = tmp_path / "bare"
    Tipsv2DptForNormalEstimation.from_pretrained(tiny_tips).save_pretrained(bare)  # no preprocessor_config.json
    out = load(bare, 56)(batch)["normals"].astype(np.float32)
    np.testing.assert_allclose(out, on_view(raw_normals(Tipsv2DptForNormalEstimation, bare, batch.views), 56),
                               atol=2e-3)

    halves = tmp_path / "halves"
    Tipsv2DptForNormalEstimation.from_pretrained(tiny_tips).save_pretrained(halves)
    save_processor(halves, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    out = load(halves, 56)(batch)["normals"].astype(np.float32)
    expected = raw_normals(Tipsv2DptForNormalEstimation, halves, batch.views, 0.5, 0.5)
    np.testing.assert_allclose(out, on_view(expected, 56), atol=2e-3)


def test_the_three_head_checkpoint_gives_its_normals_head(tmp_path):
    """google/tipsv2-*-dpt hold depth, normals and segmentation heads together: the normals head is used."""
    from transformers import Tipsv2DptForDensePrediction

    torch.manual_seed(2)
    path = tmp_path / "dense"
    Tipsv2DptForDensePrediction(tips_config()).save_pretrained(path)
    save_processor(path)
    batch = views(56, n=2)
    out = load(path, 56)(batch)["normals"].astype(np.float32)
    np.testing.assert_allclose(out, on_view(raw_normals(Tipsv2DptForDensePrediction, path, batch.views), 56),
                               atol=2e-3)


def test_wrong_checkpoints_are_user_errors(tmp_path, tiny_depth_anything):
    from transformers import Tipsv2DptForDepthEstimation

    with pytest.raises(UserError, match="does not exist"):
        build(TeacherSpec(SPEC, str(tmp_path / "nowhere")), 32)
    with pytest.raises(UserError, match="model_type is 'depth_anything', expected tipsv2_dpt"):
        build(TeacherSpec(SPEC, str(tiny_depth_anything)), 32)
    # a depth-only TIPSv2 checkpoint has no normals head: transformers would make one up at random
    depth_only = tmp_path / "tips-depth"
    Tipsv2DptForDepthEstimation(tips_config()).save_pretrained(depth_only)
    teacher = build(TeacherSpec(SPEC, str(depth_only)), 32)
    with pytest.raises(UserError, match="weights missing from the checkpoint"):
        teacher.load("cpu", "float32")


def test_engine_labels_a_corpus_with_normals(corpus, tmp_path, tiny_tips):
    store = tmp_path / "labels.zarr"
    result = label(str(corpus), str(store), [f"{SPEC}={tiny_tips}"], workers=1, unit_size=8, view_size=64,
                   progress=False)
    assert result.exit_code == EXIT_OK

    labels = zarr.open_group(str(store), mode="r")
    normals = labels["normals/normals"]
    assert normals.shape == (20, 64, 64, 3) and normals.dtype == np.float16
    assert labels["normals/ok"][:].all()
    assert len(labels["normals"].attrs["checkpoint_sha256"]) == 64
    stored = normals[:].astype(np.float32)
    assert np.abs(np.linalg.norm(stored, axis=-1) - 1).max() < 2e-3

    index = index_corpus(str(corpus))
    decoded = [decode_view(open(index.sources[i], "rb").read(), 64) for i in range(8, 16)]  # unit 1
    direct = load(tiny_tips, 64)(Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded], ["k"] * 8))
    np.testing.assert_allclose(stored[8:16], direct["normals"].astype(np.float32), atol=2e-3)


def test_bfloat16_weights_still_store_float16_unit_vectors(tiny_tips):
    batch = views(56, n=2)
    exact = load(tiny_tips, 56)(batch)["normals"].astype(np.float32)
    teacher = build(TeacherSpec(SPEC, str(tiny_tips)), 56)
    teacher.load("cpu", "bfloat16")
    out = teacher(batch)["normals"]
    assert out.dtype == np.float16 and out.shape == (2, 56, 56, 3)
    assert np.abs(np.linalg.norm(out.astype(np.float32), axis=-1) - 1).max() < 2e-3  # normalised in float32
    assert np.median(np.sum(out.astype(np.float32) * exact, axis=-1)) > 0.99  # cos of the angle to float32's


def test_image_size_option_must_tile_the_patches(tiny_tips):
    teacher = build(TeacherSpec(SPEC, str(tiny_tips), {"image_size": 28}), 32)
    assert teacher.config()["image_size"] == 28
    with pytest.raises(UserError, match="not a multiple of the patch size 14"):
        build(TeacherSpec(SPEC, str(tiny_tips), {"image_size": 50}), 32)
