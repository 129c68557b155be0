"""Corpus readers: list a corpus once into stable keys, byte pointers and captions; read bytes back.

Three forms, given as one URI (a local path or any fsspec URL):
  folder    a folder of samples, recursive; optional sidecar caption `name.txt` or `name.json`
  wds       WebDataset tars, brace ranges and globs allowed: `data/shard-{000000..000099}.tar`
  manifest  `.jsonl`, `.csv` or `.parquet` with a `path` (or `url`) column, optional `key`, `caption`

Which files are samples is the sample kind's say (its extensions; `image` unless told otherwise, see
corpus/kinds.py); a manifest lists its samples itself. `CorpusIndex.kind` is the form above,
`CorpusIndex.sample_kind` the kind of sample.

`CorpusIndex.extras` holds, per sample, what else the corpus says about it: a manifest row's other columns
(a clip listing's `start`, `end`, `subtitles`), and the text of the sidecars asked for with `sidecars=`
(`("srt", "vtt")`: `name.srt` beside `name.mp4`, or the member `name.srt` in the same tar), by extension.

A local path is taken literally: `[`, `*`, `?`, `{` and `::` in a folder or file name are characters,
not globs or fsspec chains. Only a tar shard list expands (brace ranges, globs), and only when no file
of that literal name exists.

Keys are the sample's path without extension, relative to the corpus root (the member key for
tars), made stable by the kind (`SampleKind.key`: dots become `_` because WebDataset splits keys at dots). Listing is sorted, so
indexing the same corpus again gives the same keys in the same order.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
import tarfile
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import fsspec

from omnimill.corpus.kinds import DEFAULT_KIND, kind_of
from omnimill.corpus.sample import SampleKind
from omnimill.errors import UserError

CAPTION_EXTS = ("txt", "json")
MANIFEST_EXTS = (".jsonl", ".csv", ".parquet")
CAPTION_JSON_KEYS = ("caption", "text", "txt", "alt", "alt_text")
MANIFEST_COLUMNS = ("path", "url", "key", "caption", "text")  # a row's other columns go to CorpusIndex.extras
MEMBER_SEP = "::"  # source of a tar member: "<tar url>::<member name>"
TAR_OF_SOURCE = re.compile(r"(.*?\.tar)::", re.IGNORECASE)  # the tar of "<tar url>::<member>"; the url may hold "::"
GLOB_CHARS = "*?["
# The extras of a sample that has none: one shared read-only mapping, not an empty dict (64 B) per sample.
# 100k tar members listed: the index held 342 B per sample before (tracemalloc), 278 B with this.
NO_EXTRAS = MappingProxyType({})


@dataclass
class CorpusIndex:
    uri: str
    kind: str  # the listing's form: folder | wds | manifest
    keys: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # byte offset inside a tar, -1 for a whole file
    sizes: list[int] = field(default_factory=list)  # bytes, -1 when unknown
    captions: list[str] = field(default_factory=list)
    sample_kind: str = DEFAULT_KIND  # what each sample is (corpus/kinds.py)
    extras: list[Mapping] = field(default_factory=list)  # manifest columns and sidecar texts (module docstring)
    listing: dict = field(default_factory=dict)  # the kind's index options it was listed with (clips, ...)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str, source: str, offset: int = -1, size: int = -1, caption: str = "",
            extras: dict | None = None) -> None:
        self.keys.append(key)
        self.sources.append(source)
        self.offsets.append(offset)
        self.sizes.append(size)
        self.captions.append(caption)
        self.extras.append(extras or NO_EXTRAS)


def detect_kind(uri: str) -> str:
    lower = uri.lower()
    if lower.endswith(MANIFEST_EXTS):
        return "manifest"
    if lower.rstrip("/").endswith(".tar"):
        return "wds"
    return "folder"


def normalise_uri(uri: str) -> str:
    """Absolute local path, or the URL unchanged: what the store records as the corpus."""
    if "://" in uri:
        return uri
    import os

    return os.path.abspath(os.path.expanduser(uri))


def index_corpus(uri: str, storage_options: dict | None = None, sample_kind: str | SampleKind = DEFAULT_KIND,
                 sidecars: tuple[str, ...] = ()) -> CorpusIndex:
    """List every sample of the corpus, of the registered kind `sample_kind` (or that kind object itself: a
    listing made before a kind is registered, as the clip index's list of videos). `sidecars`: extensions of
    text sidecars to read into `extras`. Raises UserError for an unknown kind or a missing or empty corpus."""
    sample = kind_of(sample_kind) if isinstance(sample_kind, str) else sample_kind
    uri = normalise_uri(uri)
    kind = detect_kind(uri)
    reader = {"folder": _index_folder, "wds": _index_tars, "manifest": _index_manifest}[kind]
    index = reader(uri, storage_options or {}, sample, tuple(sidecars))
    if not len(index):
        raise UserError(f"no {sample.plural} found in {uri} (kind: {kind}); expected {sample.noun} files "
                        f"({', '.join(sorted(sample.extensions))}), WebDataset tars or a manifest")
    _make_unique(index)
    return index


def _make_unique(index: CorpusIndex) -> None:
    """Two files may map to one key (a.jpg, a.png): later ones get `_<n>` suffixes, in listing order."""
    seen: dict[str, int] = {}
    for i, key in enumerate(index.keys):
        if key in seen:
            seen[key] += 1
            new = f"{key}_{seen[key]}"
            while new in seen:
                seen[key] += 1
                new = f"{key}_{seen[key]}"
            index.keys[i] = new
            seen[new] = 0
        else:
            seen[key] = 0


def _split_ext(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    return (stem, ext.lower()) if dot else (name, "")


def url_to_fs(uri: str, storage_options: dict | None = None):
    """fsspec.core.url_to_fs, except that a local path (no "://", or file://) gets a LocalFileSystem directly:
    fsspec's URL parsing would read "::" in it as a chain of file systems. (Use the returned fs's open/isfile/
    cat_ranges, not fs.glob, fs.cat or fsspec.open, which read "*", "?" and "[" as globs.)"""
    if "://" not in uri or uri.startswith("file://"):
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), LocalFileSystem._strip_protocol(uri)
    return fsspec.core.url_to_fs(uri, **(storage_options or {}))


def _read_all(fs, paths: list[str]) -> list[bytes]:
    """Whole files, concurrently where the file system can; unlike fs.cat, names are not globs."""
    return fs.cat_ranges(paths, [None] * len(paths), [None] * len(paths), on_error="raise") if paths else []


def _index_folder(uri: str, storage_options: dict, sample: SampleKind, sidecars: tuple[str, ...] = ()) -> CorpusIndex:
    fs, root = url_to_fs(uri, storage_options)
    if not fs.isdir(root):
        raise UserError(f"corpus {uri} does not exist or is not a folder; give a folder of {sample.plural}, "
                        "WebDataset tars (shard-{000..009}.tar) or a manifest (.jsonl/.csv/.parquet)")
    files = sorted(fs.find(root))
    present = set(files)
    index = CorpusIndex(uri, "folder", sample_kind=sample.name)
    samples = [p for p in files if _split_ext(p)[1] in sample.extensions]
    captions = {}
    for path in samples:
        stem = _split_ext(path)[0]
        for ext in CAPTION_EXTS:
            if f"{stem}.{ext}" in present:
                captions[path] = f"{stem}.{ext}"
                break
    others = {path: {ext: f"{_split_ext(path)[0]}.{ext}" for ext in sidecars
                     if f"{_split_ext(path)[0]}.{ext}" in present} for path in samples}
    named = list(dict.fromkeys([*captions.values(), *(p for o in others.values() for p in o.values())]))
    texts = dict(zip(named, _read_all(fs, named)))
    for path in samples:
        rel = posixpath.relpath(path, root)
        sidecar = captions.get(path)
        caption = _caption_from(texts[sidecar], sidecar) if sidecar else ""
        extras = {ext: _text(texts[p]) for ext, p in others[path].items()}
        index.add(sample.key(_split_ext(rel)[0]), _url(fs, path), caption=caption, extras=extras)
    return index


def _text(data: bytes) -> str:
    return data.decode("utf-8-sig", errors="replace")


def _url(fs, path: str) -> str:
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _caption_from(data: bytes, name: str) -> str:
    text = data.decode("utf-8", errors="replace")
    if not name.endswith(".json"):
        return text.strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return ""
    if isinstance(obj, dict):
        for k in CAPTION_JSON_KEYS:
            if isinstance(obj.get(k), str):
                return obj[k].strip()
    return ""


def _index_tars(uri: str, storage_options: dict, sample: SampleKind, sidecars: tuple[str, ...] = ()) -> CorpusIndex:
    from braceexpand import braceexpand

    fs, literal = url_to_fs(uri, storage_options)
    paths, missing = [], []
    # a shard named shard[1].tar or shard-{1}.tar is that file; the pattern syntax only applies otherwise
    for pattern in [uri] if fs.isfile(literal) else braceexpand(uri):
        _, p = url_to_fs(pattern, storage_options)
        if fs.isfile(p):
            paths.append(p)
        elif any(c in p for c in GLOB_CHARS):
            paths.extend(sorted(fs.glob(p)))
        else:
            missing.append(pattern)
    if not paths:
        raise UserError(f"no tar shards match {uri}; check the path and brace range, e.g. data/shard-{{000..009}}.tar")
    if missing:  # a half-copied shard set must not silently become a smaller corpus
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"{len(missing)} shard(s) of {uri} do not exist: {shown}; copy them or narrow the range")
    index = CorpusIndex(uri, "wds", sample_kind=sample.name)
    for path in paths:
        url = _url(fs, path)
        with fs.open(path, "rb") as f:
            samples: dict[str, dict] = {}
            try:
                members = tarfile.open(fileobj=f, mode="r:")
                for m in members:
                    if not m.isfile():
                        continue
                    directory, base = posixpath.split(m.name)
                    stem, dot, ext = base.partition(".")  # WebDataset: key = dir + basename up to first dot
                    key = posixpath.join(directory, stem)
                    last_ext = ext.rsplit(".", 1)[-1].lower()
                    entry = samples.setdefault(key, {})
                    if last_ext in sample.extensions and "sample" not in entry:
                        entry["sample"] = m
                    elif last_ext in CAPTION_EXTS and "caption" not in entry:
                        entry["caption"] = (m, last_ext)
                    elif last_ext in sidecars:
                        entry.setdefault("sidecars", {}).setdefault(last_ext, m)
            except tarfile.TarError as e:
                raise UserError(f"{url} is not a readable tar ({e}); remove it from the shard range") from None
            for key, entry in samples.items():
                if "sample" not in entry:
                    continue
                caption = ""
                if "caption" in entry:
                    m, ext = entry["caption"]
                    f.seek(m.offset_data)
                    caption = _caption_from(f.read(m.size), "x." + ext)
                extras = {}
                for ext, m in entry.get("sidecars", {}).items():
                    f.seek(m.offset_data)
                    extras[ext] = _text(f.read(m.size))
                member = entry["sample"]
                index.add(sample.key(key), f"{url}{MEMBER_SEP}{member.name}", member.offset_data, member.size, caption,
                          extras)
    return index


def _index_manifest(uri: str, storage_options: dict, sample: SampleKind, sidecars: tuple[str, ...] = ()) -> CorpusIndex:
    fs, path = url_to_fs(uri, storage_options)
    if not fs.exists(path):
        raise UserError(f"manifest {uri} does not exist")
    rows = _read_manifest_rows(fs, path)
    base = posixpath.dirname(path)
    index = CorpusIndex(uri, "manifest", sample_kind=sample.name)
    for n, row in enumerate(rows):
        target = row.get("path") or row.get("url")
        if not target:
            raise UserError(f"manifest {uri} row {n} has no 'path' or 'url' column value")
        target = str(target)
        if "://" not in target and not posixpath.isabs(target):
            target = posixpath.join(base, target)
        given = row.get("key")
        if given not in (None, ""):
            key = sample.key(str(given))
        else:  # like a folder corpus: the path relative to the manifest's folder, without extension
            key = sample.key(_split_ext(posixpath.relpath(target, base) if "://" not in target
                                      else posixpath.basename(target))[0])
        if "://" not in target and not _is_local(fs):
            target = fs.unstrip_protocol(target)
        extras = {k: v for k, v in row.items() if k not in MANIFEST_COLUMNS and v is not None and v != ""}
        index.add(key, target, caption=str(row.get("caption") or row.get("text") or ""), extras=extras)
    return index


def _read_manifest_rows(fs, path: str) -> list[dict]:
    with fs.open(path, "rb") as f:
        data = f.read()
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    text = data.decode("utf-8")
    if path.endswith(".csv"):
        return list(csv.DictReader(io.StringIO(text)))
    rows = []
    for n, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"manifest {path} line {n + 1} is not JSON ({e})") from None
    return rows


class ByteReader:
    """Reads raw sample bytes from sources; keeps tar files open across the members of a unit."""

    def __init__(self, storage_options: dict | None = None):
        self.storage_options = storage_options or {}
        self._open: dict[str, object] = {}
        self._lock = threading.Lock()  # decode threads share the open tar files: seek + read as one

    def read(self, source: str, offset: int = -1, size: int = -1) -> bytes:
        if offset >= 0:
            tar = TAR_OF_SOURCE.match(source)
            url = tar.group(1) if tar else source.split(MEMBER_SEP, 1)[0]
            with self._lock:
                f = self._open.get(url)
                if f is None:
                    f = self._open[url] = self._fs_open(url)
                f.seek(offset)
                return f.read(size)
        with self._fs_open(source) as f:
            return f.read()

    def _fs_open(self, url: str):
        fs, path = url_to_fs(url, self.storage_options)  # not fsspec.open: it globs "*" and chains "::"
        return fs.open(path, "rb")

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
