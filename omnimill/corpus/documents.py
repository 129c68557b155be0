"""Document corpora: interleaved image-text documents, listed once into stable keys, then read back by units.

A document is an ordered list of segments, each `{"text": str}` or `{"image": IMAGE_KEY, "alt": str | None,
"meta": dict}`, with IMAGE_KEY = f"{DOC_KEY}/img_{i:02d}" (i: the image's order in the document). Where
each image's bytes are (a URL, a local path, a tar member) travels beside the segments in
`Document.images`, so the segments are the same whatever the corpus form.

Three forms, given as one URI (a local path or an fsspec URL; brace ranges and globs name several files
of one form, and only when no file of that literal name exists: `[`, `*`, `::` in a local path are plain):

  obelics   `.parquet`, OBELICS-style: per row `images` and `texts`, lists of equal length with exactly one
            non-null entry per position (an image URL or path, or a text), `metadata` (a JSON string: a
            list with one object per position, or null) and `general_metadata` (a JSON object string).
            Read by row groups (a unit reads only the groups that hold its rows).
            DOC_KEY = f"{file stem}_{row:07d}".
  mmc4      `.jsonl`, MMC4-style: per line `text_list` (sentences) and `image_info` [{image_name, raw_url,
            matched_text_index, matched_sim}]. As MMC4's own loaders interleave, an image is placed BEFORE
            its matched sentence (images matched to one sentence keep their listed order); `matched_sim`,
            `image_name` and `matched_text_index` go to the segment's meta; the line's other fields are the
            document's meta. DOC_KEY = f"{file stem}_{line:07d}" (line counted from 0).
  wds       WebDataset tars. A document is the member `<doc>.json` ({"segments": [{"text": ...} | {"image":
            NAME, "alt": ..., "meta": {...}}], "meta": {...}}) and its images are the members `<doc>.NAME`
            with NAME = `<field>.<ext>` (`doc7.img0.jpg`): WebDataset splits a member's name at the FIRST
            dot of its base name, so `doc7.img0.jpg` stays in sample `doc7` as field `img0.jpg` (a name
            like `doc7_img0.jpg` would be a sample of its own). An image NAME that is a URL or a path (not
            a member) is taken as such. DOC_KEY = the member key (dots made `_`).

Image entries of parquet and jsonl are URLs (`://`, not file://) or paths (relative to the file's folder).

A document that does not parse is yielded with `error` = (stage, reason) and no segments, so a job records
it and goes on: stage `parse` (a line or a JSON field that is not JSON), `layout` (lists of different
lengths, a position with both or neither of image and text, a matched_text_index out of range) or `member`
(an image member the document names is not in its tar).
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from dataclasses import dataclass, field

from omnimill.corpus.listing import GLOB_CHARS, MEMBER_SEP, url_to_fs
from omnimill.corpus.sample import make_key
from omnimill.errors import UserError

FORMS = ("obelics", "mmc4", "wds")


@dataclass(frozen=True)
class DocRef:
    """Where one document is: `source` the file (or `tar::member` of its JSON); `offset`, `size` the row number
    and 1 (obelics), the line's bytes (mmc4) or the JSON member's bytes (wds); `members` (wds only) the
    document's other members {field: [member name, offset, size]}."""

    key: str
    source: str
    offset: int
    size: int
    members: str = ""  # JSON


@dataclass
class ImageRef:
    """Where an image's bytes are: kind `url`, `path` or `member` (then `source` is `tar::member` and offset
    and size say where its bytes are in the tar)."""

    key: str
    kind: str
    source: str
    offset: int = -1
    size: int = -1


@dataclass
class Document:
    key: str
    segments: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    images: list[ImageRef] = field(default_factory=list)
    error: tuple[str, str] | None = None  # (stage, reason) of a malformed document


def image_key(doc_key: str, i: int) -> str:
    """The key of the i-th image (in document order) of document `doc_key`."""
    return f"{doc_key}/img_{i:02d}"


def document_of(key: str) -> str | None:
    """DOC_KEY of an image key `DOC_KEY/img_NN` (image_key's grammar); None for any other key."""
    doc, sep, last = key.rpartition("/img_")
    return doc if sep and doc and last.isdigit() else None


