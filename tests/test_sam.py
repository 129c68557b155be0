"""omnimill/labelers/sam.py: SAM automatic masks from a tiny real segment-anything model saved as an official .pth."""

from __future__ import annotations

import hashlib
import importlib.util
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import photo
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.registry import build
from omnimill.labelers.sam import (area_resample, best_per_image, build_model, infer_architecture, instance_edges,
                                   mask_boxes, masks_in_boxes, paint_instances, paste_in_boxes, select_masks)

SAM = "omnimill.labelers.sam:SAM"  # until the registry knows "sam", the import path names the teacher
RELAXED = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}  # random weights pass SAM's own filters rarely
S = 64  # view size; the tiny encoder takes 256² like SAM's takes 1024², with a 64² mask decoder output


def tiny_sam():
    """The real segment-anything modules, tiny: 256² input, 16² tokens, 2 blocks (one windowed, one global)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=256, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                              out_chans=32, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                              window_size=5, global_attn_indexes=(1,))  # 16 tokens pad to 20 = 4 windows of 5
    prompt = PromptEncoder(embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=16)
    decoder = MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64,
                                                                            num_heads=8),
                          iou_head_depth=3, iou_head_hidden_dim=32)
    model = Sam(encoder, prompt, decoder).eval()
    with torch.no_grad():  # SAM zero-initialises rel-pos tables and its heads make weak masks at random init:
        for name, p in model.named_parameters():  # give both some weight so the filters have something to sort
            if "rel_pos" in name:
                p.normal_(0, 0.5)
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(20)
        decoder.iou_prediction_head.layers[-1].weight.mul_(10)
    return model


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: threads only add hand-offs (4x slower with 2 threads on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(tiny_sam().state_dict(), path)  # what the official files are: a plain state dict
    return path


def load(path, view_size=S, dtype="float32", **options):
    teacher = build(TeacherSpec(SAM, str(path), options), view_size)
    teacher.load("cpu", dtype)
    return teacher


def views_batch(views) -> Batch:
    return Batch(np.stack(views), [None] * len(views), [f"v{i}" for i in range(len(views))])


def photos(n, side=S, start=0) -> Batch:
    return views_batch([photo(start + i, side, side) for i in range(n)])


def check_consistent(out: dict, i: int, masks=None):
    """instances, boxes, scores, areas, count and edges of sample i agree with each other (and with its masks)."""
    n, ids, k = int(out["count"][i]), out["instances"][i].astype(int), out["scores"].shape[1]
    assert 0 <= n <= k
    assert not out["scores"][i, n:].any() and not out["boxes"][i, n:].any() and not out["areas"][i, n:].any()
    assert (np.diff(out["scores"][i, :n]) <= 0).all()  # best first
    assert set(np.unique(ids)) <= set(range(n + 1))
    for j in range(1, n + 1):
        ys, xs = np.nonzero(ids == j)
        x0, y0, x1, y1 = out["boxes"][i, j - 1]
        assert len(ys) <= out["areas"][i, j - 1]
        if len(ys):  # visible pixels lie in the box
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
        if masks is not None:
            mask = masks[j - 1]
            assert mask.sum() == out["areas"][i, j - 1]
            assert (ids[mask] >= 1).all()  # a mask's pixels are all painted, by it or by a mask on top
            assert (mask[ids == j]).all()
            if not len(ys):  # invisible only when smaller masks cover all of it
                assert all(masks[ids[mask] - 1].sum((1, 2)) <= mask.sum())
            expected = masks_in_boxes(torch.from_numpy(mask[None]), torch.from_numpy(out["boxes"][i, j - 1:j]))
            np.testing.assert_array_equal(out["masks64"][i, j - 1], expected[0].numpy())
    assert not out["masks64"][i, n:].any()
    # edges: exactly the pixels with a 4-neighbour of another id
    differs = np.zeros(ids.shape, bool)
    differs[1:] |= ids[1:] != ids[:-1]
    differs[:-1] |= ids[1:] != ids[:-1]
    differs[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    differs[:, :-1] |= ids[:, 1:] != ids[:, :-1]
    assert np.array_equal(out["edges"][i], differs)


# ---------------------------------------------------------------- the checkpoint and its architecture


@pytest.mark.parametrize("variant, dim, depth, heads, globals_", [
    ("vit_b", 768, 12, 12, [2, 5, 8, 11]), ("vit_l", 1024, 24, 16, [5, 11, 17, 23]),
    ("vit_h", 1280, 32, 16, [7, 15, 23, 31])])
def test_official_architectures_are_read_off_their_state_dicts(variant, dim, depth, heads, globals_):
    from segment_anything import sam_model_registry

    with torch.device("meta"):  # shapes without memory: the official builders, as the .pth files were made
        official = sam_model_registry[variant]().state_dict()
    arch = infer_architecture(official)
    assert (arch["variant"], arch["embed_dim"], arch["depth"], arch["num_heads"]) == (variant, dim, depth, heads)
    assert arch["global_attn_indexes"] == globals_ and arch["window_size"] == 14 and arch["image_size"] == 1024
    assert (arch["prompt_dim"], arch["decoder_depth"], arch["multimask_outputs"]) == (256, 2, 3)
    with torch.device("meta"):
        ours = build_model(arch).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in official.items()}


def test_tiny_checkpoint_loads_through_the_registry(tiny_ckpt):
    teacher = build(TeacherSpec(SAM, str(tiny_ckpt)), S)
    assert teacher.name == "sam" and teacher.model is None  # building reads shapes, loads no weights
    arch = teacher.arch
    assert (arch["embed_dim"], arch["depth"], arch["num_heads"], arch["window_size"]) == (32, 2, 2, 5)
    assert (arch["global_attn_indexes"], arch["image_size"], arch["variant"]) == ([1], 256, "vit_32x2")
    teacher.load("cpu", "float32")
    expected = tiny_sam().state_dict()
    for key, value in teacher.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_fields_and_shapes(tiny_ckpt):
    teacher = load(tiny_ckpt, points_per_side=4, max_instances=16)
    fields = {f.name: (f.shape, f.dtype, f.dense) for f in teacher.fields()}
    assert fields == {"instances": ((S, S), "uint16", True), "boxes": ((16, 4), "float32", False),
                      "scores": ((16,), "float32", False), "areas": ((16,), "int32", False),
                      "count": ((), "int32", False), "edges": ((S, S), "bool", True),
                      "masks64": ((16, 64, 64), "bool", False)}
    assert [f.kind for f in teacher.fields()] == ["instances", "boxes", "scores", "scalar", "count", "binary",
                                                  "instance_masks"]
    out = teacher(photos(3))
    assert set(out) == set(fields)
    for name, (shape, dtype, _) in fields.items():
        assert out[name].shape == (3, *shape) and out[name].dtype == np.dtype(dtype), name
    assert [f.shape for f in build(TeacherSpec(SAM, str(tiny_ckpt)), 384).fields()][:2] == [(384, 384), (128, 4)]


def test_provenance_and_config(tiny_ckpt):
    teacher = build(TeacherSpec(SAM, str(tiny_ckpt), {"points_per_side": 16, "points_per_batch": 64}), S)
    info = teacher.provenance()
    assert info["teacher"] == "sam" and info["checkpoint_path"] == str(tiny_ckpt.resolve())
    assert info["checkpoint_sha256"] == hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
    assert {"torch", "torchvision", "segment_anything"} <= set(info["libraries"])
    config = info["config"]
    assert config["model"] == "vit_32x2" and config["points_per_side"] == 16 and config["crop_n_layers"] == 0
    assert (config["pred_iou_thresh"], config["stability_score_thresh"], config["box_nms_thresh"]) == (0.88, 0.95, 0.7)
    assert "points_per_batch" not in config  # a speed knob: changing it must not block a resume


# ---------------------------------------------------------------- wrong checkpoints


def test_missing_checkpoint_says_where_to_get_one(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        build(TeacherSpec(SAM, str(tmp_path / "sam_vit_b.pth")), S)
    monkeypatch.chdir(tmp_path)  # no checkpoint given: the default file name, looked for here
    with pytest.raises(UserError, match="sam_vit_b_01ec64.pth.*dl.fbaipublicfiles.com"):
        build(TeacherSpec(SAM), S)


def test_a_state_dict_of_another_model_is_refused(tmp_path):
    other = tmp_path / "resnetish.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2)).state_dict(),
               other)
    with pytest.raises(UserError, match=r"not a segment-anything checkpoint \(it has no 'image_encoder"):
        build(TeacherSpec(SAM, str(other)), S)


@pytest.mark.parametrize("what", ["directory", "text", "list"])
def test_files_that_are_no_state_dict_are_refused(what, tmp_path):
    path = tmp_path / "sam.pth"
    if what == "directory":
        path.mkdir()
    elif what == "text":
        path.write_text("not a checkpoint\n")
    else:
        torch.save([torch.zeros(3)], path)
    with pytest.raises(UserError, match="not a segment-anything checkpoint"):
        build(TeacherSpec(SAM, str(path)), S)


def test_a_damaged_sam_state_dict_fails_on_load(tiny_ckpt, tmp_path):
    state = torch.load(tiny_ckpt, weights_only=True)
    del state["mask_decoder.iou_token.weight"]  # a key the shapes do not need, the model does
    path = tmp_path / "damaged.pth"
    torch.save(state, path)
    teacher = build(TeacherSpec(SAM, str(path)), S)
    with pytest.raises(UserError, match="not a segment-anything checkpoint.*iou_token"):
        teacher.load("cpu", "float32")


def test_bad_options_are_refused(tiny_ckpt):
    with pytest.raises(UserError, match="max_instances"):
        build(TeacherSpec(SAM, str(tiny_ckpt), {"max_instances": 70000}), S)
    with pytest.raises(UserError, match="points_per_side"):
        build(TeacherSpec(SAM, str(tiny_ckpt), {"points_per_side": 0}), S)


# ---------------------------------------------------------------- the pipeline


def test_decode_equals_sams_mask_decoder(tiny_ckpt):
    teacher = load(tiny_ckpt)
    points = torch.rand(5, 2)
    with torch.inference_mode():
        embeddings = teacher.encode(photos(2).views)
        logits, iou = teacher.decode(embeddings, torch.tensor([1] * 5), points)  # all prompts on image 1
        sam = teacher.model
        sparse, dense = sam.prompt_encoder(points=(points[:, None] * 256, torch.ones(5, 1, dtype=torch.int)),
                                           boxes=None, masks=None)
        expected, expected_iou = sam.mask_decoder(embeddings[1:2], sam.prompt_encoder.get_dense_pe(), sparse, dense,
                                                  multimask_output=True)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou, expected_iou, atol=1e-5, rtol=1e-5)


def test_matches_segment_anythings_own_amg(tiny_ckpt):
    """With the view as large as the encoder input nothing is resized: our batched pipeline gives SAM's AMG output."""
    from segment_anything import SamAutomaticMaskGenerator

    options = dict(points_per_side=8, pred_iou_thresh=0.1, stability_score_thresh=0.3, box_nms_thresh=1.0)
    teacher = load(tiny_ckpt, view_size=256, max_instances=192, points_per_batch=100, **options)
    batch = photos(2, side=256)
    out = teacher(batch)
    amg = SamAutomaticMaskGenerator(teacher.model, **options)
    for i in range(2):
        anns = amg.generate(batch.views[i])
        n = int(out["count"][i])
        assert 0 < n == len(anns) < 192  # the filters kept some and dropped some
        np.testing.assert_allclose(out["scores"][i, :n], [a["predicted_iou"] for a in anns], atol=1e-5)
        np.testing.assert_allclose(out["areas"][i, :n], [a["area"] for a in anns], atol=2)
        masks = torch.from_numpy(np.stack([a["segmentation"] for a in anns]))
        assert (paint_instances(masks).numpy() == out["instances"][i]).mean() > 0.999
        x, y, w, h = np.array([a["bbox"] for a in anns]).T  # SAM: x0, y0, last column - x0, last row - y0
        np.testing.assert_allclose(out["boxes"][i, :n], np.stack([x, y, x + w + 1, y + h + 1], 1), atol=1)


