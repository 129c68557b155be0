"""Find a teacher's checkpoint and fingerprint it.

A checkpoint is a local directory or file, or a hub id ("facebook/dinov2-base") where the machine
has network (or the id is already in the local hub cache; HF_HUB_OFFLINE=1 uses only the cache).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from omnimill.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".json", ".model")


def resolve(checkpoint: str, teacher: str, example: str) -> Path:
    """Local path for `checkpoint`; a hub id is downloaded (or found in the cache) first."""
    path = Path(checkpoint).expanduser()
    if path.exists():
        return path.resolve()
    looks_like_hub_id = checkpoint.count("/") == 1 and not checkpoint.startswith((".", "/", "~"))
    if looks_like_hub_id:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(checkpoint))
        except Exception as e:  # offline, unknown repo, no permission: all say the same to the user
            reason = f"hub id {checkpoint!r} could not be fetched ({type(e).__name__})"
    else:
        reason = f"{checkpoint!r} does not exist"
    raise UserError(f"teacher {teacher}: checkpoint {reason}; pass a local checkpoint, e.g. --teacher {example}")


def sha256(path: Path) -> str:
    """sha256 over a checkpoint file, or over a directory's weight and config files (name + bytes).

    The combined value is what label stores compare on resume; `file_sha256s` gives the values a user can
    check with `sha256sum` (and against the hub's listing)."""
    return _hashes(_stamp(path))[0]


def file_sha256s(path: Path) -> dict[str, str]:
    """{path relative to the checkpoint directory (the file's name for a file): plain sha256 of its bytes}."""
    return dict(_hashes(_stamp(path))[1])


def fingerprint(path: Path) -> dict:
    """What a teacher's provenance records about its checkpoint."""
    return {"checkpoint_sha256": sha256(path), "checkpoint_files": file_sha256s(path), "checkpoint_path": str(path)}


def _stamp(path: Path) -> tuple:
    """The files, with what tells a changed file from the same one: size and modification time."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    base = path.parent if path.is_file() else path
    return tuple((str(p), p.relative_to(base).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@lru_cache(maxsize=64)
def _hashes(stamp: tuple) -> tuple[str, tuple]:
    """(combined sha256, ((relative name, sha256), ...)) from one read of each file: weights are gigabytes."""
    digest = hashlib.sha256()
    root = os.path.commonpath([s[0] for s in stamp]) if len(stamp) > 1 else ""
    files = []
    for name, relative, _, _ in stamp:
        # the combined digest is unchanged from the first format: stores record it and compare it on resume
        digest.update(os.path.relpath(name, root).encode() if root else b"")
        own = hashlib.sha256()
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
                own.update(block)
        files.append((relative, own.hexdigest()))
    return digest.hexdigest(), tuple(files)
