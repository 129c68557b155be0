"""Text-only corpora: .txt files (one document per line) or .jsonl files (one object per line)."""

from __future__ import annotations

import json

import fsspec
from fsspec.implementations.local import LocalFileSystem

from omnimill.errors import UserError
from omnimill.corpus.sample import make_key
from omnimill.paths import location, positive, refuse_overlap


def read_texts(uri: str, field: str = "text", limit: int | None = None,
               out: str | None = None) -> tuple[list[str], list[str]]:
    """-> (keys, texts). Keys are `<file>_<line>` (the path under a folder, without its extension); blank
    lines and empty texts are skipped. With `out` (where shards will go), refuse an OUT that overlaps the
    corpus before reading anything."""
    if limit is not None:
        positive("--limit", limit)
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.isdir(path):
        paths = fs.glob(f"{path.rstrip('/')}/**/*.txt") + fs.glob(f"{path.rstrip('/')}/**/*.jsonl")
    else:
        paths = fs.glob(path) if any(c in path for c in "*?[") else [p for p in [path] if fs.exists(p)]
    if not paths:
        raise UserError(f"no text files at {uri}; give .txt or .jsonl files (a path, folder, glob or fsspec URL)")
    if out is not None:
        refuse_overlap(out, {"the corpus": uri} if fs.isdir(path) else {})
        _refuse_files_in(out, paths if isinstance(fs, LocalFileSystem) else [fs.unstrip_protocol(p) for p in paths])
    keys, texts = [], []
    for file in sorted(paths):
        # Keys from the path under a folder (sub/b.jsonl -> sub/b_<line>), else the file's stem: unique.
        name = file[len(path.rstrip("/")) + 1:] if fs.isdir(path) else file.rsplit("/", 1)[-1]
        stem, _, ext = name.rpartition(".")
        if ext not in ("txt", "jsonl"):
            raise UserError(f"{file}: text corpora are .txt or .jsonl files, not .{ext}")
        with fs.open(file, "rt", encoding="utf-8", errors="replace") as handle:
            for line_number, line in enumerate(handle):
                if not line.strip():
                    continue
                if ext == "jsonl":
                    try:
                        text = json.loads(line)[field]
                    except (ValueError, KeyError, TypeError):
                        raise UserError(f"{file} line {line_number + 1}: not a JSON object with a {field!r} "
                                        f"field (choose it with --field)") from None
                else:
                    text = line.rstrip("\n")
                if str(text).strip():
                    keys.append(f"{make_key(stem)}_{line_number:08d}")
                    texts.append(str(text))
                if limit is not None and len(texts) >= limit:
                    return keys, texts
    return keys, texts


def _refuse_files_in(out: str, files: list[str]) -> None:
    """OUT may not hold (or be) a file being read: shards written there would sit among, or on, the corpus."""
    where, root = location(out)
    for file in files:
        file_where, file_path = location(file)
        if file_where == where and (file_path == root or file_path.startswith(root.rstrip("/") + "/")):
            raise UserError(f"{out} holds the corpus file {file}; choose an output folder apart from the corpus")