def test_relaxed_thresholds_give_consistent_labels(tiny_ckpt):
    teacher = load(tiny_ckpt, points_per_side=6, max_instances=40, box_nms_thresh=1.0, **RELAXED)
    batch = photos(3)
    out = teacher(batch)
    assert (out["count"] == 40).all()  # 6² prompts x 3 masks = 108 candidates, the best 40 kept
    with torch.inference_mode():  # the survivors' masks, to check the arrays against them
        embeddings = teacher.encode(batch.views)
        masks, scores, boxes, areas, image = teacher.segment(embeddings, [0, 1, 2])
        kept = best_per_image(boxes, scores, image, [0, 1, 2], 1.0, 40)
    for i in range(3):
        check_consistent(out, i, masks[kept[i]].numpy())
        np.testing.assert_array_equal(out["boxes"][i], mask_boxes(masks[kept[i]]).numpy())
    assert out["edges"].any() and not out["edges"].all()


def test_default_filters_keep_few_masks_of_random_weights_and_nms_drops_duplicates(tiny_ckpt):
    batch = photos(2)
    strict = load(tiny_ckpt, points_per_side=6)(batch)
    relaxed = load(tiny_ckpt, points_per_side=6, **RELAXED)(batch)  # NMS at 0.7
    unsuppressed = load(tiny_ckpt, points_per_side=6, box_nms_thresh=1.0, **RELAXED)(batch)
    assert (strict["count"] <= relaxed["count"]).all() and (relaxed["count"] < unsuppressed["count"]).all()
    for out in (strict, relaxed):
        for i in range(2):
            check_consistent(out, i)


