"""One document as an HTML page: `omnimill audit report DOCS_STORE DOC_KEY [--labels L] [--fetched F]`.

    header     key, row, source, parsed or why not, images and characters, the document's metadata
    filters    every filter part of the store (`documents filter --name`): kept, or the reason it is not,
               with the settings of that run
    document   the text segments as paragraphs, each image inline where it stands: a thumbnail (JPEG,
               THUMB_PIXELS on its longer side), its alt text as caption, where its bytes came from; under
               it a <details> whose summary opens the image's labels: the same tiles `audit report` and
               `audit query --html` draw for one image sample (render.sample_tiles, drawn by
               report._tile_png; each the smaller of PNG and JPEG), the label store's caption and every
               text or number label as text, and the corpus's own facts of the image (OBELICS metadata,
               MMC4's matched_sim)

Where an image's picture comes from, first found:
    path / member image   the document store's local tar (the bytes ingest copied: `DocumentStore.local_image`)
    URL image             the fetched store, looked up by URL (its key is the first document's IMAGE_KEY)
    either                the label store's canonical view (its rgb teacher's), when that is all there is
Labels are the label store's sample keyed IMAGE_KEY (a label store of `DocumentStore.local_corpus()`, or of
the whole document store), else the fetched store's key of that URL (a label store of the fetched images).
An image with no picture or no labels says why in its place (not read at ingest, fetch failed at a stage,
not fetched, not in the label store, no store given): never silently nothing.

The page is one file like the other reports: pictures are `data:` URIs, no scripts, no network. Its size,
measured on one document of 16 640x480 photos labelled rgb + metadata + canny (4 tiles each): thumbnails
~9 kB each, tiles ~38 kB per image (rgb 10, canny 4.5, canny over rgb 9, metadata table 15), base64 adds
a third: ~1 MB in all (3.1 MB with every tile a PNG). The CLI prints the size of the page it wrote.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from omnimill.audit.render import _failure_reason, _field_names, _scalar_or_array, _view_field, sample_tiles
from omnimill.audit.report import STYLE, _figure, _tile_png
from omnimill.errors import UserError
from omnimill.store.documents import DocumentStore
from omnimill.store.fetched import FetchedStore
from omnimill.store.labels import LabelStore

THUMB_PIXELS = 320  # longer side of an inline thumbnail: a 4:3 photo is 320 x 240, ~15 kB at quality 80
JPEG_QUALITY = 80
TILE_JPEG_QUALITY = 85  # a label tile goes as JPEG when that is smaller than its PNG (see tile_picture)
MAX_TEXT = 400  # characters of one text label shown in the label table (longer ones end in " …")
DOC_STYLE = """
article { max-width: 880px; background: white; border: 1px solid #cfd8dc; border-radius: 6px; padding: 12px 20px; }
article p.text { font-size: 15px; line-height: 1.5; white-space: pre-wrap; }
figure.doc-image { width: auto; margin: 12px 0; padding: 8px; border: 1px solid #eceff1; border-radius: 4px; }
figure.doc-image img.thumb { max-width: %dpx; max-height: %dpx; width: auto; height: auto; object-fit: contain; }
figure.doc-image figcaption { font-size: 13px; white-space: normal; }
p.reason { color: #b71c1c; background: #fbe9e7; padding: 6px 8px; margin: 4px 0; white-space: pre-wrap; }
p.note { color: #607d8b; font-style: italic; margin: 2px 0; }
details { margin: 6px 0 0; } summary { cursor: pointer; color: #1e88e5; }
details > div.labels { padding: 8px 0; }
table.kv td:first-child { color: #546e7a; white-space: nowrap; }
td.dropped { color: #b71c1c; } td.kept { color: #2e7d32; }
""" % (THUMB_PIXELS, THUMB_PIXELS)


def is_document_store(uri: str) -> bool:
    """Is `uri` a document store (so `audit report` draws a document, not a clip)?"""
    return DocumentStore.exists(uri)


def write_doc_report(docs: str, key: str, out: str | Path, labels: str | None = None,
                     fetched: str | None = None) -> Path:
    """Write the page of document `key` of the document store `docs` to `out` (parents created); returns
    its path. `labels`: a label store of the document's images (keys IMAGE_KEY); `fetched`: the fetched
    store of its URL images. An unknown key raises UserError naming the store."""
    store = DocumentStore.open(docs)
    label_store = LabelStore.open(labels) if labels else None
    if label_store is not None and label_store.kind.frames_per_sample != 1:
        raise UserError(f"{labels} holds {label_store.sample_kind} samples; give the label store of the "
                        "document's images (`omnimill label` of the document store's local images)")
    fetched_store = FetchedStore.open(fetched) if fetched else None
    page = DocumentPage(store, store.index_of(key), label_store, fetched_store).html()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


class DocumentPage:
    """The page of one document row: the stores it reads, and the HTML of each part."""

    def __init__(self, store: DocumentStore, row: int, labels: LabelStore | None, fetched: FetchedStore | None):
        self.store, self.row, self.labels, self.fetched = store, row, labels, fetched
        self.doc = store.document(row)
        self.table = {image["key"]: image for image in self.doc["images"]}
        self._urls: dict[str, int] | None = None  # the fetched store's URL -> row, read at the first miss

    def html(self) -> str:
        e = html.escape
        key = self.doc["key"]
        parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
                 f"<title>omnimill audit · document {e(key)}</title><style>{STYLE}{DOC_STYLE}</style></head><body>",
                 f"<h1>Document <code>{e(key)}</code></h1>", self.header(), self.filters(),
                 "<h2>The document</h2>", self.article(), "</body></html>\n"]
        return "\n".join(parts)

    # ------------------------------------------------------------------ header and filters
    def header(self) -> str:
        e, doc = html.escape, self.doc
        source = str(self.store.read("source", self.row))
        state = "parsed" if doc["ok"] else f"not parsed: {doc['stage']}: {doc['reason']}"
        n_chars = int(self.store.column("n_text_chars", self.row))
        stores = [f"document store <code>{e(self.store.uri)}</code>"]
        stores.append(f"labels <code>{e(self.labels.uri)}</code>" if self.labels else "no label store (--labels)")
        stores.append(f"fetched <code>{e(self.fetched.uri)}</code>" if self.fetched else "no fetched store (--fetched)")
        meta = "".join(f"<tr><td>{e(str(k))}</td><td>{e(_text(v))}</td></tr>" for k, v in doc["meta"].items())
        return (f"<p class='meta'>row {self.row} of {self.store.n} · <code>{e(source)}</code> · {e(state)} · "
                f"{len(doc['images'])} images · {n_chars:,} characters of text<br>{' · '.join(stores)}</p>"
                f"<section id='metadata'><h2>Metadata</h2>"
                + (f"<table class='kv'>{meta}</table>" if meta else "<p class='note'>the corpus gave none</p>")
                + "</section>")

    def filters(self) -> str:
        e = html.escape
        names = self.store.filters()
        if not names:
            return ("<section id='filters'><h2>Filters</h2><p class='note'>no filter has run on this store "
                    "(`omnimill documents filter`)</p></section>")
        rows = []
        for name in names:
            kept = bool(self.store.kept(name)[self.row])
            reason = str(self.store.column("reason", self.row, part=f"filter_{name}"))
            settings = {k: v for k, v in self.store.filter_settings(name).items() if v is not None and v is not False}  # 0 is a setting
            verdict = ("<td class='kept'>kept</td>" if kept else f"<td class='dropped'>dropped: {e(reason)}</td>")
            rows.append(f"<tr><td><code>{e(name)}</code></td>{verdict}<td>{e(_text(settings))}</td></tr>")
        return ("<section id='filters'><h2>Filters</h2><table><thead><tr><th>filter</th><th>verdict</th>"
                f"<th>settings</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>")

    # ------------------------------------------------------------------ the document itself
    def article(self) -> str:
        if not self.doc["segments"]:
            why = "it was not parsed" if not self.doc["ok"] else "the document is empty"
            return f"<article><p class='note'>no segments: {html.escape(why)}</p></article>"
        body = []
        for n, segment in enumerate(self.doc["segments"]):
            if "image" in segment:
                body.append(self.image(segment))
            else:
                body.append(f"<p class='text' data-segment='{n}'>{html.escape(str(segment.get('text', '')))}</p>")
        return "<article>" + "\n".join(body) + "</article>"

    def image(self, segment: dict) -> str:
        """One image where it stands: thumbnail (or why there is none), alt text, source; its labels folded."""
        e = html.escape
        key = segment["image"]
        image = self.table.get(key, {})
        labels_row, labels_note = self.label_row(key, image)
        thumb, origin, problem = self.picture(key, image, labels_row)
        alt = segment.get("alt")
        caption = (f"“{e(alt)}”" if alt else "<span class='note'>(no alt text)</span>")
        if thumb is not None:
            data = base64.b64encode(thumb).decode("ascii")
            shown = f"<img class='thumb' alt='{e(alt or key)}' src='data:image/jpeg;base64,{data}'>"
            origin += f"; {problem}" if problem else ""
        else:
            shown = f"<p class='reason'>no picture: {e(problem)}</p>"
        return (f"<figure class='doc-image' id='{e(key)}' data-key='{e(key)}'>{shown}"
                f"<figcaption>{caption}<br><code>{e(key)}</code> · {e(origin)}</figcaption>"
                f"<details><summary>labels of {e(key)}</summary><div class='labels'>"
                f"{self.label_panel(key, labels_row, labels_note, segment.get('meta') or {})}</div></details></figure>")

    # ------------------------------------------------------------------ where a picture comes from
    def picture(self, key: str, image: dict, labels_row: int | None) -> tuple[bytes | None, str, str]:
        """(JPEG thumbnail or None, where the image is, what went wrong or ""). With no bytes to show, the label
        store's canonical view stands in, and the problem says so."""
        if not image:
            return None, "not in the image table", "the document's image table does not list it"
        origin = f"{image['kind']} {image['source']}"
        if image["kind"] == "url":
            data, problem = self.fetched_bytes(image["source"], key)
        elif "error" in image:
            data, problem = None, f"not read at ingest: {image['error']}"
        else:
            try:
                data, problem = self.store.local_image(key), ""
            except UserError as error:  # a damaged tar: said in the image's place
                data, problem = None, str(error)
        if data is not None:
            try:
                return thumbnail(data), origin + (", fetched" if image["kind"] == "url" else ", local tar"), ""
            except Exception as error:  # bytes the store kept that do not decode
                problem = f"does not decode ({type(error).__name__}: {error})"
        view = self.label_view(labels_row)
        if view is not None:
            return thumbnail_of(view), origin, f"{problem}; shown: the label store's canonical view"
        return None, origin, problem

    def fetched_row(self, url: str, key: str) -> int | None:
        """The fetched store's row of `url`. The document store's URL list names each URL by the IMAGE_KEY of
        the first document that holds it, so `key` is looked up first (the key index: two small reads); a URL
        shared with an earlier document falls back to reading the store's `url` column once per page."""
        if self.fetched is None:
            return None
        try:
            row = self.fetched.index_of(key)
            if str(self.fetched.read("url", row)) == url:
                return row
        except UserError:
            pass
        if self._urls is None:
            self._urls = {}
            for i, u in enumerate(self.fetched.read("url")):
                self._urls.setdefault(str(u), i)  # the fetch keeps one row per URL (the first listed)
        return self._urls.get(url)

    def fetched_bytes(self, url: str, key: str) -> tuple[bytes | None, str]:
        """(the fetched bytes, "") or (None, why there are none)."""
        if self.fetched is None:
            return None, "not fetched here (give --fetched FETCHED_STORE)"
        row = self.fetched_row(url, key)
        if row is None:
            return None, f"not in the fetched store {self.fetched.uri}"
        if not self.fetched.done_units("fetch")[row // self.fetched.unit_size]:
            return None, "its unit is not fetched yet (run `omnimill fetch` again)"
        if not bool(self.fetched.column("ok", row)):
            stage, reason = str(self.fetched.column("stage", row)), str(self.fetched.column("reason", row))
            return None, f"fetch failed at {stage}: {reason}"
        return self.fetched.image_bytes(row), ""

    # ------------------------------------------------------------------ labels
    def label_row(self, key: str, image: dict) -> tuple[int | None, str]:
        """The image's row in the label store, or why it has none: IMAGE_KEY, else the fetched store's key of
        its URL (a label store of the fetched images names each URL by its first document's key)."""
        if self.labels is None:
            return None, "no label store given (--labels LABEL_STORE)"
        tried = [key]
        if image.get("kind") == "url" and (row := self.fetched_row(image["source"], key)) is not None:
            tried.append(str(self.fetched.read("keys", row)))
        for candidate in dict.fromkeys(tried):
            try:
                return self.labels.index_of(candidate), ""
            except UserError:
                continue
        return None, f"not labelled: {' or '.join(dict.fromkeys(tried))} is not a key of {self.labels.uri}"

    def label_view(self, i: int | None) -> np.ndarray | None:
        """The label store's canonical view of sample i (its rgb teacher's), if it has one."""
        if i is None:
            return None
        for teacher in self.labels.teachers():
            name = _view_field(teacher, self.labels.provenance(teacher), self.labels.view_size)
            if name and bool(self.labels.ok(teacher, i)):
                return np.asarray(self.labels.read(f"{teacher}/{name}", i))
        return None

    def label_panel(self, key: str, i: int | None, note: str, corpus_meta: dict) -> str:
        e = html.escape
        facts = "".join(f"<tr><td>{e(str(k))}</td><td>{e(_text(v))}</td></tr>" for k, v in corpus_meta.items())
        facts = f"<h3>the corpus's facts of the image</h3><table class='kv'>{facts}</table>" if facts else ""
        if i is None:
            return f"<p class='reason'>no labels: {e(note)}</p>{facts}"
        texts = "".join(f"<tr><td>{e(name)}</td><td>{e(value)}</td></tr>"
                        for name, value in text_labels(self.labels, i))
        texts = (f"<table class='kv'>{texts}</table>" if texts else "<p class='note'>no text labels</p>")
        labelled = str(self.labels.read("keys", i))
        under = f" (labelled under <code>{e(labelled)}</code>)" if labelled != key else ""
        return (f"<p class='note'>sample {i} of <code>{e(self.labels.uri)}</code>{under}</p>"
                f"<div class='tiles'>{tiles_html(self.labels, i)}</div><h3>text labels</h3>{texts}{facts}")


def tiles_html(labels: LabelStore, i: int) -> str:
    """The sample's tiles as `audit report` / `audit query --html` draw them (render.sample_tiles, drawn by
    report._tile_png), each a <figure> with its title (report._figure); each picture the smaller of its PNG and
    JPEG."""
    figures = []
    for tile in sample_tiles(labels, i):
        kind, data = tile_picture(_tile_png(tile))
        figures.append(_figure(data, tile.title, kind))
    return "".join(figures)


def tile_picture(png: bytes) -> tuple[str, bytes]:
    """("png" | "jpeg", bytes): the smaller. A tile of a photo (rgb, canny over rgb) is ~55 kB of PNG and ~9 kB
    of JPEG at quality 85; a table or an edge map stays PNG (flat colours: PNG is the smaller). Measured on 16
    640x480 photos labelled rgb + metadata + canny: 2.16 MB of PNG tiles -> 0.61 MB."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=TILE_JPEG_QUALITY)
    jpeg = buffer.getvalue()
    return ("jpeg", jpeg) if len(jpeg) < len(png) else ("png", png)


def text_labels(labels: LabelStore, i: int) -> list[tuple[str, str]]:
    """The sample's caption and every label that is a word or a number (metadata, generated captions), as
    (name, text); a teacher that failed on it says why."""
    out = []
    caption = str(labels.read("caption", i))
    if caption:
        out.append(("caption (alt text)", caption))
    for teacher in labels.teachers():
        if not bool(labels.ok(teacher, i)):
            out.append((teacher, f"failed: {_failure_reason(labels, teacher, i)}"))
            continue
        for name in _field_names(labels.arrays(teacher), labels.provenance(teacher)):
            value = _scalar_or_array(labels.read(f"{teacher}/{name}", i))
            if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "OTUS":
                value = " · ".join(str(v) for v in value if str(v))  # K generated captions, padding left out
            elif isinstance(value, np.ndarray):
                continue  # a picture or a vector: the tiles draw it
            out.append((f"{teacher}/{name}", _text(value)))
    return out


def thumbnail(data: bytes) -> bytes:
    """Image bytes -> a JPEG at most THUMB_PIXELS on its longer side, upright (EXIF), on white if it had alpha."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (THUMB_PIXELS, THUMB_PIXELS))  # a JPEG decodes at 1/2, 1/4, 1/8 scale: fast
        return _jpeg(ImageOps.exif_transpose(image))


def thumbnail_of(view: np.ndarray) -> bytes:
    from PIL import Image

    return _jpeg(Image.fromarray(np.asarray(view, np.uint8)))


def _jpeg(image) -> bytes:
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, "white")
        image.paste(rgba, mask=rgba.getchannel("A"))
    image = image.convert("RGB")
    image.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _text(value) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 2] + " …"
