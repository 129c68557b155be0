"""`omnimill documents ingest`: a document corpus into a document store, as a unit job (job.py).

    ingest: list the documents (corpus/documents.list_documents) -> create the document store (or open it:
    the same documents) -> units of `docs_per_unit` documents -> run and sweep on Dask -> the image lists
    (a URL list for `omnimill fetch`, the local images' tars for `omnimill label`) -> record

A unit reads its documents (a parquet unit only the row groups holding its rows), reads the bytes of its
local images (paths, tar members: sha256, format and size from the header), writes its tar of local
images and its rows, then its commit marker, which lists each malformed document with its key, stage and
reason. A killed run's rerun does the units without a marker; `--force` starts over, `--repair` redoes
the units `verify` finds damaged. A local image that does not read is kept in its document with its
`error` (the document still parses; `filter --min-side` drops it). Filters: engine/document_filters.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field

from omnimill.corpus.documents import list_documents, read_documents, text_chars
from omnimill.corpus.listing import ByteReader
from omnimill.engine.job import JobOptions, JobResult, UnitJob, at_least_one, check_options, run_job, with_overrides
from omnimill.errors import UserError
from omnimill.store.documents import PART, DocumentStore

DEFAULT_DOCS_PER_UNIT = 256  # an OBELICS document is ~1-2 kB of text and ~2 images: a unit is a few hundred kB
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


@dataclass
class IngestOptions(JobOptions):
    docs_per_unit: int | None = None  # fixed when the store is created


@dataclass
class IngestTask:
    store: str
    unit: int
    start: int
    stop: int
    form: str
    storage_options: dict = field(default_factory=dict)
    attempt: int = 0
    workers_per_host: dict = field(default_factory=dict)


@dataclass
class Ingested:
    """What `ingest_documents` did, and where the images are to go next."""

    result: JobResult
    url_list: str | None = None  # for `omnimill fetch URL_LIST fetched.zarr`
    local_corpus: str | None = None  # for `omnimill label LOCAL_CORPUS labels.zarr`


def ingest_documents(corpus: str, out: str, options: IngestOptions | None = None, **overrides) -> Ingested:
    """Every document of `corpus` into the document store `out` (created or resumed); once every unit is
    committed, the image lists. The result's `store_failed` counts the malformed documents."""
    opts = with_overrides(options or IngestOptions(), overrides)
    at_least_one(opts, {"docs_per_unit": "--docs-per-unit"})
    check_options(opts)
    from omnimill.corpus.listing import normalise_uri

    uri = normalise_uri(corpus)
    form, refs = list_documents(uri, opts.storage_options)
    if not refs:
        raise UserError(f"no documents found in {uri} ({form})")
    state = DocumentStore.state(out, opts.storage_options)
    if state.startswith("other"):
        raise UserError(f"{out} is {state.removeprefix('other: ')}; give a new path for the document store")
    if state == "store":
        store = DocumentStore.open(out, "r+", opts.storage_options)
        if store.corpus.get("uri") != uri or store.refs() != refs:
            raise UserError(f"{out} holds the documents of {store.corpus.get('uri')} ({store.n}), not of {uri} as it "
                            f"is now ({len(refs)}); give a new document store path")
    else:
        store = DocumentStore.create(out, {"uri": uri, "form": form}, refs, opts.docs_per_unit or DEFAULT_DOCS_PER_UNIT,
                                     opts.storage_options)
    result = run_job(IngestJob(store, form, opts))
    done = Ingested(result)
    if store.complete():
        done.url_list, done.local_corpus = store.url_list(), store.local_corpus()
    return done


def ingest_unit(task: IngestTask) -> dict:
    """Worker side: parse the unit's documents, read its local images, write its tar and rows, then its
    marker (the commit)."""
    from omnimill.engine.runtime import unit_marker

    t0 = time.perf_counter()
    store = DocumentStore.open(task.store, "r+", task.storage_options)
    docs = read_documents(task.form, store.refs(task.start, task.stop), task.storage_options)
    columns: dict[str, list] = {name: [] for name in ("segments", "meta", "images", "n_images", "n_text_chars", "ok",
                                                      "stage", "reason")}
    local, failed, image_errors = [], [], 0
    reader = ByteReader(task.storage_options)  # keeps a tar open across its members
    for i, doc in enumerate(docs):
        rows, alts = [], {seg["image"]: seg["alt"] for seg in doc.segments if "image" in seg}
        for image in doc.images:
            row = {"key": image.key, "kind": image.kind, "source": image.source, "offset": image.offset,
                   "size": image.size}
            if image.kind != "url":
                row.update(_local(image, reader, local, alts.get(image.key)))
                image_errors += "error" in row
            rows.append(row)
        stage, reason = doc.error or ("", "")
        if doc.error:
            failed.append({"index": task.start + i, "key": doc.key, "stage": stage, "error": reason,
                           "retryable": False})  # a malformed document is malformed again
        for name, value in (("segments", json.dumps(doc.segments)), ("meta", json.dumps(doc.meta)),
                            ("images", json.dumps(rows)), ("n_images", len(doc.images)),
                            ("n_text_chars", text_chars(doc.segments)), ("ok", not doc.error), ("stage", stage),
                            ("reason", reason)):
            columns[name].append(value)
    reader.close()
    seconds = time.perf_counter() - t0
    n = task.stop - task.start
    marker = unit_marker(task, ok=n - len(failed), failed=len(failed), errors=failed,
                         images=sum(columns["n_images"]), local=len(local), image_errors=image_errors,
                         seconds=round(seconds, 3))
    store.write_unit(task.unit, columns, local, marker)
    return {"unit": task.unit, "n": n, "ok": {PART: n - len(failed)}, "failed": {PART: len(failed)},
            "images": sum(columns["n_images"]), "seconds": seconds}


def _local(image, reader: ByteReader, local: list, alt: str | None) -> dict:
    """Read a local image: its sha256, format and size (header only), added to `local` as a tar member with its
    alt text as `<IMAGE_KEY>.txt` (the label store's caption, as a fetched store's tar has it); or why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = reader.read(image.source, image.offset, image.size)
    except OSError as e:
        return {"error": f"does not read ({type(e).__name__}: {e})"}
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        return {"error": f"not an image ({type(e).__name__})"}
    ext = EXTENSIONS.get(fmt or "")
    if ext is None:
        return {"error": f"image format {fmt} is not one the image corpus lists"}
    local.append((f"{image.key}.{ext}", data))
    if alt:
        local.append((f"{image.key}.txt", alt.encode()))
    return {"sha256": hashlib.sha256(data).hexdigest(), "width": width, "height": height, "ext": ext}


class IngestJob(UnitJob):
    VERB, LOCKED_AS, PARTS = "ingesting", "ingested", "parts"
    work = staticmethod(ingest_unit)

    def __init__(self, store: DocumentStore, form: str, options: IngestOptions):
        super().__init__(store, [PART], options)
        self.form = form

    def prepare(self, part: str, force: bool) -> None:
        self.store.prepare(force)

    def plan(self, result: JobResult, sweep: bool) -> list[IngestTask]:
        """A task for every unit without a marker (a malformed document is recorded, not retried: it fails again)."""
        done = self.store.done_units(PART)
        return [IngestTask(self.store.uri, u, self.store.unit(u).start, self.store.unit(u).stop, self.form,
                           self.options.storage_options) for u in range(self.store.n_units) if not done[u]]
