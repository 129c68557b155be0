"""omnimill/labelers/semseg.py: SegFormer and Mask2Former, real tiny models saved as users' checkpoints are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from conftest import jpeg_bytes

from omnimill.engine.label import EXIT_OK, label
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.registry import build
from omnimill.corpus.image import decode_view
from omnimill.corpus.listing import index_corpus

SPEC = "omnimill.labelers.semseg:SemSeg"
NAMES = ["wall", "sky", "floor", "tree", "person"]
ID2LABEL = dict(enumerate(NAMES))


def segformer_config():
    from transformers import SegformerConfig

    return SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 2, 2],
                           decoder_hidden_size=16, id2label=ID2LABEL, label2id={n: i for i, n in ID2LABEL.items()})


@pytest.fixture(scope="module")
def tiny_segformer(tmp_path_factory):
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-segformer"
    SegformerForSemanticSegmentation(segformer_config()).save_pretrained(path)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_mask2former(tmp_path_factory):
    """Mask2Former on a tiny Swin, 6 queries, 5 classes; its processor says 384 like the real ADE checkpoints."""
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor,
                              SwinConfig)

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-mask2former"
    swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
                               num_attention_heads=2, num_queries=6, id2label=ID2LABEL,
                               init_std=1.0)  # 0.02 gives near-uniform class scores: one class everywhere
    Mask2FormerForUniversalSegmentation(config).save_pretrained(path)
    Mask2FormerImageProcessor(size={"height": 384, "width": 384}).save_pretrained(path)
    return path


def views(side: int, n: int = 3) -> Batch:
    decoded = [decode_view(jpeg_bytes(i, (96, 72)), side) for i in range(n)]
    return Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded], [f"k{i}" for i in range(n)])


def load(path, view_size: int):
    teacher = build(TeacherSpec(SPEC, str(path)), view_size)
    teacher.load("cpu", "float32")
    return teacher


def processed(processor_class, model_class, path, views: np.ndarray) -> np.ndarray:
    """transformers end to end: the model on the normalised views (already at its input size), then the
    image processor's own post_process_semantic_segmentation to the view size."""
    model = model_class.from_pretrained(path).eval()
    x = torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        outputs = model(pixel_values=x)
    side = views.shape[1]
    maps = processor_class().post_process_semantic_segmentation(outputs, target_sizes=[(side, side)] * len(views))
    return torch.stack(maps).numpy()


def test_segformer_fields_and_class_names(tiny_segformer):
    teacher = load(tiny_segformer, 64)
    (field,) = teacher.fields()
    assert (field.name, field.shape, field.dtype, field.dense) == ("classes", (64, 64), "uint16", True)
    assert field.kind == "classes"
    assert "0..4" in field.doc
    config = teacher.provenance()["config"]
    assert config["class_names"] == NAMES and config["image_size"] == 64 and config["model_type"] == "segformer"
    out = teacher(views(64))["classes"]
    assert out.shape == (3, 64, 64) and out.dtype == np.uint16
    assert out.max() < len(NAMES) and len(np.unique(out)) > 1


def test_segformer_matches_transformers_post_processing(tiny_segformer):
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    batch = views(64)
    out = load(tiny_segformer, 64)(batch)["classes"]
    expected = processed(SegformerImageProcessor, SegformerForSemanticSegmentation, tiny_segformer, batch.views)
    np.testing.assert_array_equal(out, expected)


def test_segformer_resizes_the_view_to_its_input_and_logits_back(tiny_segformer):
    teacher = load(tiny_segformer, 96)  # 96 -> 64 in, logits 16 x 16 -> 96 x 96 out
    out = teacher(views(96, n=2))["classes"]
    assert out.shape == (2, 96, 96) and out.max() < len(NAMES)
    # boundaries at view resolution: some 4 x 4 block of the view holds two classes (not upsampled blocks of 6)
    blocks = out.reshape(2, 24, 4, 24, 4).transpose(0, 1, 3, 2, 4).reshape(2, 24, 24, 16)
    assert (blocks.min(-1) != blocks.max(-1)).any()


