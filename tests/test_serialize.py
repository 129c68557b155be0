"""omnimill/tokenize/serialize.py: each structure <-> pieces, crops and flips, quantization, malformed input.

No text tokenizer here: pieces are special-token strings and `Text`; test_tokenize_sequence.py adds the ids.
"""

from __future__ import annotations

import numpy as np
import pytest

from omnimill.errors import UserError
from omnimill.tokenize.serialize import (COCO_KEYPOINTS, SERIALIZERS, Text, make_serializer, normalize_text,
                                         structure_for)

S = 384
WHOLE = np.array([0, 0, S, S, 0])


def serializer(structure, values, fields=None, source=None, **options):
    """A configured serializer, as SequenceTokenizer.train makes one (without the text tokenizer)."""
    kind = SERIALIZERS[structure]
    ser = kind(fields or kind.default_fields, {"structure": structure, **options})
    ser.check(values)
    ser.configure(values, source or {})
    return make_serializer(ser.fields, ser.options)


def pieces_of(ser, items) -> list:
    return [p for k, item in enumerate(items) for p in ser.tokens(item, first=k == 0)]


def sample(values, i):
    return {f: v[i] for f, v in values.items()}


def random_boxes(rng, b, k, view=S):
    """(b, k, 4) x0 y0 x1 y1 in view pixels, about a third reaching out of a centre crop."""
    centre = rng.uniform(0, view, (b, k, 2))
    size = rng.uniform(4, view / 2, (b, k, 2))
    return np.concatenate([centre - size / 2, centre + size / 2], -1).clip(0, view).astype(np.float32)


def expected_box(box, crop):
    """A box in a crop's frame, 0..1, written out by hand: shift, scale, mirror, clip; None if nothing is left."""
    top, left, h, w, flip = crop
    x0, x1 = (box[0] - left) / w, (box[2] - left) / w
    y0, y1 = (box[1] - top) / h, (box[3] - top) / h
    if flip:
        x0, x1 = 1 - x1, 1 - x0
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


# ------------------------------------------------------------------------------------------ text


def test_normalize_text_collapses_whitespace_and_composes_unicode_but_keeps_case():
    assert normalize_text("  A  cafe\u0301\t\n on   the Beach! ") == "A café on the Beach!"
    assert isinstance(normalize_text("x"), Text)
    assert normalize_text(" \n ") == ""


# ------------------------------------------------------------------------------------------ boxes


@pytest.mark.parametrize("crop", [WHOLE, np.array([40, 100, 200, 200, 0]), np.array([40, 100, 200, 200, 1]),
                                  np.array([0, 0, 192, 192, 1])])
def test_detection_boxes_move_into_the_crop_as_written_by_hand(crop):
    rng = np.random.default_rng(1)
    values = {"boxes": random_boxes(rng, 1, 40), "classes": rng.integers(0, 5, (1, 40)).astype(np.int32),
              "scores": np.sort(rng.uniform(0.3, 1, (1, 40)))[:, ::-1].astype(np.float32),
              "count": np.array([37], np.int32)}
    ser = serializer("detection", values, class_tokens="ids", num_classes=5)
    items = ser.items(sample(values, 0), crop)

    expected = [(expected_box(b, crop), int(c)) for b, c in zip(values["boxes"][0, :37], values["classes"][0])]
    expected = [(b, c) for b, c in expected if b is not None]  # score order = stored order
    assert 0 < len(items) == len(expected)
    if crop[2] < S:
        assert len(items) < 37  # some boxes lay wholly outside the crop and were dropped
    for item, (box, c) in zip(items, expected):
        assert np.abs(np.array(item[:4]) / 999 - box).max() <= 0.5 / 999 + 1e-6  # the nearest of 1000 levels
        assert item[4] == c
    assert ser.parse(pieces_of(ser, items)) == items


