"""Text-only corpora: .txt files (one document per line) or .jsonl files (one object per line)."""

from __future__ import annotations

import json

import fsspec

from omnimill.errors import UserError
from omnimill.shards.corpus import make_key


def read_texts(uri: str, field: str = "text", limit: int | None = None) -> tuple[list[str], list[str]]:
    """-> (keys, texts). Keys are `<file stem>_<line>`; blank lines and empty texts are skipped."""
    files = sorted(fsspec.open_files(uri, "rt", expand=True), key=lambda f: f.path)
    if not files:
        raise UserError(f"no text files at {uri}; give .txt or .jsonl files (a path, glob or fsspec URL)")
    keys, texts = [], []
    for f in files:
        name = f.path.rsplit("/", 1)[-1]
        stem, _, ext = name.rpartition(".")
        if ext not in ("txt", "jsonl"):
            raise UserError(f"{f.path}: text corpora are .txt or .jsonl files, not .{ext}")
        with f as handle:
            for line_number, line in enumerate(handle):
                if not line.strip():
                    continue
                if ext == "jsonl":
                    try:
                        text = json.loads(line)[field]
                    except (ValueError, KeyError, TypeError):
                        raise UserError(f"{f.path} line {line_number + 1}: not a JSON object with a {field!r} "
                                        f"field (choose it with --field)") from None
                else:
                    text = line.rstrip("\n")
                if str(text).strip():
                    keys.append(f"{make_key(stem)}_{line_number:08d}")
                    texts.append(str(text))
                if limit is not None and len(texts) >= limit:
                    return keys, texts
    return keys, texts