def test_mask2former_matches_transformers_post_processing(tiny_mask2former):
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    teacher = load(tiny_mask2former, 384)  # the checkpoint's input size: its post-processing works at 384 too
    assert teacher.config()["image_size"] == 384 and teacher.config()["class_names"] == NAMES
    batch = views(384, n=2)
    out = teacher(batch)["classes"]
    assert out.shape == (2, 384, 384) and out.dtype == np.uint16 and out.max() < len(NAMES)
    expected = processed(Mask2FormerImageProcessor, Mask2FormerForUniversalSegmentation, tiny_mask2former, batch.views)
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(out, expected)


def test_mask2former_on_a_small_view(tiny_mask2former):
    out = load(tiny_mask2former, 48)(views(48, n=2))["classes"]
    assert out.shape == (2, 48, 48) and out.max() < len(NAMES)


def test_image_size_must_be_a_multiple_of_32(tiny_segformer):
    with pytest.raises(UserError, match="not a multiple of 32"):
        build(TeacherSpec(SPEC, str(tiny_segformer), {"image_size": 100}), 64)
    assert build(TeacherSpec(SPEC, str(tiny_segformer), {"image_size": 96}), 64).config()["image_size"] == 96


def test_wrong_checkpoints_are_user_errors(tmp_path, tiny_depth_anything):
    from transformers import SegformerModel

    with pytest.raises(UserError, match="could not be fetched"):  # looks like a hub id; offline in tests
        build(TeacherSpec(SPEC, "nobody/no-such-segformer"), 32)
    with pytest.raises(UserError, match="model_type is 'depth_anything', expected segformer or mask2former"):
        build(TeacherSpec(SPEC, str(tiny_depth_anything)), 32)
    # an ImageNet-pretrained encoder (nvidia/mit-b5 style) is model type segformer too, with no decode head
    encoder = tmp_path / "mit"
    SegformerModel(segformer_config()).save_pretrained(encoder)
    teacher = build(TeacherSpec(SPEC, str(encoder)), 32)
    with pytest.raises(UserError, match="weights missing from the checkpoint, e.g. decode_head"):
        teacher.load("cpu", "float32")


def test_engine_labels_a_corpus_with_segformer(corpus, tmp_path, tiny_segformer):
    store = tmp_path / "labels.zarr"
    result = label(str(corpus), str(store), [f"{SPEC}={tiny_segformer}"], workers=1, unit_size=8, view_size=64,
                   progress=False)
    assert result.exit_code == EXIT_OK

    labels = zarr.open_group(str(store), mode="r")
    classes = labels["semseg/classes"]
    assert classes.shape == (20, 64, 64) and classes.dtype == np.uint16
    assert labels["semseg/ok"][:].all()
    assert labels["semseg"].attrs["config"]["class_names"] == NAMES  # the names travel with the labels
    stored = classes[:]
    assert stored.max() < len(NAMES)

    index = index_corpus(str(corpus))
    decoded = [decode_view(open(index.sources[i], "rb").read(), 64) for i in range(8)]  # unit 0
    direct = load(tiny_segformer, 64)(Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded], ["k"] * 8))
    assert (stored[:8] == direct["classes"]).mean() > 0.999  # argmax ties may break differently across threads


@pytest.mark.parametrize("which", ["segformer", "mask2former"])
def test_bfloat16_weights_still_store_uint16_ids(which, tiny_segformer, tiny_mask2former):
    path = tiny_segformer if which == "segformer" else tiny_mask2former
    teacher = build(TeacherSpec(SPEC, str(path)), 48)
    teacher.load("cpu", "bfloat16")
    out = teacher(views(48, n=2))["classes"]
    assert out.dtype == np.uint16 and out.shape == (2, 48, 48) and out.max() < len(NAMES)
