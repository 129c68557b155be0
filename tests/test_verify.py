"""`shards verify` finds truncation, flipped bytes and missing modalities, and names shard and sample."""

from __future__ import annotations

import io
import shutil
import tarfile

import pytest

from omnimill.shards.verify import verify
from omnimill.shards.wds import export_wds


@pytest.fixture
def shards(token_data, tmp_path):
    out = tmp_path / "shards"
    export_wds(token_data["tokens"], str(out), samples_per_shard=12)
    return out


def member_span(tar_path, name):
    """(start, size) of a member's data in the tar file."""
    with tarfile.open(tar_path) as tar:
        info = tar.getmember(name)
        return info.offset_data, info.size


def problems(report):
    return [(p["where"], p["key"], p["reason"]) for p in report["problems"]]


def test_whole_store_and_shards_verify(token_data, shards):
    assert verify(token_data["tokens"])["problems"] == []
    report = verify(str(shards))
    assert report["problems"] == [] and report["samples"] == 40 and report["units"] == 4


def test_flipped_byte_names_the_sample(shards):
    tar = shards / "shard-000001.tar"
    with tarfile.open(tar) as t:
        key = t.getnames()[3].split(".")[0]
    start, size = member_span(tar, f"{key}.palette.npy")
    data = bytearray(tar.read_bytes())
    data[start + size - 2] ^= 0x01  # inside the token payload
    tar.write_bytes(bytes(data))
    found = problems(verify(str(shards)))
    assert ("shard-000001.tar", "-", "sha256 differs from the manifest (damaged bytes)") in found
    assert ("shard-000001.tar", key, "palette bytes damaged (crc32 mismatch)") in found


def test_truncated_shard(shards):
    tar = shards / "shard-000002.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2 + 100])
    found = problems(verify(str(shards)))
    assert any(w == "shard-000002.tar" and "bytes, the manifest says" in r for w, _, r in found)
    assert any(w == "shard-000002.tar" and "samples, the manifest says 12" in r for w, _, r in found)


def test_missing_modality_member(shards, tmp_path):
    tar = shards / "shard-000000.tar"
    rebuilt = io.BytesIO()
    with tarfile.open(tar) as src, tarfile.open(fileobj=rebuilt, mode="w", format=tarfile.GNU_FORMAT) as dst:
        names = src.getnames()
        victim = next(n for n in names if n.endswith(".rgb_image.npy"))
        for info in src.getmembers():
            if info.name != victim:
                dst.addfile(info, src.extractfile(info))
    tar.write_bytes(rebuilt.getvalue())
    found = problems(verify(str(shards)))
    key = victim.split(".")[0]
    assert ("shard-000000.tar", key, "missing modality rgb_image (the json lists it)") in found


def test_missing_shard_and_damaged_store(token_data, shards, tmp_path):
    (shards / "shard-000003.tar").unlink()
    assert ("shard-000003.tar", "-", "missing") in problems(verify(str(shards)))

    store = tmp_path / "tokens.zarr"
    shutil.copytree(token_data["tokens"], store)
    import zarr

    group = zarr.open_group(str(store), mode="r+")
    tokens = group["palette/tokens"]
    row = tokens[5]
    row[0, 0] = 65535  # outside the palette vocabulary
    tokens[5] = row
    group["_runs/rgb_image/units"][2] = ""  # an uncommitted unit
    found = problems(verify(str(store)))
    key = str(group["keys"][5])
    assert ("palette", key, f"token outside the vocabulary [0, {group['palette'].attrs['tokenizer']['vocab_size']})") \
        in found
    assert ("rgb_image", "-", "unit 2 (samples 16-23) not tokenized") in found


def test_damaged_offset_index(shards):
    index = shards / "shard-000002.idx.npz"
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index.write_bytes(bytes(data))
    found = problems(verify(str(shards)))
    assert found == [("shard-000002.idx.npz", "-", "sha256 differs from the manifest (damaged bytes)")]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_problems_below_one_is_refused(shards, value):
    """0 problems reported would read as a whole shard set: the option is refused, not obeyed."""
    from typer.testing import CliRunner

    from omnimill.cli import app

    (shards / "shard-000003.tar").unlink()
    result = CliRunner().invoke(app, ["shards", "verify", str(shards), "--max-problems", value])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--max-problems must be at least 1" in lines[0], result.output
    assert CliRunner().invoke(app, ["shards", "verify", str(shards), "--max-problems", "1"]).exit_code == 1
