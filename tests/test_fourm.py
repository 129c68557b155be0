"""`omnimill shards export --format 4m`: shards and a data config that apple/ml-4m's trainer reads unchanged.

A real label store (rgb, palette, metadata, canny, a tiny real detector) and token store (tiny spatial
tokenizers: rgb 4 x 4 tokens, canny 14 x 14 = ml-4m's 196) are exported and read back with plain
webdataset; every member is checked against what ml-4m's loader does with it (fourm/data/unified_datasets.py:
split at the first dot, strip the extension, pick each listed domain out of every sample).
"""

from __future__ import annotations

import io
import json
import os
import hashlib

import braceexpand
import numpy as np
import pytest
import webdataset as wds
import yaml
from PIL import Image

from conftest import invoke, listing, one_line_error, write_images
from omnimill.errors import UserError
from omnimill.shards.fourm import FORMAT, decode_key, encode_key, export_4m
from omnimill.shards.fourm_domains import caption_stats, metadata_json, palette_json
from omnimill.store.labels import LabelStore
from omnimill.store.tokens import TokenStore
from test_detection import tiny_detector

S = 64  # view size
CAPTIONED = 9  # of 14 good images; the other 5 form a second dataset
# ml-4m's MetadataTransform.metadata_id_map: any other key raises KeyError there
ML4M_METADATA = {"original_width", "original_height", "caption_n_chars", "caption_n_words", "caption_n_sentences",
                 "n_humans", "n_sam_instances", "n_coco_instances", "coco_instance_diversity", "colorfulness",
                 "brightness", "contrast", "saturation", "entropy", "walkability", "objectness",
                 "semantic_diversity", "geometric_complexity", "occlusion_score", "watermark_score",
                 "aesthetic_score"}