def form_of(uri: str) -> str:
    lower = uri.lower().rstrip("/")
    if lower.endswith(".parquet"):
        return "obelics"
    if lower.endswith(".jsonl"):
        return "mmc4"
    if lower.endswith(".tar"):
        return "wds"
    raise UserError(f"{uri} is not a document corpus: give OBELICS-style .parquet, MMC4-style .jsonl or "
                    "WebDataset .tar files (brace ranges and globs allowed)")


def expand(uri: str, storage_options: dict | None = None) -> list[str]:
    """The files `uri` names: itself when it exists, else its brace range and globs (every one must exist)."""
    from braceexpand import braceexpand

    fs, literal = url_to_fs(uri, storage_options)
    if fs.isfile(literal):
        return [uri]
    found, missing = [], []
    for pattern in braceexpand(uri):
        fs, path = url_to_fs(pattern, storage_options)
        if fs.isfile(path):
            found.append(pattern)
        elif any(c in path for c in GLOB_CHARS):
            found.extend(_unstrip(fs, p, pattern) for p in sorted(fs.glob(path)))
        else:
            missing.append(pattern)
    if missing:  # a half-copied corpus must not silently become a smaller one
        raise UserError(f"{len(missing)} file(s) of {uri} do not exist: {', '.join(missing[:3])}")
    if not found:
        raise UserError(f"no files match {uri}")
    return found


def _unstrip(fs, path: str, like: str) -> str:
    return fs.unstrip_protocol(path) if "://" in like and not like.startswith("file://") else path


def _stem(uri: str) -> str:
    return make_key(posixpath.basename(uri.rstrip("/")).rsplit(".", 1)[0])


# ---------------------------------------------------------------- listing (the client, once)
def list_documents(uri: str, storage_options: dict | None = None) -> tuple[str, list[DocRef]]:
    """(form, every document of the corpus in order). Two files whose documents would share keys are refused."""
    form = form_of(uri)
    refs: list[DocRef] = []
    lister = {"obelics": _list_parquet, "mmc4": _list_jsonl, "wds": _list_tar}[form]
    for path in expand(uri, storage_options):
        refs.extend(lister(path, storage_options or {}))
    seen: set[str] = set()
    for ref in refs:
        if ref.key in seen:
            raise UserError(f"two documents of {uri} are both keyed {ref.key!r} (two files of one name?); "
                            "give files with distinct names")
        seen.add(ref.key)
    return form, refs


def _list_parquet(path: str, storage_options: dict) -> list[DocRef]:
    import pyarrow.parquet as pq

    fs, where = url_to_fs(path, storage_options)
    with fs.open(where, "rb") as f:
        n = pq.ParquetFile(f).metadata.num_rows  # the footer only
    stem = _stem(path)
    return [DocRef(f"{stem}_{row:07d}", path, row, 1) for row in range(n)]


def _list_jsonl(path: str, storage_options: dict) -> list[DocRef]:
    """One pass over the file for each line's byte range (a unit then reads only its lines)."""
    fs, where = url_to_fs(path, storage_options)
    stem, refs, offset = _stem(path), [], 0
    with fs.open(where, "rb") as f:
        for n, line in enumerate(f):
            if line.strip():
                refs.append(DocRef(f"{stem}_{n:07d}", path, offset, len(line)))
            offset += len(line)
    return refs


def _list_tar(path: str, storage_options: dict) -> list[DocRef]:
    fs, where = url_to_fs(path, storage_options)
    docs: dict[str, dict] = {}
    with fs.open(where, "rb") as f:
        try:
            for m in tarfile.open(fileobj=f, mode="r:"):
                if not m.isfile():
                    continue
                directory, base = posixpath.split(m.name)
                stem, _, rest = base.partition(".")  # WebDataset: the key ends at the base name's first dot
                entry = docs.setdefault(posixpath.join(directory, stem), {"members": {}})
                if rest == "json":
                    entry["json"] = m
                else:
                    entry["members"][rest] = [m.name, m.offset_data, m.size]
        except tarfile.TarError as e:
            raise UserError(f"{path} is not a readable tar ({e})") from None
    return [DocRef(make_key(key), f"{path}{MEMBER_SEP}{e['json'].name}", e["json"].offset_data, e["json"].size,
                   json.dumps(e["members"])) for key, e in docs.items() if "json" in e]


