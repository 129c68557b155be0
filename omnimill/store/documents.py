"""The document store: every document of a document corpus (corpus/documents.py) as ordered segments, its
images as a table, and document filters as parts; written by the ingest job (engine/documents.py) and
`documents filter`.

    documents.zarr/          attrs: format, omnimill version, uuid, created, corpus {uri, form}, n (documents),
                                    unit_size (documents per unit)
      keys     (N,) str      DOC_KEY of each document (WebDataset-safe: no dots)
      source   (N,) str      where it is: the parquet or jsonl file, or `tar::member` of its JSON
      offset, size (N,) int64  obelics: row number and 1; mmc4: the line's bytes; wds: the JSON member's bytes
      members  (N,) str      wds: the document's other members {field: [name, offset, size]} (JSON); else ""
      ingest/                attrs: created
        segments   (N,) str    JSON list: {"text": str} | {"image": IMAGE_KEY, "alt": str | null, "meta": {}}
        meta       (N,) str    JSON object: the document's metadata (OBELICS general_metadata, MMC4's fields)
        images     (N,) str    JSON list, the document's rows of the image table, in order: {key (IMAGE_KEY =
                               DOC_KEY/img_NN), kind (url | path | member), source, offset, size, and for
                               local images (path, member) read at ingest: sha256, width, height, ext, or
                               error}
        n_images   (N,) int32  images in the document
        n_text_chars (N,) int64  characters of its text segments
        ok         (N,) bool   parsed; else stage and reason say why (parse | layout | member)
        stage, reason (N,) str
      filter_<name>/         one part per filter run, attrs: settings (what was asked; the fetched and label
                             stores read, with their uuids), created
        kept    (N,) bool      the document passes every check of that run
        reason  (N,) str       why not (the first check it fails: "n_images 0 < 1"), "" when kept
      local/<unit:06d>.tar   the unit's local images (paths and tar members), members `<IMAGE_KEY>.<ext>`
                             and `<IMAGE_KEY>.txt` (its alt text, when it has one), mtime 0, no PAX headers: an image corpus (`local_corpus()`) that `omnimill label`
                             lists with the IMAGE_KEYs as its keys; an empty tar for a unit with none
      image_urls.jsonl       the URL images, one {url, key: IMAGE_KEY, alt} per line, for `omnimill fetch`
                             (written when every unit is committed; `url_list()`)
      _runs/<part>/units, summary, _keys, _lock, _history   markers, summary, key index, lock, run records
                             (base.py); keys, source, offset, size, members are sharded (layout.py)

The image table is the `images` column read in document order (`images()`): its length is known only once
every document is parsed, and a column per document keeps one writer per unit (layout.py). A unit commits
by its marker, written after its tar and its rows; a killed run's rerun does the units without one. A
malformed document is a row with ok False, its stage and reason, also listed in its unit's marker; the
job goes on. Local image bytes are copied into the unit's tar (the price of an image corpus whose keys are
the IMAGE_KEYs, whatever the corpus form; a URL image is not fetched here: `omnimill fetch` does that).
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import zarr

from omnimill import __version__
from omnimill.corpus.listing import url_to_fs
from omnimill.errors import UserError
from omnimill.store import layout
from omnimill.store.base import UnitStore, create_array, now, put_bytes, short

FORMAT = "omnimill.documents/1"
PART = "ingest"
FILTER = "filter_"
LOCAL = "local"
URL_LIST = "image_urls.jsonl"
TYPES = {"segments": "str", "meta": "str", "images": "str", "n_images": "int32", "n_text_chars": "int64",
         "ok": "bool", "stage": "str", "reason": "str"}
FILTER_TYPES = {"kept": "bool", "reason": "str"}


class DocumentStore(UnitStore):
    FORMAT = FORMAT
    WHAT = "document store"
    TOP = ("keys", "source", "offset", "size", "members")
    MAKE = "make one with `omnimill documents ingest CORPUS {uri}`"

    def __init__(self, group: zarr.Group, uri: str, storage_options: dict | None = None):
        super().__init__(group, uri, storage_options)
        self.corpus = dict(group.attrs["corpus"])

    @classmethod
    def create(cls, uri: str, corpus: dict, refs: list, unit_size: int,
               storage_options: dict | None = None) -> "DocumentStore":
        """A new store for the documents `refs` (corpus.documents.DocRef) of the corpus {uri, form}."""
        group = cls.new_group(uri, storage_options)
        n, once = len(refs), layout.once(unit_size)  # written here, once, by this process alone
        keys = np.array([r.key for r in refs], dtype=object)
        create_array(group, "keys", (n,), dtype="str", **once)[:] = keys
        create_array(group, "source", (n,), dtype="str", **once)[:] = np.array([r.source for r in refs], dtype=object)
        create_array(group, "offset", (n,), dtype="int64", **once)[:] = np.array([r.offset for r in refs], np.int64)
        create_array(group, "size", (n,), dtype="int64", **once)[:] = np.array([r.size for r in refs], np.int64)
        create_array(group, "members", (n,), dtype="str", **once)[:] = np.array([r.members for r in refs], dtype=object)
        cls.index_keys(group, keys, unit_size)
        cls.commit_create(group, {"format": FORMAT, "omnimill_version": __version__, "uuid": group.attrs["uuid"],
                                  "corpus": corpus, "n": n, "unit_size": unit_size})
        return cls(group, uri, storage_options)

    def refs(self, start: int = 0, stop: int | None = None) -> list:
        """The DocRefs of documents start..stop, as listed at creation."""
        from omnimill.corpus.documents import DocRef

        span = slice(start, self.n if stop is None else stop)
        rows = [self.read(name, span) for name in self.TOP]
        return [DocRef(str(k), str(s), int(o), int(z), str(m)) for k, s, o, z, m in zip(*rows)]

    # ---------------------------------------------------------------- ingest (the part the job writes)
    def prepare(self, force: bool = False) -> None:
        """Create the ingest arrays once (resume otherwise); `force` starts every unit over."""
        self.prepare_columns(PART, TYPES, force)

    def declared(self, part: str) -> dict[str, tuple]:
        return {name: () for name in (TYPES if part == PART else FILTER_TYPES)}

    def tar_path(self, unit: int) -> str:
        return f"{self.uri.rstrip('/')}/{LOCAL}/{unit:06d}.tar"

    def write_unit(self, unit: int, columns: dict[str, list], local: list[tuple[str, bytes]], marker: dict) -> None:
        """The unit's tar of local images [(member name, bytes)], then its rows {column: values}, then its
        marker (the commit). A committed unit written again loses its marker first."""
        span = self.unit(unit)
        if self.done_units(PART)[unit]:
            self.clear_markers(PART, [unit])
        put_bytes(self.tar_path(unit), _tar(local), self.storage_options)
        for name, kind in TYPES.items():
            values = columns[name]
            if len(values) != span.stop - span.start:
                raise ValueError(f"unit {unit} has {span.stop - span.start} rows, got {len(values)} {name}")
            self.writable(f"{PART}/{name}")[span.start:span.stop] = np.array(values, object if kind == "str" else kind)
        self.write_marker(PART, unit, marker)

    # ---------------------------------------------------------------- reading
    def column(self, name: str, rows=slice(None), part: str = PART) -> np.ndarray:
        return self.read(f"{part}/{name}", rows)

    def complete(self) -> bool:
        return bool(self.done_units(PART).all())

    def document(self, key_or_row: str | int) -> dict:
        """One document: {key, segments, meta, images, ok, stage, reason}."""
        row = key_or_row if isinstance(key_or_row, int) else self.index_of(key_or_row)
        return {"key": str(self.read("keys", row)), "segments": json.loads(str(self.column("segments", row)) or "[]"),
                "meta": json.loads(str(self.column("meta", row)) or "{}"),
                "images": json.loads(str(self.column("images", row)) or "[]"), "ok": bool(self.column("ok", row)),
                "stage": str(self.column("stage", row)), "reason": str(self.column("reason", row))}

    def images(self) -> list[dict]:
        """The image table: one row per image in document order, {key, kind, source, offset, size, doc (the
        document's row), and sha256, width, height, ext or error for local images}."""
        self._require_complete()
        return [{**image, "doc": row} for row, text in enumerate(self.column("images"))
                for image in json.loads(str(text) or "[]")]

    def _require_complete(self) -> None:
        if not self.complete():
            raise UserError(f"{self.uri}: {int((~self.done_units(PART)).sum())} units are not ingested yet; run "
                            "`omnimill documents ingest` on it again first")

    def local_corpus(self) -> str | None:
        """The local images as an image corpus (the units' tars, a brace range) for `omnimill label`; None when
        the corpus has no local image."""
        self._require_complete()
        if not any(image["kind"] != "url" and "sha256" in image for image in self.images()):
            return None
        last = self.n_units - 1
        names = f"{0:06d}.tar" if last == 0 else f"{{{0:06d}..{last:06d}}}.tar"
        return f"{self.uri.rstrip('/')}/{LOCAL}/{names}"

    def local_image(self, key: str) -> bytes:
        """The bytes ingest copied of the local image `key` (IMAGE_KEY = DOC_KEY/img_NN): its unit tar's member
        `<IMAGE_KEY>.<ext>`. A key that is not a local image of this store (no such document or image, a URL
        image, one ingest could not read, its unit not ingested, its member gone) is a one-line UserError."""
        doc_key = key.rpartition("/")[0]
        not_here = f"{key} is not a local image of {self.uri}"
        try:
            row = self.index_of(doc_key)
        except UserError:
            raise UserError(f"{not_here}: no document {doc_key!r} (an image key is DOC_KEY/img_NN)") from None
        unit = row // self.unit_size
        if not self.done_units(PART)[unit]:
            raise UserError(f"{not_here}: its unit {unit} is not ingested yet; run `omnimill documents ingest` again")
        image = next((i for i in json.loads(str(self.column("images", row)) or "[]") if i["key"] == key), None)
        if image is None:
            raise UserError(f"{not_here}: document {doc_key} has no image {key}")
        if image["kind"] == "url":
            raise UserError(f"{not_here}: it is a URL image ({image['source']}); its bytes are in the fetched store")
        if "sha256" not in image:
            raise UserError(f"{not_here}: ingest could not read it ({image.get('error')})")
        member = f"{key}.{image['ext']}"
        fs, where = url_to_fs(self.tar_path(unit), self.storage_options)
        with fs.open(where, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            try:
                return tar.extractfile(tar.getmember(member)).read()
            except KeyError:
                raise UserError(f"{not_here}: {member} is missing from {self.tar_path(unit)}; run `omnimill verify "
                                f"{self.uri}`") from None

    def url_list(self) -> str | None:
        """Write the URL images as a URL list for `omnimill fetch` ({url, key: IMAGE_KEY, alt} per line) and
        return its path; None when there is none. The same URL in two documents is listed twice: the fetch
        fetches it once, under the first document's key (corpus/fetch.read_url_list)."""
        self._require_complete()
        alts = {}
        for text in self.column("segments"):
            for seg in json.loads(str(text) or "[]"):
                if "image" in seg:
                    alts[seg["image"]] = seg.get("alt")
        lines = [json.dumps({"url": i["source"], "key": i["key"], "alt": alts.get(i["key"]) or ""}) + "\n"
                 for i in self.images() if i["kind"] == "url"]
        if not lines:
            return None
        path = f"{self.uri.rstrip('/')}/{URL_LIST}"
        put_bytes(path, "".join(lines).encode(), self.storage_options)
        return path

    # ---------------------------------------------------------------- filters (parts written by the client)
    def filters(self) -> list[str]:
        return [p.removeprefix(FILTER) for p in self.parts() if p.startswith(FILTER)]

    def write_filter(self, name: str, settings: dict, kept: list[bool], reasons: list[str],
                     force: bool = False) -> None:
        """A filter run's verdict per document and its settings, as the part `filter_<name>`; a name already
        used with other settings is refused unless `force`."""
        part = FILTER + name
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise UserError(f"a filter name is letters, digits, - and _, not {name!r}")
        if part in self.parts() and not force and self.filter_settings(name) != settings:
            raise UserError(f"{self.uri} holds a filter {name!r} run with {short(self.filter_settings(name))}; "
                            "give another --name or pass --force")
        group = self.new_part(part)
        create_array(group, "kept", (self.n,), (self.unit_size,), "bool")[:] = np.array(kept, bool)
        create_array(group, "reason", (self.n,), (self.unit_size,), "str")[:] = np.array(reasons, dtype=object)
        group.attrs.update({"settings": settings, "created": now()})
        self.commit_part(part)
        for u in range(self.n_units):
            span = self.unit(u)
            dropped = sum(1 for k in kept[span.start:span.stop] if not k)
            self.write_marker(part, u, {"unit": u, "start": span.start, "stop": span.stop, "ok": span.stop - span.start,
                                        "failed": 0, "errors": [], "dropped": dropped})

    def filter_settings(self, name: str) -> dict:
        return dict(self.attrs(FILTER + name).get("settings") or {})

    def kept(self, name: str) -> np.ndarray:
        return self.column("kept", part=FILTER + name)

    def status(self, max_errors: int = 5) -> dict:
        """Units done, documents ok and malformed (the first few with their reasons), images, each filter's kept."""
        info = {"store": self.uri, "corpus": self.corpus, "n": self.n, "n_units": self.n_units, "lock": self.live_lock()}
        if PART in self.parts():
            done = self.tally(PART, max_errors)
            info.update(units_done=done["units_done"], ok=done["ok"], malformed=done["failed"],
                        first_errors=done["first_errors"])
        info["filters"] = {name: {"kept": int(self.kept(name).sum()), "settings": self.filter_settings(name)}
                           for name in self.filters()}
        return info

    # ---------------------------------------------------------------- verify: the Zarr arrays, then the tars
    def verify(self, parts: list[str] | None = None) -> list[dict]:
        problems = super().verify(parts)
        if PART not in (parts if parts is not None else self.parts()) or PART not in self.group:
            return problems
        damaged = {p["unit"] for p in problems}
        for u in np.flatnonzero(self.done_units(PART)):
            if int(u) not in damaged and (what := self._check_tar(int(u))):
                span = self.unit(int(u))
                problems.append({"part": PART, "unit": int(u), "array": f"{LOCAL}/{u:06d}.tar",
                                 "samples": f"{span.start}..{span.stop - 1}", "problem": what})
        return problems

    def _check_tar(self, unit: int) -> str:
        """Every local image the unit's rows list is in its tar with the recorded sha256."""
        import hashlib

        span = self.unit(unit)
        expected = {f"{i['key']}.{i['ext']}": i["sha256"] for text in self.column("images", slice(span.start, span.stop))
                    for i in json.loads(str(text) or "[]") if "sha256" in i}
        try:
            fs, where = url_to_fs(self.tar_path(unit), self.storage_options)
            with fs.open(where, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                found = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar if m.isfile()}
        except FileNotFoundError:
            return "tar is missing"
        except tarfile.TarError as e:
            return f"tar does not read ({e})"
        for name, digest in expected.items():
            if found.get(name) != digest:
                return f"{name} is {'missing' if name not in found else 'not the recorded bytes'}"
        return ""

    def unit_intact(self, part: str, unit: int, decode: bool = False) -> bool:
        return super().unit_intact(part, unit, decode) and (part != PART or not self._check_tar(unit))


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    """GNU format (no PAX headers), mtime 0, uid/gid 0: the same images give the same tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
