"""Checks on paths and counts that every command makes before it writes: where two URLs point, an output
apart from its inputs, a count of at least one. Plain functions on strings; no filesystem is created."""

from __future__ import annotations

import os
import posixpath

from omnimill.errors import UserError


def positive(option: str, value: int) -> None:
    """Refuse a count that makes no sense before anything is written (a plan written with it would block
    the corrected command)."""
    if value < 1:
        raise UserError(f"{option} must be at least 1, not {value}")


def location(url: str) -> tuple[str, str]:
    """(protocol, normalised path) to compare where two URLs point: resolved local paths, else the URL's path
    without redundant slashes (no filesystem is created: its package may not even be installed)."""
    url = str(url)
    if "://" not in url or url.startswith(("file://", "local://")):  # a local path, taken literally
        return "file", os.path.realpath(os.path.expanduser(url.split("://", 1)[-1]))
    protocol, path = url.split("://", 1)
    return protocol, posixpath.normpath("/" + path.lstrip("/"))


def refuse_overlap(out: str, inputs: dict[str, str]) -> None:
    """OUT may not be an input or lie inside one: writing (or --force) there would change what is read."""
    where, path = location(out)
    for what, uri in inputs.items():
        in_where, in_path = location(uri)
        if where == in_where and (path == in_path or path.startswith(in_path.rstrip("/") + "/")):
            raise UserError(f"{out} is {'' if path == in_path else 'inside '}{what} {uri}; choose an output "
                            f"folder outside it")