def test_prompts_batched_across_images_give_the_same_labels(tiny_ckpt):
    batch = photos(3)
    one_image_per_call = load(tiny_ckpt, points_per_side=4, points_per_batch=5, **RELAXED)(batch)
    three_images_per_call = load(tiny_ckpt, points_per_side=4, points_per_batch=48, encoder_batch=2, **RELAXED)(batch)
    alone = [load(tiny_ckpt, points_per_side=4, **RELAXED)(views_batch([v])) for v in batch.views]
    for name, value in one_image_per_call.items():
        np.testing.assert_allclose(value, three_images_per_call[name], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(value, np.concatenate([a[name] for a in alone]), atol=1e-5, err_msg=name)


def test_bfloat16_runs_and_returns_the_declared_dtypes(tiny_ckpt):
    options = dict(points_per_side=4, max_instances=48, box_nms_thresh=1.0, **RELAXED)
    batch = photos(2)
    exact = load(tiny_ckpt, **options)(batch)
    half = load(tiny_ckpt, dtype="bfloat16", **options)(batch)
    assert {k: v.dtype for k, v in half.items()} == {k: v.dtype for k, v in exact.items()}
    assert (half["count"] == 48).all()  # 4² prompts x 3 masks, none empty
    np.testing.assert_allclose(half["scores"], exact["scores"], atol=0.05)  # bf16 keeps ~3 digits
    for i in range(2):
        check_consistent(half, i)


def test_gflops_arithmetic_matches_torchs_flop_counter(tiny_ckpt):
    from torch.utils.flop_counter import FlopCounterMode

    spec = importlib.util.spec_from_file_location("checkpoints_sam", Path(__file__).parents[1] / "benchmarks" /
                                                  "checkpoints_sam.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    teacher = load(tiny_ckpt)
    teacher.model.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        embeddings = teacher.encode(photos(1).views)
        teacher.decode(embeddings, torch.zeros(9, dtype=torch.long), teacher.grid[:9])
    assert counter.get_total_flops() / 1e9 == pytest.approx(bench.gflops(teacher.arch, points_per_side=3), rel=1e-9)


# ---------------------------------------------------------------- post-processing on hand-made masks


def square(side, y0, x0, y1, x1):
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_two_overlapping_squares_paint_box_and_edge():
    big, small = square(32, 0, 0, 16, 16), square(32, 10, 10, 20, 20)  # 256 and 100 pixels, overlapping 6 x 6
    for masks, big_id, small_id in ((torch.stack([big, small]), 1, 2), (torch.stack([small, big]), 2, 1)):
        ids = paint_instances(masks).numpy()
        expected = np.zeros((32, 32), int)
        expected[:16, :16] = big_id
        expected[10:20, 10:20] = small_id  # the smaller mask is on top, whatever its index
        np.testing.assert_array_equal(ids, expected)
    boxes = mask_boxes(torch.stack([big, small])).numpy()
    np.testing.assert_array_equal(boxes, [[0, 0, 16, 16], [10, 10, 20, 20]])  # x1, y1 = last pixel + 1

    edges = instance_edges(paint_instances(torch.stack([big, small]))).numpy()
    assert edges[5, 15] and edges[5, 16]  # big | background: both sides
    assert edges[12, 9] and edges[12, 10]  # big | small
    assert edges[19, 15] and edges[20, 15]  # small | background
    assert not edges[5, 5] and not edges[15, 15] and not edges[25, 25]  # inside big, inside small, background
    assert not edges[0, 5] and not edges[5, 0]  # the view's border is no boundary
    ids = paint_instances(torch.stack([big, small])).numpy()
    brute = [[any(0 <= y + dy < 32 and 0 <= x + dx < 32 and ids[y + dy, x + dx] != ids[y, x]
                  for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))) for x in range(32)] for y in range(32)]
    np.testing.assert_array_equal(edges, brute)


