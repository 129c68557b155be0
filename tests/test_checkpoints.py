"""Provenance a user can check: per-file sha256 of teacher checkpoints and tokenizer directories, equal to
what `sha256sum` prints (and to the sha256 the Hugging Face hub lists for LFS files)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from omnimill.labelers import checkpoints
from omnimill.labelers.base import TeacherSpec
from omnimill.labelers.registry import build
from omnimill.tokenize.base import TokenizerConfig, directory_hash, file_hashes
from omnimill.tokenize.vector import VectorTokenizer


def own_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def sha256sum(path: Path) -> str:
    if shutil.which("sha256sum") is None:
        pytest.skip("no sha256sum on this machine")
    return subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True).stdout.split()[0]


def combined_as_first_written(path: Path) -> str:
    """The first implementation of checkpoints.sha256, kept here: stores record its value and compare it on resume."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*")
                                                 if p.is_file() and p.suffix in checkpoints.WEIGHT_SUFFIXES)
    digest = hashlib.sha256()
    root = os.path.commonpath([str(p) for p in files]) if len(files) > 1 else ""
    for p in files:
        digest.update(os.path.relpath(str(p), root).encode() if root else b"")
        digest.update(p.read_bytes())
    return digest.hexdigest()


def test_teacher_provenance_lists_each_checkpoint_file_with_its_plain_sha256(tiny_dinov2):
    info = build(TeacherSpec("dinov2", str(tiny_dinov2)), 32).provenance()
    files = info["checkpoint_files"]
    assert set(files) == {"model.safetensors", "config.json"}  # what save_pretrained wrote
    for name, digest in files.items():
        assert digest == own_sha256(tiny_dinov2 / name) == sha256sum(tiny_dinov2 / name)
    assert info["checkpoint_sha256"] == combined_as_first_written(tiny_dinov2)  # unchanged for existing stores


def test_nested_files_are_named_relative_to_the_checkpoint(tiny_dinov2, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_dinov2, path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (path / "README.md").write_text("not a weight or config file")
    files = checkpoints.file_sha256s(path)
    assert set(files) == {"model.safetensors", "config.json", "1_Pooling/config.json"}
    assert files["1_Pooling/config.json"] == sha256sum(path / "1_Pooling" / "config.json")
    assert checkpoints.sha256(path) == combined_as_first_written(path)

    before = files["model.safetensors"]
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes() + b" ")
    assert checkpoints.file_sha256s(path)["model.safetensors"] != before  # a changed file is hashed again


def test_a_single_file_checkpoint_is_named_by_its_file(tmp_path):
    path = tmp_path / "sam_vit_b.pth"
    torch.save({"w": torch.arange(10.0)}, path)
    record = checkpoints.fingerprint(path)
    assert record["checkpoint_files"] == {"sam_vit_b.pth": sha256sum(path)}
    assert record["checkpoint_sha256"] == own_sha256(path) == combined_as_first_written(path)
    assert record["checkpoint_path"] == str(path)


def test_tokenizer_file_hashes_are_plain_sha256s(tmp_path):
    config = TokenizerConfig("vector", "t", ["v"], normalization={"mean": [0.0] * 8, "std": [1.0] * 8},
                             options={"sample_shape": [8], "n_tokens": 2, "hidden": 16})
    directory = VectorTokenizer(config).save(tmp_path / "tok")
    (directory / "metrics.json").write_text("{}")  # beside the tokenizer, not part of it
    hashes = file_hashes(directory)
    assert set(hashes) == {"config.json", "model.safetensors"}
    for name, digest in hashes.items():
        assert digest == own_sha256(directory / name) == sha256sum(directory / name)
    assert len(directory_hash(directory)) == 64  # the combined value token stores compare stays
