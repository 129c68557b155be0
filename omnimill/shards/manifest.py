"""A shard set's manifest: what every reader of a shard set (sources, verify) and its writer (wds) share."""

from __future__ import annotations

import json

import fsspec

from omnimill.errors import UserError

FORMAT = "omnimill.wds/1"
MANIFEST = "manifest.json"


def join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def read_manifest(uri: str, storage_options: dict | None = None) -> dict:
    path = uri if uri.endswith(MANIFEST) else join(uri, MANIFEST)
    try:
        with fsspec.open(path, "r", **(storage_options or {})) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{uri} has no {MANIFEST}: not an omnimill shard set (or an unfinished export)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not an omnimill shard manifest (format {manifest.get('format')!r})")
    return manifest