def test_detection_class_words_scores_and_area_order():
    values = {"boxes": np.array([[[0, 0, 10, 10], [0, 0, 200, 100], [50, 50, 100, 300], [0, 0, 0, 0]]], np.float32),
              "classes": np.array([[2, 0, 1, -1]], np.int32), "scores": np.array([[0.9, 0.8, 0.35, 0]], np.float32),
              "count": np.array([3], np.int32)}
    source = {"config": {"id2label": {"0": "person", "1": "traffic  light", "2": "Café"}}}  # provenance layout
    ser = serializer("detection", values, source=source, order="area", scores=True)
    assert ser.options["class_tokens"] == "words"
    items = ser.items(sample(values, 0), WHOLE)
    assert [it[4] for it in items] == [0, 1, 2]  # largest area first: 200x100, 50x250, 10x10
    assert [it[5] for it in items] == [7, 3, 8]  # scores 0.8, 0.35, 0.9 on 10 levels
    pieces = pieces_of(ser, items)
    assert pieces[:7] == ["<box>", "<c0>", "<c0>", "<c520>", "<c260>", "person", "<v7>"]
    assert isinstance(pieces[5], Text) and pieces[12] == "traffic light"  # names normalised like any text
    assert ser.parse(pieces) == items
    decoded = ser.arrays([items])
    assert decoded["classes"][0].tolist() == [0, 1, 2, -1] and decoded["count"][0] == 3
    np.testing.assert_allclose(decoded["scores"][0, :3], [7 / 9, 3 / 9, 8 / 9], rtol=1e-6)


def test_sam_boxes_have_no_class_and_default_to_largest_first():
    values = {"boxes": np.array([[[0, 0, 10, 10], [0, 0, 300, 300], [10, 10, 60, 60]]], np.float32),
              "scores": np.array([[0.99, 0.95, 0.9]], np.float32), "areas": np.array([[100, 90000, 2500]]),
              "count": np.array([3], np.int32)}
    ser = serializer("sam", values)
    items = ser.items(sample(values, 0), WHOLE)
    assert [it[2] for it in items] == [round(300 / 384 * 999), round(60 / 384 * 999), round(10 / 384 * 999)]
    assert pieces_of(ser, items[:1]) == ["<box>", "<c0>", "<c0>", "<c780>", "<c780>"]
    assert set(ser.arrays([items])) == {"boxes", "count"}


def test_malformed_items_are_skipped_not_fatal():
    values = {"boxes": np.zeros((1, 4, 4), np.float32), "classes": np.zeros((1, 4), np.int32),
              "scores": np.zeros((1, 4), np.float32), "count": np.zeros(1, np.int32)}
    ser = serializer("detection", values, class_tokens="ids", num_classes=3)
    good = ["<box>", "<c1>", "<c2>", "<c3>", "<c4>", "<cls2>"]
    bad = [Text("junk"), "<c5>", "<box>", "<c1>", "<c2>", "<box>", "<c1>", "<c2>", "<c3>", "<cls9>",
           "<box>", "<c1>", "<v2>", "<c3>", "<c4>"]
    assert ser.parse(bad + good) == [(1, 2, 3, 4, 2, 0)]


# ------------------------------------------------------------------------------------------ pose


def person_values():
    """One person in the left half: left wrist at x 100, right wrist at x 150, left ankle hidden (score 0.1)."""
    keypoints = np.zeros((1, 2, 17, 2), np.float32)
    keypoints[0, 0, :, 0] = np.linspace(90, 170, 17)
    keypoints[0, 0, :, 1] = np.linspace(60, 300, 17)
    keypoints[0, 0, 9] = (100, 200)  # left_wrist
    keypoints[0, 0, 10] = (150, 210)  # right_wrist
    scores = np.full((1, 2, 17), 0.9, np.float32)
    scores[0, 0, 15] = 0.1  # left_ankle: not visible
    scores[0, 1] = 0
    boxes = np.array([[[80, 50, 180, 310], [0, 0, 0, 0]]], np.float32)
    return {"keypoints": keypoints, "keypoint_scores": scores, "boxes": boxes, "count": np.array([1], np.int32)}


