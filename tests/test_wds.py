"""Token store -> WebDataset shards: plain webdataset reads them, re-export is byte-identical, text corpora."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from omnimill.errors import UserError
from omnimill.store.tokens import TokenStore
from omnimill.engine.text import write_text_shards
from omnimill.shards.manifest import read_manifest
from omnimill.shards.wds import export_wds
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
                                 samples_per_shard=2).manifest
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


# --- Trust: --force removes only an export's own files, inputs are never outputs, kills leave nothing torn ---

from conftest import invoke, listing, one_line_error  # noqa: E402


@pytest.fixture
def stores(token_data, tmp_path):
    """Copies of the session's label and token stores (tests here point OUT at them), the copy of the token
    store naming the copy of the label store as its source."""
    import shutil

    import zarr

    labels, tokens = tmp_path / "labels.zarr", tmp_path / "tokens.zarr"
    shutil.copytree(token_data["labels"], labels)
    shutil.copytree(token_data["tokens"], tokens)
    group = zarr.open_group(str(tokens), mode="r+")
    group.attrs["source"] = {**group.attrs["source"], "store": str(labels)}
    return {"labels": labels, "tokens": tokens}


@pytest.fixture(scope="module")
def clean(token_data, tmp_path_factory):
    """A clean export with 6 samples per shard (7 shards): what every resumed export must equal."""
    out = tmp_path_factory.mktemp("clean") / "shards"
    export_wds(token_data["tokens"], str(out), samples_per_shard=6)
    return listing(out)


def same_shard_set(out, clean) -> None:
    """Byte-identical shards and indexes, nothing left over; only the manifest's `created` differs."""
    got = listing(out)
    assert sorted(got) == sorted(clean)
    assert {k: v for k, v in got.items() if k != "manifest.json"} == {k: v for k, v in clean.items()
                                                                     if k != "manifest.json"}
    strip = lambda raw: {k: v for k, v in json.loads(raw).items() if k != "created"}  # noqa: E731
    assert strip(got["manifest.json"]) == strip(clean["manifest.json"])
    result = invoke("shards", "verify", out)
    assert result.exit_code == 0 and result.output.startswith("ok"), result.output


def test_force_removes_only_an_exports_files(token_data, tmp_path):
    out = tmp_path / "out"
    export_wds(token_data["tokens"], str(out), samples_per_shard=10)
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "shard-000009.tar").write_bytes(b"not ours: not in OUT itself")
    (out / "shard-1.tar").write_bytes(b"not an export's name")
    again = export_wds(token_data["tokens"], str(out), samples_per_shard=40, force=True)
    assert len(again["shards"]) == 1
    assert sorted(listing(out)) == ["manifest.json", "mine/shard-000009.tar", "notes.txt", "shard-000000.idx.npz",
                                    "shard-000000.tar", "shard-1.tar"]
    assert (out / "notes.txt").read_text() == "mine"


def test_force_uses_a_folder_of_other_files_and_keeps_them(token_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_wds(token_data["tokens"], str(out))
    export_wds(token_data["tokens"], str(out), samples_per_shard=40, force=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "manifest.json").exists()


def test_force_refuses_shards_that_no_export_wrote(token_data, tmp_path):
    """`shard-000000.tar` is webdataset's own naming: without a manifest or _export/ they are the user's."""
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "shard-000000.tar").write_bytes(b"a user's webdataset shard")
    result = invoke("shards", "export", token_data["tokens"], out, "--force")
    one_line_error(result, "but no omnimill export")
    (out / "manifest.json").write_text('{"format": "someone else"}')
    one_line_error(invoke("shards", "export", token_data["tokens"], out, "--force"), "manifest.json omnimill did not")
    assert listing(out) == {"manifest.json": b'{"format": "someone else"}',
                            "shard-000000.tar": b"a user's webdataset shard"}


@pytest.mark.parametrize("where", ["tokens", "tokens/sub", "labels", "labels/shards"])
def test_out_in_an_input_store_is_refused_and_the_store_intact(stores, where):
    kind, _, sub = where.partition("/")
    out = stores[kind] / sub if sub else stores[kind]
    before = {k: listing(stores[k]) for k in stores}
    result = invoke("shards", "export", stores["tokens"], out, "--force")
    one_line_error(result, f"the {'token' if kind == 'tokens' else 'label'} store")
    assert {k: listing(stores[k]) for k in stores} == before
    assert invoke("shards", "verify", stores["tokens"]).exit_code == 0


def test_overlap_of_urls_compares_normalised_paths(tmp_path):
    from omnimill.paths import refuse_overlap

    with pytest.raises(UserError, match="inside the token store"):
        refuse_overlap("s3://bucket/tokens.zarr/shards", {"the token store": "s3://bucket//tokens.zarr/"})
    with pytest.raises(UserError, match="is the label store"):
        refuse_overlap("memory://x/labels.zarr/", {"the label store": "memory:///x/./labels.zarr"})
    refuse_overlap("s3://bucket/tokens.zarr2", {"the token store": "s3://bucket/tokens.zarr"})  # a sibling
    refuse_overlap("gs://bucket/tokens.zarr", {"the token store": "s3://bucket/tokens.zarr"})
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UserError, match="inside the token store"):
        refuse_overlap(str(tmp_path / "link" / "out"), {"the token store": str(tmp_path / "real")})