def test_overlapping_instances_are_all_kept_in_masks64():
    """The instance map shows a pixel once; masks64 + boxes give every instance back whole, overlaps included."""
    big, small = square(32, 0, 0, 16, 16), square(32, 10, 10, 20, 20)  # the small one hides a corner of the big
    yy, xx = np.mgrid[:32, :32]
    disc = torch.from_numpy((yy - 14.5) ** 2 + (xx - 20.5) ** 2 <= 7.5 ** 2)  # overlaps both
    masks = torch.stack([big, small, disc])
    ids = paint_instances(masks).numpy()
    assert (ids == 1).sum() < big.sum()  # the map has lost part of the big square
    boxes = mask_boxes(masks)
    masks64 = masks_in_boxes(masks, boxes)
    assert masks64.shape == (3, 64, 64) and masks64[:2].all()  # squares fill their boxes
    back = paste_in_boxes(masks64.numpy(), boxes.numpy(), 32, 32)
    np.testing.assert_array_equal(back[:2], masks[:2].numpy())  # both squares, whole, overlap included
    iou = (back[2] & disc.numpy()).sum() / (back[2] | disc.numpy()).sum()
    assert iou > 0.95  # the disc up to its rim (a 15 px box resampled to 64 and back)
    assert (back[0] & back[1]).sum() == 36 and (back[0] & back[2]).any() and (back[1] & back[2]).any()