# ---------------------------------------------------------------- reading (a unit's documents)
def read_documents(form: str, refs: list[DocRef], storage_options: dict | None = None) -> list[Document]:
    """The documents of `refs`, in order; a malformed one carries its `error`."""
    reader = {"obelics": _read_parquet, "mmc4": _read_jsonl, "wds": _read_tar}[form]
    return reader(refs, storage_options or {})


def _read_parquet(refs: list[DocRef], storage_options: dict) -> list[Document]:
    """Only the row groups that hold these rows, one at a time (memory: one row group)."""
    import pyarrow.parquet as pq

    out: dict[str, Document] = {}
    by_file: dict[str, list[DocRef]] = {}
    for ref in refs:
        by_file.setdefault(ref.source, []).append(ref)
    for path, wanted in by_file.items():
        fs, where = url_to_fs(path, storage_options)
        with fs.open(where, "rb") as f:
            pf = pq.ParquetFile(f)
            columns = [c for c in ("images", "texts", "metadata", "general_metadata") if c in pf.schema_arrow.names]
            start = 0
            for g in range(pf.metadata.num_row_groups):
                stop = start + pf.metadata.row_group(g).num_rows
                inside = [r for r in wanted if start <= r.offset < stop]
                if inside:
                    rows = pf.read_row_group(g, columns=columns).to_pylist()
                    for ref in inside:
                        out[ref.key] = _obelics(ref, rows[ref.offset - start], posixpath.dirname(path))
                start = stop
    return [out[ref.key] for ref in refs]


def _obelics(ref: DocRef, row: dict, base: str) -> Document:
    doc = Document(ref.key)
    images, texts = row.get("images"), row.get("texts")
    if not isinstance(images, list) or not isinstance(texts, list):
        return _bad(doc, "layout", "images and texts must both be lists")
    if len(images) != len(texts):
        return _bad(doc, "layout", f"images has {len(images)} entries, texts {len(texts)}")
    try:
        metas = json.loads(row["metadata"]) if row.get("metadata") else [None] * len(images)
        doc.meta = json.loads(row["general_metadata"]) if row.get("general_metadata") else {}
    except (TypeError, ValueError) as e:
        return _bad(doc, "parse", f"metadata is not JSON ({e})")
    if not isinstance(metas, list) or len(metas) != len(images):
        return _bad(doc, "layout", "metadata is not a list with one entry per position")
    for pos, (image, text) in enumerate(zip(images, texts)):
        if (image is None) == (text is None):
            return _bad(doc, "layout", f"position {pos} has {'both' if image is not None else 'neither'} an image "
                                       "and a text")
        if text is not None:
            doc.segments.append({"text": text})
        else:
            meta = metas[pos] if isinstance(metas[pos], dict) else {}
            _add_image(doc, str(image), meta.get("alt_text"), meta, base)
    return doc


def _read_jsonl(refs: list[DocRef], storage_options: dict) -> list[Document]:
    out = []
    with _Ranges(storage_options) as files:
        for ref in refs:
            doc = Document(ref.key)
            try:
                obj = json.loads(files.read(ref.source, ref.offset, ref.size))
            except ValueError as e:
                out.append(_bad(doc, "parse", f"line is not JSON ({e})"))
                continue
            out.append(_mmc4(doc, obj, posixpath.dirname(ref.source)))
    return out


