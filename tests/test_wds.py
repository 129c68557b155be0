"""Token store -> WebDataset shards: plain webdataset reads them, re-export is byte-identical, text corpora."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from omnimill.errors import UserError
from omnimill.shards.tokenstore import TokenStore
from omnimill.shards.wds import export_wds, read_manifest, write_text_shards
from omnimill.tokenize.base import directory_hash, load_tokenizer


def test_export_writes_shards_and_manifest(token_data, tmp_path):
    out = tmp_path / "shards"
    manifest = export_wds(token_data["tokens"], str(out), samples_per_shard=12)
    store = TokenStore.open(token_data["tokens"])
    assert manifest == read_manifest(str(out))
    assert manifest["n"] == 40 and [s["samples"] for s in manifest["shards"]] == [12, 12, 12, 4]
    assert set(manifest["modalities"]) == {"rgb_image", "palette", "caption"}
    assert manifest["modalities"]["rgb_image"]["samples"] == 38  # two broken images have no rgb tokens
    assert manifest["modalities"]["caption"]["samples"] == 40  # but they do have a (blank) caption
    for name, info in manifest["modalities"].items():
        assert info["sha256"] == store.tokenizer_info(name)["sha256"]
        assert info["sha256"] == directory_hash(token_data["tokenizers"][name.split("_")[0]])
        assert info["vocab_size"] == load_tokenizer(token_data["tokenizers"][name.split("_")[0]]).vocab_size
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + sorted(
        f"shard-00000{i}.{ext}" for i in range(4) for ext in ("tar", "idx.npz"))


def test_plain_webdataset_reads_the_shards_without_omnimill(token_data, tmp_path):
    out = tmp_path / "shards"
    export_wds(token_data["tokens"], str(out), samples_per_shard=16)
    script = f"""
import json, sys
sys.modules["omnimill"] = None  # any import of omnimill now fails
import webdataset as wds
ds = wds.WebDataset("{out}/shard-{{000000..000002}}.tar", shardshuffle=False).decode()
rows = [{{"key": s["__key__"], "json": s["json"], "rgb": s["rgb_image.npy"].tolist() if "rgb_image.npy" in s else None,
          "shape": list(s["caption.npy"].shape)}} for s in ds]
print(json.dumps(rows))
"""
    rows = json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                                     text=True).stdout)
    store = TokenStore.open(token_data["tokens"])
    keys = list(store.group["keys"][:])
    assert [r["key"] for r in rows] == keys
    rgb, ok = store.group["rgb_image/tokens"][:], store.group["rgb_image/ok"][:]
    for i, row in enumerate(rows):
        assert row["json"]["key"] == keys[i] and row["json"]["index"] == i
        assert row["shape"] == [2, 16]
        if ok[i]:
            np.testing.assert_array_equal(row["rgb"], rgb[i])
            np.testing.assert_array_equal(row["json"]["crops"], store.group["crops"][i])
        else:
            assert row["rgb"] is None  # absent, not padded


def test_reexport_is_byte_identical_and_refuses_a_full_folder(token_data, tmp_path):
    a = export_wds(token_data["tokens"], str(tmp_path / "a"), samples_per_shard=10)
    b = export_wds(token_data["tokens"], str(tmp_path / "b"), samples_per_shard=10)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    with pytest.raises(UserError, match="already holds an export"):
        export_wds(token_data["tokens"], str(tmp_path / "a"))  # holds a finished export
    again = export_wds(token_data["tokens"], str(tmp_path / "a"), samples_per_shard=40, force=True)
    assert len(again["shards"]) == 1


def test_a_folder_with_other_files_is_refused(token_data, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_wds(token_data["tokens"], str(tmp_path / "x"))


def test_export_chosen_modalities_and_wrong_names(token_data, tmp_path):
    manifest = export_wds(token_data["tokens"], str(tmp_path / "rgb"), modalities=["rgb_image"])
    assert list(manifest["modalities"]) == ["rgb_image"] and manifest["n"] == 38  # no rgb, no sample
    with pytest.raises(UserError, match="no modality depth"):
        export_wds(token_data["tokens"], str(tmp_path / "x"), modalities=["depth"])
    with pytest.raises(UserError, match="no token store"):
        export_wds(str(tmp_path / "missing.zarr"), str(tmp_path / "y"))


def test_text_shards_hold_only_text(token_data, tmp_path):
    texts = ["a small red boat on the water", "tree", "green field under a large sky"]
    manifest = write_text_shards(texts, ["t0", "t1", "t2"], token_data["tokenizers"]["caption"], str(tmp_path / "t"),
                                 samples_per_shard=2)
    assert manifest["n"] == 3 and list(manifest["modalities"]) == ["caption"] and len(manifest["shards"]) == 2
    tok = load_tokenizer(token_data["tokenizers"]["caption"])
    from omnimill.shards.sources import ShardSetSource

    source = ShardSetSource(str(tmp_path / "t"))
    units = [source.read_unit(0), source.read_unit(1)]
    assert [list(u.keys) for u in units] == [["t0", "t1"], ["t2"]]
    decoded = tok.decode(np.concatenate([u.tokens["caption"][:, 0] for u in units]))["caption"]
    assert list(decoded) == [tok.decode(tok.encode({"caption": np.array([t], object)}))["caption"][0] for t in texts]
    with pytest.raises(UserError, match="caption sequence tokenizer"):
        write_text_shards(texts, ["a", "b", "c"], token_data["tokenizers"]["rgb"], str(tmp_path / "u"))


def test_an_interrupted_export_resumes_without_redoing_finished_shards(token_data, tmp_path):
    whole = export_wds(token_data["tokens"], str(tmp_path / "whole"), samples_per_shard=6)
    out = tmp_path / "resumed"
    export_wds(token_data["tokens"], str(out), samples_per_shard=6)
    # What a kill after the third shard leaves: shards 0-2 noted as finished, shard 3 half written, no manifest.
    (out / "manifest.json").unlink()
    (out / "_export").mkdir()
    created = TokenStore.open(token_data["tokens"]).group.attrs["created"]
    (out / "_export" / "plan.json").write_text(json.dumps({"tokens": token_data["tokens"], "created": created,
                                                           "samples_per_shard": 6,
                                                           "modalities": list(whole["modalities"])}))
    for row in whole["shards"][:3]:
        (out / "_export" / f"{row['name']}.json").write_text(json.dumps(row))
    for row in whole["shards"][4:]:
        (out / row["name"]).unlink()
    (out / "shard-000003.tar").write_bytes(b"half")
    finished = {row["name"]: (out / row["name"]).stat().st_mtime_ns for row in whole["shards"][:3]}

    resumed = export_wds(token_data["tokens"], str(out), samples_per_shard=6)
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in whole["shards"]]
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == finished  # not rewritten
    assert not (out / "_export").exists()
    with pytest.raises(UserError, match="already holds an export"):
        export_wds(token_data["tokens"], str(out), samples_per_shard=6)
    (out / "manifest.json").unlink()
    (out / "_export").mkdir()
    (out / "_export" / "plan.json").write_text(json.dumps({"samples_per_shard": 99}))
    with pytest.raises(UserError, match="unfinished export of other settings"):
        export_wds(token_data["tokens"], str(out), samples_per_shard=6)