@pytest.fixture(scope="module")
def fourm_data(tmp_path_factory) -> dict:
    from omnimill.engine.label import label
    from omnimill.engine.tokenize import tokenize
    from omnimill.tokenize.train import train_tokenizer

    root = tmp_path_factory.mktemp("fourm")
    corpus = root / "corpus"
    paths = write_images(corpus, 14, size=(80, 64))
    captions = {}
    for i, path in enumerate(paths[:CAPTIONED]):
        captions[path.stem] = f"a picture number {i}. it has colours!"
        path.with_suffix(".txt").write_text(captions[path.stem] + "\n")
    (corpus / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    detector = tiny_detector(root / "detector", person_bias=4.0)  # every query finds a person
    labels = str(root / "labels.zarr")
    result = label(str(corpus), labels, ["rgb", "palette", "metadata", "canny", f"detection={detector}"],
                   workers=1, unit_size=8, view_size=S, progress=False)
    assert result.store_failed == 5  # the broken image, once per teacher
    tok = root / "tokenizers"
    small = dict(steps=3, batch_size=4, width=8, progress=False, holdout=0.2)
    tokenizers = [train_tokenizer(labels, "rgb/image", "spatial", tok / "rgb", input_size=32, grid=4, vocab=64, **small),
                  train_tokenizer(labels, "canny/edges", "spatial", tok / "canny", input_size=56, grid=14, vocab=1024,
                                  **small)]
    tokens = str(root / "tokens.zarr")
    assert tokenize(labels, tokens, [str(p) for p in tokenizers], n_crops=3, workers=1, progress=False).exit_code == 0
    return {"root": root, "labels": labels, "tokens": tokens, "captions": captions}


def read_dataset(data_path: str) -> list[dict]:
    """A dataset as plain webdataset reads it: members by extension, jpg as PIL, npy as arrays, json parsed."""
    return list(wds.WebDataset(data_path, shardshuffle=False).decode("pil"))


def as_ml4m(sample: dict, domains: list[str]) -> dict:
    """What ml-4m's loader does: strip the extension (remove_extensions), then take every domain from its path
    (rename_modalities: rgb@224 reads `rgb`, the rest their own name; a missing one is ml-4m's KeyError)."""
    stripped = {os.path.splitext(k)[0]: v for k, v in sample.items()}
    return {d: stripped["rgb" if d == "rgb@224" else d] for d in [*domains, "crop_settings"]}


def test_export_reads_back_with_plain_webdataset_member_by_member(fourm_data, tmp_path):
    out = tmp_path / "4m"
    manifest = export_4m(fourm_data["tokens"], str(out), samples_per_shard=4, allow_shapes=True)
    tokens, labels = TokenStore.open(fourm_data["tokens"]), LabelStore.open(fourm_data["labels"])
    keys = [str(k) for k in tokens.read("keys")]

    assert manifest["format"] == FORMAT and manifest["n"] == 14 and manifest["n_crops"] == 3
    assert manifest["source"]["labels_uuid"] == labels.uuid and manifest["source"]["tokens_uuid"] == tokens.uuid
    assert sum(manifest["left_out"].values()) == 1  # the broken image has no tokens
    assert len(manifest["warnings"]) == 1 and "tok_rgb@224" in manifest["warnings"][0]  # 16 tokens, not 196
    config = yaml.safe_load((out / "data_config.yaml").read_bytes())
    assert manifest["config"]["sha256"] == hashlib.sha256((out / "data_config.yaml").read_bytes()).hexdigest()
    datasets = config["train"]["datasets"]
    assert list(datasets) == ["ds00", "ds01"] == list(manifest["datasets"])
    assert config["train"]["weights"] == pytest.approx([CAPTIONED / 14, 5 / 14], abs=1e-5)

    rgb_tokens, canny_tokens = tokens.read("rgb_image/tokens"), tokens.read("canny_edges/tokens")
    crops, views = tokens.read("crops"), labels.read("rgb/image")
    det = labels.outputs("detection")
    seen = []
    for name, cfg in datasets.items():
        # the keys ml-4m's get_train_dataloader / setup_sampling_mod_info read, with values it accepts
        assert cfg["type"] == "multimodal" and cfg["use_wds"] is True and cfg["tok_train_aug"] is True
        assert cfg["main_augment_domain"] == "rgb@224" and cfg["alphas_config"] is None
        float(cfg["input_alphas"]), float(cfg["target_alphas"])
        in_domains, out_domains = cfg["in_domains"].split("-"), cfg["out_domains"].split("-")
        assert set(in_domains) == set(out_domains) | {"rgb@224"} and "rgb@224" not in out_domains
        expected = {"rgb@224", "tok_rgb@224", "tok_canny_edge@224", "det", "metadata", "color_palette"}
        assert set(in_domains) == (expected | {"caption"} if name == "ds00" else expected)
        # data_path: absolute, and its brace range is exactly the tars in the folder
        assert cfg["data_path"] == manifest["datasets"][name]["data_path"] and cfg["data_path"].startswith(str(out))
        files = sorted(p.name for p in (out / name).iterdir())
        assert [os.path.basename(p) for p in braceexpand.braceexpand(cfg["data_path"])] == files
        for shard in manifest["datasets"][name]["shards"]:
            assert hashlib.sha256((out / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]

        samples = read_dataset(cfg["data_path"])
        assert len(samples) == manifest["datasets"][name]["samples"] == (CAPTIONED if name == "ds00" else 5)
        for sample in samples:
            members = {k for k in sample if not k.startswith("__")}
            assert members == {"crop_settings.npy", "rgb.jpg", "tok_rgb@224.npy", "tok_canny_edge@224.npy", "det.json",
                               "metadata.json", "color_palette.json"} | ({"caption.txt"} if name == "ds00" else set())
            mod = as_ml4m(sample, in_domains)  # no KeyError: every listed domain is there
            key = sample["__key__"]
            i = keys.index(decode_key(key))
            seen.append(i)
            assert "." not in key
            np.testing.assert_array_equal(mod["crop_settings"], crops[i])
            assert mod["crop_settings"].dtype == np.int64 and mod["crop_settings"].shape == (3, 5)
            assert mod["crop_settings"][0].tolist() == [0, 0, S, S, 0]  # crop 0: the whole view
            for domain, array, length in (("tok_rgb@224", rgb_tokens, 16), ("tok_canny_edge@224", canny_tokens, 196)):
                assert mod[domain].dtype == np.int16 and mod[domain].shape == (3, length)
                np.testing.assert_array_equal(mod[domain], array[i])
            image = mod["rgb@224"]
            assert isinstance(image, Image.Image) and image.size == (S, S)
            assert np.abs(np.asarray(image.convert("RGB"), np.float32) - views[i]).mean() < 4  # JPEG of the view
            instances = mod["det"]["instances"]
            assert len(instances) == int(det["count"][i]) > 0
            for inst, box in zip(instances, det["boxes"][i]):
                assert set(inst) == {"boxes", "class_name", "score"} and inst["class_name"] == "person"
                x0, y0, x1, y1 = inst["boxes"]
                assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
                np.testing.assert_allclose(inst["boxes"], np.clip(box / S, 0, 1), atol=1e-6)
            meta = mod["metadata"]
            assert set(meta) <= ML4M_METADATA and meta["original_width"] == 80 and meta["original_height"] == 64
            assert 0 <= meta["brightness"] <= 255 and 0 <= meta["contrast"] <= 127.5
            assert meta["n_coco_instances"] == meta["n_humans"] == len(instances)
            palette = mod["color_palette"]
            assert isinstance(palette, list) and len(palette) == 1 and sorted(palette[0], key=int) == list("1234567")
            for k, colors in palette[0].items():
                assert np.array(colors).shape == (int(k), 3) and 0 <= np.min(colors) and np.max(colors) <= 255
            if name == "ds00":
                assert mod["caption"] == fourm_data["captions"][decode_key(key)]
                assert meta["caption_n_words"] == len(mod["caption"].split()) and meta["caption_n_sentences"] == 2
            else:
                assert "caption_n_chars" not in meta
    assert sorted(seen) == [i for i, k in enumerate(keys) if not k.startswith("zz_")]


def test_a_wrong_token_length_is_one_line_exit_2_and_nothing_written(fourm_data, tmp_path):
    out = tmp_path / "4m"
    result = invoke("shards", "export", fourm_data["tokens"], out, "--format", "4m")
    one_line_error(result, "tok_rgb@224")
    for fragment in ("16 tokens per crop", "expects 196", "--preset 4m", "rgb/image"):
        assert fragment in result.output
    assert not out.exists()
    with pytest.raises(UserError, match="tok_rgb@224"):
        export_4m(fourm_data["tokens"], str(out))
    assert not out.exists()


def test_ml4m_shapes_pass_and_modalities_choose_the_domains(fourm_data, tmp_path):
    out = tmp_path / "4m"
    result = invoke("shards", "export", fourm_data["tokens"], out, "--format", "4m", "-m", "tok_canny_edge@224",
                    "-m", "caption", "--samples-per-shard", "100")
    assert result.exit_code == 0, result.output
    assert "14 samples" in result.output and "data_config.yaml" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["warnings"] == [] and set(manifest["domains"]) == {"rgb@224", "tok_canny_edge@224", "caption"}
    assert {n: d["domains"] for n, d in manifest["datasets"].items()} == {
        "ds00": ["caption", "rgb@224", "tok_canny_edge@224"], "ds01": ["rgb@224", "tok_canny_edge@224"]}
    config = yaml.safe_load((out / "data_config.yaml").read_text())
    assert config["train"]["datasets"]["ds01"]["data_path"].endswith("ds01/shard-{000000..000000}.tar")
    assert len(read_dataset(config["train"]["datasets"]["ds01"]["data_path"])) == 5
    one_line_error(invoke("shards", "export", fourm_data["tokens"], tmp_path / "x", "--format", "4m", "-m", "depth"),
                   "no ml-4m domain depth")
    one_line_error(invoke("shards", "export", fourm_data["tokens"], tmp_path / "y", "--allow-shapes"),
                   "--format 4m only")


def test_force_rules_as_wds_exports_have(fourm_data, tmp_path):
    out = tmp_path / "4m"
    args = ["shards", "export", fourm_data["tokens"], out, "--format", "4m", "--allow-shapes"]
    assert invoke(*args).exit_code == 0
    assert invoke("shards", "export", fourm_data["tokens"], tmp_path / "again", "--format", "4m",
                  "--allow-shapes").exit_code == 0
    shards = {k: v for k, v in listing(out).items() if k.startswith("ds")}
    assert shards == {k: v for k, v in listing(tmp_path / "again").items() if k.startswith("ds")}  # byte-identical
    (out / "notes.txt").write_text("mine")
    one_line_error(invoke(*args), "already holds an export")
    before = listing(out)
    assert invoke(*args, "--force", "--samples-per-shard", "3").exit_code == 0
    after = listing(out)
    assert after["notes.txt"] == b"mine" and "ds00/shard-000002.tar" in after and "ds00/shard-000000.tar" in before
    assert not any(name.startswith("_export") or name.endswith(".tmp") for name in after)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("x")
    one_line_error(invoke("shards", "export", fourm_data["tokens"], other, "--format", "4m", "--allow-shapes"),
                   "not empty")
    one_line_error(invoke("shards", "export", fourm_data["tokens"], tmp_path / "a[1]", "--format", "4m"), "[ ]")
    one_line_error(invoke("shards", "export", fourm_data["tokens"], os.path.join(fourm_data["tokens"], "x"),
                          "--format", "4m"), "inside the token store")


def test_keys_are_encoded_reversibly_without_dots():
    for key in ("a/b.c", "x%2Ey", "plain", "..%"):
        assert "." not in encode_key(key) and decode_key(encode_key(key)) == key


def test_sequence_values_in_ml4m_structures_and_scales():
    palette = palette_json(np.array([[255, 0, 0], [0, 0, 255], [0, 0, 0]], np.uint8), 2)
    assert palette[0]["1"] == [[255, 0, 0]] and palette[0]["3"] == [[255, 0, 0], [0, 0, 255], [255, 0, 0]]
    stats = dict(orig_width=640, orig_height=480, brightness=0.5, contrast=0.25, saturation=1.0, colorfulness=30.0,
                 entropy=7.0, sharpness=100.0)
    meta = metadata_json(stats, "One. Two!", {"classes": np.array([0, 2, 0, -1]), "count": 3, "person_class": 0}, 5)
    assert meta == {"original_width": 640, "original_height": 480, "brightness": 127.5, "contrast": 63.75,
                    "saturation": 255.0, "colorfulness": 30.0, "entropy": 7.0, **caption_stats("One. Two!"),
                    "n_coco_instances": 3, "coco_instance_diversity": 2, "n_humans": 2, "n_sam_instances": 5}
    assert caption_stats("One. Two!") == {"caption_n_chars": 9, "caption_n_words": 2, "caption_n_sentences": 2}


def test_a_moved_label_store_is_given_with_labels_and_checked_by_identity(fourm_data, tmp_path):
    import shutil

    import zarr

    from omnimill.store.tokens import TokenStore

    recorded = TokenStore.open(fourm_data["tokens"]).source["store"]
    assert recorded == fourm_data["labels"] and recorded.startswith("/")  # absolute: opens from any folder
    tokens = tmp_path / "tokens.zarr"
    shutil.copytree(fourm_data["tokens"], tokens)
    group = zarr.open_group(str(tokens), mode="r+")
    group.attrs["source"] = {**group.attrs["source"], "store": "elsewhere/labels.zarr"}  # as an older omnimill
    out = tmp_path / "4m"
    result = invoke("shards", "export", tokens, out, "--format", "4m", "--allow-shapes")
    one_line_error(result, "--labels PATH")
    assert not out.exists()
    moved = tmp_path / "moved-labels.zarr"
    shutil.copytree(fourm_data["labels"], moved)
    assert invoke("shards", "export", tokens, out, "--format", "4m", "--allow-shapes", "--labels", moved).exit_code == 0
    other = tmp_path / "other.zarr"  # another store at the given path: refused by identity
    shutil.copytree(fourm_data["labels"], other)
    zarr.open_group(str(other), mode="r+").attrs["uuid"] = "0" * 32
    refused = invoke("shards", "export", tokens, tmp_path / "4m-other", "--format", "4m", "--allow-shapes",
                     "--labels", other)
    one_line_error(refused, "not the one")


def test_verify_checks_a_4m_set_file_by_file_and_sample_by_sample(fourm_data, tmp_path):
    import hashlib
    import io
    import json
    import tarfile

    import numpy as np

    from omnimill.shards.verify import verify

    out = tmp_path / "4m"
    assert invoke("shards", "export", fourm_data["tokens"], out, "--format", "4m", "--allow-shapes",
                  "--samples-per-shard", "4").exit_code == 0
    clean = verify(str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert clean["problems"] == [] and clean["samples"] == manifest["n"] > 0
    assert invoke("verify", out).exit_code == 0

    first = next(iter(manifest["datasets"].values()))["shards"][0]
    shard = out / first["name"]
    original = shard.read_bytes()
    shard.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])  # one flipped bit
    assert any("sha256" in p["reason"] for p in verify(str(out))["problems"])
    assert invoke("shards", "verify", out).exit_code == 1

    # A token array of another length, in a shard the manifest vouches for: found sample by sample.
    with tarfile.open(fileobj=io.BytesIO(original)) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    victim = next(m.name for m, _ in members if ".tok_rgb@224" in m.name)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if info.name == victim:
                array = np.load(io.BytesIO(data))
                data_io = io.BytesIO()
                np.save(data_io, array[:, :-1])
                data = data_io.getvalue()
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard.write_bytes(buffer.getvalue())
    first["bytes"], first["sha256"] = len(buffer.getvalue()), hashlib.sha256(buffer.getvalue()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    problems = verify(str(out))["problems"]
    assert [p["key"] for p in problems] == [victim.split(".", 1)[0]] and "shape" in problems[0]["reason"]