@pytest.mark.parametrize("value", ["0", "-3"])
def test_samples_per_shard_below_one_writes_nothing(token_data, tmp_path, value):
    out = tmp_path / "out"
    one_line_error(invoke("shards", "export", token_data["tokens"], out, "--samples-per-shard", value),
                   "--samples-per-shard must be at least 1")
    assert not out.exists()
    assert invoke("shards", "export", token_data["tokens"], out, "--samples-per-shard", "40").exit_code == 0


# A kill in the middle of writing one file: `open` hands back a file whose first write writes `fraction` of
# its bytes and SIGKILLs the process, whatever name the file is being written under (its final name or a temp).
KILLER = """
import builtins, os, signal, sys
target, fraction = sys.argv[1], float(sys.argv[2])
real_open = builtins.open

class Torn:
    def __init__(self, f):
        self._f = f
    def __getattr__(self, name):
        return getattr(self._f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self._f.close()
    def write(self, data):
        self._f.write(data[:int(len(data) * fraction)])
        self._f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

def torn_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    return Torn(f) if "w" in mode and target in os.path.basename(str(file)) else f

builtins.open = torn_open
from omnimill.cli import app
app(sys.argv[3:], prog_name="omnimill")
"""


def killed_while_writing(target: str, fraction: float, *args) -> None:
    run = subprocess.run([sys.executable, "-c", KILLER, target, str(fraction), *map(str, args)],
                         capture_output=True, text=True)
    assert run.returncode == -9, run.stdout + run.stderr  # killed where intended, not finished or failed


@pytest.mark.parametrize("target, fraction", [
    ("manifest.json", 0.0),  # a 0-byte manifest
    ("manifest.json", 0.5),  # a truncated one
    ("shard-000002.tar.json", 0.5),  # shard 2's note in _export/
    ("shard-000003.tar", 0.5),  # a torn tar
    ("shard-000003.idx.npz", 0.5),  # a torn index
])
def test_a_kill_while_writing_then_the_same_command_gives_the_clean_shard_set(token_data, tmp_path, clean,
                                                                             target, fraction):
    out = tmp_path / "out"
    command = ("shards", "export", token_data["tokens"], out, "--samples-per-shard", "6")
    killed_while_writing(target, fraction, *command)
    result = invoke(*command)
    assert result.exit_code == 0, result.output
    same_shard_set(out, clean)


def test_a_noted_shard_cut_short_and_a_0_byte_manifest_are_redone(token_data, tmp_path, clean):
    """A shard noted as finished whose tar is shorter than its note says (its bytes never reached the disk),
    and the 0-byte manifest an older omnimill left when killed while writing it."""
    out = tmp_path / "out"
    export_wds(token_data["tokens"], str(out), samples_per_shard=6)
    rows = json.loads((out / "manifest.json").read_text())["shards"]
    (out / "manifest.json").write_bytes(b"")
    (out / "_export").mkdir()
    plan = {"tokens": token_data["tokens"], "created": TokenStore.open(token_data["tokens"]).group.attrs["created"],
            "samples_per_shard": 6, "modalities": list(json.loads(clean["manifest.json"])["modalities"])}
    (out / "_export" / "plan.json").write_text(json.dumps(plan))
    for row in rows:
        (out / "_export" / f"{row['name']}.json").write_text(json.dumps(row))
    tar = out / "shard-000004.tar"
    tar.write_bytes(tar.read_bytes()[:1000])
    export_wds(token_data["tokens"], str(out), samples_per_shard=6)
    same_shard_set(out, clean)


def test_on_an_object_store_force_keeps_other_files_and_an_unfinished_export_resumes(token_data, clean):
    """memory:// stands in for S3: no temp names, one PUT per file, the manifest commits the export."""
    import fsspec

    fs, out = fsspec.filesystem("memory"), "memory://trust/shards"
    names = lambda: sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/trust/shards", detail=False))  # noqa: E731
    try:
        export_wds(token_data["tokens"], out, samples_per_shard=20)
        fs.pipe_file("/trust/shards/notes.txt", b"mine")
        export_wds(token_data["tokens"], out, samples_per_shard=6, force=True)
        assert names() == sorted([*clean, "notes.txt"])
        assert {name: fs.cat_file(f"/trust/shards/{name}") for name in clean if name != "manifest.json"} == \
            {name: data for name, data in clean.items() if name != "manifest.json"}
        # What a kill before the manifest leaves: notes for shards 0-3, shard 4 not noted.
        rows = read_manifest(out)["shards"]
        fs.rm("/trust/shards/manifest.json")
        created = TokenStore.open(token_data["tokens"]).group.attrs["created"]
        fs.pipe_file("/trust/shards/_export/plan.json", json.dumps(
            {"tokens": token_data["tokens"], "created": created, "samples_per_shard": 6,
             "modalities": list(json.loads(clean["manifest.json"])["modalities"])}).encode())
        for row in rows[:4]:
            fs.pipe_file(f"/trust/shards/_export/{row['name']}.json", json.dumps(row).encode())
        export_wds(token_data["tokens"], out, samples_per_shard=6)
        assert names() == sorted([*clean, "notes.txt"]) and read_manifest(out)["shards"] == rows
    finally:
        fs.rm("/trust", recursive=True)