def test_pose_flip_mirrors_x_and_swaps_left_and_right():
    values = person_values()
    ser = serializer("pose", values)
    assert ser.options["keypoints"] == COCO_KEYPOINTS
    plain = ser.items(sample(values, 0), WHOLE)[0][4]
    flipped = ser.items(sample(values, 0), np.array([0, 0, S, S, 1]))[0][4]
    q = lambda x: round(x / S * 999)  # noqa: E731
    assert plain[9] == (q(100), q(200)) and plain[10] == (q(150), q(210))
    # mirrored, the person's left wrist is the one that was on the right (x 150), now at 384 - 150
    assert flipped[9] == (q(S - 150), q(210)) and flipped[10] == (q(S - 100), q(200))
    assert flipped[0] == (q(S - values["keypoints"][0, 0, 0, 0]), q(values["keypoints"][0, 0, 0, 1]))  # the nose
    assert plain[15] is None and flipped[16] is None and flipped[15] is not None  # the hidden ankle moved sides


def test_pose_keypoints_outside_the_crop_are_none_and_people_outside_are_dropped():
    values = person_values()
    ser = serializer("pose", values)
    crop = np.array([0, 0, 200, 200, 0])  # keeps y < 200: the upper body
    (item,) = ser.items(sample(values, 0), crop)
    ys = values["keypoints"][0, 0, :, 1]
    assert [kp is None for kp in item[4]] == [bool(y > 200) or j == 15 for j, y in enumerate(ys)]
    pieces = pieces_of(ser, [item])
    assert pieces.count("<kp_none>") == sum(kp is None for kp in item[4])
    assert len(pieces) == 5 + sum(1 if kp is None else 2 for kp in item[4])
    assert ser.parse(pieces) == [item]
    assert ser.items(sample(values, 0), np.array([0, 250, 100, 100, 0])) == []  # crop right of the person
    decoded = ser.arrays([[item]])
    assert decoded["keypoint_scores"][0, 0].tolist() == [0.0 if kp is None else 1.0 for kp in item[4]]


def test_pose_needs_names_for_other_skeletons():
    values = {"keypoints": np.zeros((1, 1, 5, 2), np.float32), "keypoint_scores": np.zeros((1, 1, 5), np.float32),
              "boxes": np.zeros((1, 1, 4), np.float32), "count": np.zeros(1, np.int32)}
    with pytest.raises(UserError, match="5 keypoints per person"):
        serializer("pose", values)
    ser = serializer("pose", values, keypoints=["head", "left_hand", "right_hand", "left_foot", "right_foot"])
    assert ser.flip_order.tolist() == [0, 2, 1, 4, 3]


# ------------------------------------------------------------------------------------------ palette


def test_palette_quantizes_channels_and_shares():
    rng = np.random.default_rng(2)
    colors = rng.integers(0, 256, (3, 7, 3)).astype(np.uint8)
    weights = rng.dirichlet(np.ones(7), 3).astype(np.float32)
    values = {"colors": colors, "weights": weights, "count": np.array([7, 3, 0], np.int32)}
    ser = serializer("palette", values)
    rows = [ser.items(sample(values, i), WHOLE) for i in range(3)]
    assert [len(r) for r in rows] == [7, 3, 0]
    assert all(ser.parse(pieces_of(ser, r)) == r for r in rows)
    out = ser.arrays(rows)
    assert np.abs(out["colors"][0].astype(int) - colors[0]).max() <= 4  # 32 levels: the middle of 8 values
    assert np.abs(out["weights"][0] - weights[0]).max() <= 0.5 / 31 + 1e-6
    assert out["colors"][1, 3:].max() == 0 and out["count"].tolist() == [7, 3, 0]
    exact = serializer("palette", values, color_bins=256)
    assert np.array_equal(exact.arrays([exact.items(sample(values, 0), WHOLE)])["colors"][0], colors[0])


# ------------------------------------------------------------------------------------------ metadata