def _mmc4(doc: Document, obj, base: str) -> Document:
    if not isinstance(obj, dict) or not isinstance(obj.get("text_list"), list):
        return _bad(doc, "layout", "no text_list")
    sentences, infos = obj["text_list"], obj.get("image_info") or []
    before: dict[int, list[dict]] = {}
    for info in infos:
        at = info.get("matched_text_index") if isinstance(info, dict) else None
        if not isinstance(at, int) or not 0 <= at < len(sentences):
            return _bad(doc, "layout", f"matched_text_index {at!r} is not a sentence of {len(sentences)}")
        if not (info.get("raw_url") or info.get("image_name")):
            return _bad(doc, "layout", "an image_info entry has neither raw_url nor image_name")
        before.setdefault(at, []).append(info)
    doc.meta = {k: v for k, v in obj.items() if k not in ("text_list", "image_info")}
    for i, sentence in enumerate(sentences):
        for info in before.get(i, []):  # MMC4: the image goes before its matched sentence
            meta = {k: info[k] for k in ("matched_sim", "image_name", "matched_text_index") if k in info}
            _add_image(doc, str(info.get("raw_url") or info["image_name"]), info.get("alt") or None, meta, base)
        doc.segments.append({"text": str(sentence)})
    return doc


def _read_tar(refs: list[DocRef], storage_options: dict) -> list[Document]:
    with _Ranges(storage_options) as files:
        return [_wds(ref, files) for ref in refs]


def _wds(ref: DocRef, files: _Ranges) -> Document:
    doc = Document(ref.key)
    tar = ref.source.rsplit(MEMBER_SEP, 1)[0]
    try:
        obj = json.loads(files.read(tar, ref.offset, ref.size))
        segments, doc.meta = obj["segments"], dict(obj.get("meta") or {})
        if not isinstance(segments, list):
            raise ValueError("segments is not a list")
    except (ValueError, KeyError, TypeError) as e:
        return _bad(doc, "parse", f"document JSON does not read ({type(e).__name__}: {e})")
    members = json.loads(ref.members or "{}")
    for pos, seg in enumerate(segments):
        if not isinstance(seg, dict) or ("text" in seg) == ("image" in seg):
            return _bad(doc, "layout", f"segment {pos} is not one of {{text}} or {{image}}")
        if "text" in seg:
            doc.segments.append({"text": str(seg["text"])})
            continue
        name, alt, meta = str(seg["image"]), seg.get("alt"), dict(seg.get("meta") or {})
        if name in members:
            member, offset, size = members[name]
            _add_image(doc, f"{tar}{MEMBER_SEP}{member}", alt, meta, "", (offset, size))
        elif "://" in name or "/" in name:  # a URL or a path, relative to the tar's folder
            _add_image(doc, name, alt, meta, posixpath.dirname(tar))
        else:
            return _bad(doc, "member", f"image {name!r} is not a member of {tar} (expected {ref.key}.{name})")
    return doc


def _add_image(doc: Document, where: str, alt, meta: dict, base: str, member: tuple[int, int] | None = None):
    key = image_key(doc.key, len(doc.images))
    doc.segments.append({"image": key, "alt": alt if alt is None else str(alt), "meta": meta})
    if member is not None:
        doc.images.append(ImageRef(key, "member", where, *member))
    elif "://" in where and not where.strip().startswith("file://"):
        # stripped as `omnimill fetch` strips the URLs it reads, so the fetched store's url column finds it
        doc.images.append(ImageRef(key, "url", where.strip()))
    else:
        path = where.removeprefix("file://")
        doc.images.append(ImageRef(key, "path", path if posixpath.isabs(path) or not base
                                   else posixpath.join(base, path)))


def _bad(doc: Document, stage: str, reason: str) -> Document:
    doc.segments, doc.images, doc.error = [], [], (stage, reason)
    return doc


class _Ranges:
    """Byte ranges of files, each file opened once per unit (a unit reads many lines or members of one file).
    Paths are literal (not corpus.listing.ByteReader, which would read "::" in a jsonl's path as a tar member)."""

    def __init__(self, storage_options: dict):
        self.storage_options, self.files = storage_options, {}

    def read(self, path: str, offset: int, size: int) -> bytes:
        f = self.files.get(path)
        if f is None:
            fs, where = url_to_fs(path, self.storage_options)
            f = self.files[path] = fs.open(where, "rb")
        f.seek(offset)
        return f.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in self.files.values():
            f.close()


def text_chars(segments: list[dict]) -> int:
    return sum(len(s["text"]) for s in segments if "text" in s)

