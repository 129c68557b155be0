"""Small local files written whole or not at all: a kill or a full disk leaves the old file or none.

    write_atomic(path, data)   temp file in the same folder -> fsync -> os.replace

Used for the JSON files that mark a directory as complete (a tokenizer's config.json, an index's
info.json) and for the files beside them. Zarr stores and shard sets have their own (Zarr writes each
object this way; shards/wds.py does the same for shards and manifests, also on object stores).
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | Path, data: bytes | str, temp: str | None = None) -> None:
    """`temp`: a fixed temp name in the same folder (shards/wds.py: the same command reuses it and --force
    knows it); by default a unique one, so two writers never share it."""
    path = Path(path)
    temp = path.with_name(temp or f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