def test_metadata_numbers_bools_and_words():
    values = {"brightness": np.array([0.5, 1.3], np.float32), "sharpness": np.array([250.0, 0.0], np.float32),
              "orig_width": np.array([4000, 17], np.int32), "exif_rotated": np.array([True, False]),
              "format": np.array(["JPEG", "  PNG "], dtype=object), "iso": np.array([100, 3200], np.int64)}
    ser = serializer("metadata", values, fields=list(values), metadata={"brightness": {"bins": 11}})
    assert ser.options["metadata"]["iso"] == {"scale": "linear", "min": 100.0, "max": 3200.0, "dtype": "int64",
                                              "bins": 32}  # unknown field: linear over the training range
    rows = [ser.items(sample(values, i), WHOLE) for i in range(2)]
    assert rows[0][0] == ("brightness", 5) and rows[1][0] == ("brightness", 10)  # clipped to 0..1
    assert rows[1][4] == ("format", "PNG")
    assert pieces_of(ser, rows[0])[:4] == ["<brightness>", "<v5>", "<sharpness>", "<v15>"]
    assert all(ser.parse(pieces_of(ser, r)) == r for r in rows)
    out = ser.arrays(rows)
    assert out["brightness"].tolist() == [0.5, 1.0]
    assert abs(np.log(out["sharpness"][0] / 250)) <= np.log(1e5) / 31 / 2 + 1e-6  # log scale: half a bin
    assert out["sharpness"][1] == 1.0  # below the range: its floor
    assert out["orig_width"].dtype == np.int32 and abs(np.log(out["orig_width"][0] / 4000)) <= np.log(1024) / 62
    assert out["exif_rotated"].tolist() == [True, False] and out["format"].tolist() == ["JPEG", "PNG"]
    assert out["iso"].dtype == np.int64 and abs(out["iso"][1] - 3200) == 0
    missing = ser.arrays([rows[0][:2]])  # fields cut off the end come back empty
    assert missing["orig_width"][0] == -1 and missing["iso"][0] == -1 and missing["format"][0] == ""
    assert not missing["exif_rotated"][0]


def test_metadata_bad_spec_is_a_user_error():
    values = {"sharpness": np.array([1.0], np.float32)}
    with pytest.raises(UserError, match="min > 0 for log"):
        serializer("metadata", values, fields=["sharpness"], metadata={"sharpness": {"min": 0}})


# ------------------------------------------------------------------------------------------ captions


def test_captions_join_with_sep_and_skip_empty_ones():
    values = {"captions": np.array([["a dog", "", "two  cats"], ["", "", ""]], dtype=object),
              "count": np.array([3, 0], np.int32)}
    ser = serializer("caption", values)
    rows = [ser.items(sample(values, i), WHOLE) for i in range(2)]
    assert rows == [[("a dog",), ("two cats",)], []]
    assert pieces_of(ser, rows[0]) == ["a dog", "<sep>", "two cats"]
    assert ser.parse(pieces_of(ser, rows[0])) == rows[0]
    out = ser.arrays(rows)
    assert out["captions"].tolist() == [["a dog", "two cats", ""], ["", "", ""]] and out["count"].tolist() == [2, 0]


# ------------------------------------------------------------------------------------------ picking and checking


def test_structure_is_what_the_teacher_declares_or_forced():
    assert structure_for("palette", {}) == "palette"  # the Palette teacher declares serializer = "palette"
    assert structure_for("captioner", {}) == "caption"  # the captioner's captions: a name that is no structure
    assert structure_for("", {}) == "caption"
    assert structure_for("my_boxes", {"structure": "detection"}) == "detection"
    assert structure_for("caption", {}) == "caption"  # a group no class made: a structure's own name, as before
    with pytest.raises(UserError, match="structure = palette"):
        structure_for("depth", {})  # a teacher that declares no structure
    # the provenance's spec names the class, whatever the group is called
    assert structure_for("boxes_of_mine", {}, {"spec": "detection=/models/rtdetr"}) == "detection"


def test_wrong_fields_or_shapes_are_user_errors():
    detection = {"boxes": np.zeros((2, 5, 4), np.float32), "classes": np.zeros((2, 5), np.int32),
                 "scores": np.zeros((2, 5), np.float32), "count": np.zeros(2, np.int32)}
    palette = SERIALIZERS["palette"](("colors", "weights", "count"), {})
    with pytest.raises(UserError, match=r"palette tokenizer: values lack colors, weights; it reads colors \(B, K, 3\)"):
        palette.check(detection)
    with pytest.raises(UserError, match=r"weights has shape \(2, 6\)"):
        palette.check({"colors": np.zeros((2, 5, 3)), "weights": np.zeros((2, 6)), "count": np.zeros(2)})
    with pytest.raises(UserError, match=r"boxes has shape \(2, 5, 5\)"):
        SERIALIZERS["detection"](("boxes", "classes", "scores", "count"), {}).check(
            {**detection, "boxes": np.zeros((2, 5, 5))})