def test_area_resample_takes_exact_shares():
    mask = torch.zeros(1, 4, 4)
    mask[0, :, :1] = 1  # the first column
    shares = area_resample(mask, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 2)  # 2 x 2 cells of 2 x 2 pixels
    assert shares.tolist() == [[[0.5, 0.0], [0.5, 0.0]]]
    up = area_resample(mask, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 4)  # one pixel to 4 x 4 cells: all of it
    assert up.tolist() == [[[1.0] * 4] * 4]
    outside = area_resample(mask, torch.tensor([[-2.0, 0.0, 2.0, 4.0]]), (1, 2))  # half the window is off the grid
    assert outside.tolist() == [[[0.0, 0.5]]]


def test_equal_areas_put_the_better_score_on_top_and_no_masks_paint_nothing():
    a, b = square(16, 0, 0, 8, 8), square(16, 4, 4, 12, 12)
    assert paint_instances(torch.stack([a, b]))[6, 6] == 1
    assert paint_instances(torch.stack([b, a]))[6, 6] == 1
    assert not paint_instances(torch.zeros(0, 16, 16, dtype=torch.bool)).any()
    assert mask_boxes(torch.zeros(0, 16, 16, dtype=torch.bool)).shape == (0, 4)


def test_select_masks_applies_sams_filters():
    low = torch.full((5, 16, 16), -10.0)  # low-res logits, upsampled 2x to a 32 view
    low[0, 2:8, 2:8] = 10  # confident square: stable
    low[1, 2:8, 2:8] = 0.5  # the same square, barely above the cutoff: unstable
    low[2, 2:8, 2:8] = 10  # confident, but the model rates it poorly
    low[4, 8:12, 1:3] = 10  # (3 stays empty) another confident region
    iou = torch.tensor([0.95, 0.95, 0.5, 0.99, 0.9])
    image = torch.tensor([0, 0, 0, 1, 1])
    masks, scores, boxes, areas, image_of = select_masks(low, iou, image, 32, 0.88, 0.95, 1.0)
    assert scores.tolist() == pytest.approx([0.95, 0.9]) and image_of.tolist() == [0, 1]
    assert boxes.tolist() == [[4, 4, 16, 16], [2, 16, 6, 24]] and areas.tolist() == [144, 32]
    assert torch.equal(masks[0], square(32, 4, 4, 16, 16))
    relaxed = select_masks(low, iou, image, 32, 0.0, 0.0, 1.0)  # only the empty mask goes
    assert relaxed[1].tolist() == pytest.approx([0.95, 0.95, 0.5, 0.9])