# ------------------------------------------------------------------------------------------ sam instances


def test_sam_instances_box_then_mask_tokens_largest_first_and_cut_by_crops(tmp_path):
    """Real arrays as the SAM teacher stores them (masks_in_boxes of drawn masks) through an untrained mask
    tokenizer: the grammar, the order, crops and the round trip pieces -> items -> arrays do not need it trained."""
    import torch

    from omnimill.labelers.sam import mask_boxes, masks_in_boxes
    from omnimill.tokenize.base import TokenizerConfig
    from omnimill.tokenize.mask import new_mask_tokenizer

    config = TokenizerConfig(kind="mask", teacher="sam", fields=["masks64"])
    torch.manual_seed(0)
    new_mask_tokenizer(config, {"shape": [4, 64, 64], "dtype": "bool"}, width=8, vocab=1024,
                       quantizer="fsq").save(tmp_path / "mask")
    yy, xx = np.mgrid[:S, :S]
    drawn = np.zeros((3, S, S), bool)
    drawn[0] = (yy - 100) ** 2 + (xx - 120) ** 2 <= 60 ** 2  # a disc
    drawn[1, 150:350, 50:300] = True  # a large rectangle over part of the disc
    drawn[2, 140:170, 300:330] = True  # a small one
    masks = torch.from_numpy(drawn)
    boxes = mask_boxes(masks)
    values = {"boxes": np.zeros((1, 4, 4), np.float32), "masks64": np.zeros((1, 4, 64, 64), bool),
              "count": np.array([3], np.int32)}
    values["boxes"][0, :3] = boxes.numpy()
    values["masks64"][0, :3] = masks_in_boxes(masks, boxes).numpy()
    with pytest.raises(UserError, match="mask_tokenizer"):
        serializer("sam_instances", values)
    ser = serializer("sam_instances", values, mask_tokenizer=str(tmp_path / "mask"))
    assert ser.options["mask_tokens"] == 16 and ser.options["mask_vocab"] == 1000 and ser.max_items == 4
    assert len(ser.options["mask_tokenizer_sha256"]) == 64

    items = ser.items(sample(values, 0), WHOLE)
    assert [it[:4] for it in items] == [tuple(round(v / S * 999) for v in values["boxes"][0, j]) for j in (1, 0, 2)]
    tokens = ser.mask_tokenizer.encode_masks(values["masks64"][0, [1, 0, 2]])
    assert [it[4] for it in items] == [tuple(t) for t in tokens.tolist()]
    pieces = pieces_of(ser, items)
    assert len(pieces) == 3 * 21 and pieces[:5] == ["<box>", *(f"<c{q}>" for q in items[0][:4])]
    assert pieces[5:21] == [f"<m{t}>" for t in items[0][4]]
    assert ser.parse(pieces) == items
    assert ser.parse([Text("junk"), *pieces[:20], *pieces[21:]]) == items[1:]  # a mask token short: skipped
    decoded = ser.arrays([items])
    assert decoded["count"].tolist() == [3] and decoded["masks64"].shape == (1, 4, 64, 64)
    np.testing.assert_array_equal(decoded["masks64"][0, :3], ser.mask_tokenizer.decode_masks(tokens))
    assert not decoded["masks64"][0, 3].any() and not decoded["boxes"][0, 3].any()
    empty = {"boxes": values["boxes"][0], "masks64": values["masks64"][0], "count": np.int32(0)}
    assert ser.items(empty, WHOLE) == [] and ser.arrays([[]])["count"].tolist() == [0]

    crop = np.array([100, 200, 200, 200, 1])  # x 200..400, y 100..300, mirrored: the disc is outside
    items = ser.items(sample(values, 0), crop)
    assert len(items) == 2
    for item, j in zip(items, (1, 2)):
        box = expected_box(values["boxes"][0, j], crop)
        assert item[:4] == tuple(int(round(v * 999)) for v in box)
    from omnimill.tokenize.mask import crop_instances

    _, cut, _ = crop_instances(values["boxes"][0, :3], values["masks64"][0, :3], crop)
    assert cut[1].all()  # the rectangle still fills what is left of its box
    assert items[0][4] == tuple(ser.mask_tokenizer.encode_masks(cut[1:2])[0].tolist())