def test_best_per_image_suppresses_duplicates_within_an_image_only():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30], [0, 0, 10, 10], [1, 1, 9, 9.0]])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.6, 0.95])
    image = torch.tensor([0, 0, 0, 1, 1])
    first, second = best_per_image(boxes, scores, image, [0, 1], 0.7, 10)
    assert first.tolist() == [1, 2]  # 0 overlaps the better 1 at IoU 0.9; 2 stands apart
    assert second.tolist() == [4, 3]  # 3 and 4 overlap at IoU 64 / 100 < 0.7; 0 in image 0 does not count
    assert [k.tolist() for k in best_per_image(boxes, scores, image, [0, 1], 0.7, 1)] == [[1], [4]]


# ---------------------------------------------------------------- through the engine


def test_engine_labels_a_corpus_with_sam(corpus, tmp_path, tiny_ckpt):
    from omnimill.engine.label import EXIT_OK, label
    from omnimill.corpus.image import decode_view
    from omnimill.corpus.listing import index_corpus

    spec = TeacherSpec(SAM, str(tiny_ckpt), dict(points_per_side=4, points_per_batch=32, max_instances=24, **RELAXED))
    store = tmp_path / "labels.zarr"
    # one torch thread here and on the worker: the same arithmetic in the same order, so equal bit for bit
    result = label(str(corpus), str(store), [spec], workers=1, unit_size=8, view_size=S, progress=False,
                   torch_threads=1)
    assert result.exit_code == EXIT_OK

    labels = zarr.open_group(str(store), mode="r")  # plain zarr, no omnimill
    group = labels["sam"]
    assert group["ok"][:].all() and group.attrs["config"]["points_per_side"] == 4
    assert group.attrs["checkpoint_sha256"] == hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
    expected_shapes = {"instances": ((20, S, S), np.uint16), "boxes": ((20, 24, 4), np.float32),
                       "scores": ((20, 24), np.float32), "areas": ((20, 24), np.int32),
                       "count": ((20,), np.int32), "edges": ((20, S, S), np.bool_),
                       "masks64": ((20, 24, 64, 64), np.bool_)}
    stored = {name: group[name][:] for name in expected_shapes}
    for name, (shape, dtype) in expected_shapes.items():
        assert stored[name].shape == shape and stored[name].dtype == dtype, name

    teacher = build(spec, S)
    sources = index_corpus(str(corpus)).sources
    assert torch.get_num_threads() == 1
    for start in range(0, 20, 8):  # the engine's batches: one per unit
        views = [decode_view(open(sources[i], "rb").read(), S).view for i in range(start, min(start + 8, 20))]
        direct = teacher(views_batch(views))
        for name, value in direct.items():
            np.testing.assert_array_equal(stored[name][start:start + len(views)], value, err_msg=name)
    assert (stored["count"] > 0).all()
    for i in range(20):
        check_consistent(stored, i)
