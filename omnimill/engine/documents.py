"""`omnimill documents`: ingest a document corpus into a document store (a unit job, job.py), and filter it.

    ingest: list the documents (corpus/documents.list_documents) -> create the document store (or open it:
    the same documents) -> units of `docs_per_unit` documents -> run and sweep on Dask -> the image lists
    (a URL list for `omnimill fetch`, the local images' tars for `omnimill label`) -> record

A unit reads its documents (a parquet unit only the row groups holding its rows), reads the bytes of its
local images (paths, tar members: sha256, format and size from the header), writes its tar of local
images and its rows, then its commit marker, which lists each malformed document with its key, stage and
reason. A killed run's rerun does the units without a marker; `--force` starts over, `--repair` redoes
the units `verify` finds damaged. A local image that does not read is kept in its document with its
`error` (the document still parses; `filter --min-side` drops it).

    filter: per document, kept or the reason it is not, for each check asked: images per document
    (min/max), text length (min characters), image size (min side: local images' headers, URL images' from
    a fetched store, looked up by URL, or any image's from a label store's metadata teacher), the corpus's
    image-text similarity (MMC4's matched_sim: CLIP with the matched sentence, min over the images), exact duplicate images across documents (sha256 of local bytes, and
    of the fetched bytes when a fetched store is given: a document holding an image an EARLIER document
    holds is dropped). Written as
    the part `filter_<name>` with its settings (store/documents.py).
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
            failed.append({"index": task.start + i, "key": doc.key, "stage": stage, "error": reason})
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

    def tally(self, result: JobResult) -> None:
        for marker in self.store.markers(PART):
            if marker is None:
                result.store_missing += 1
            else:
                result.store_failed += marker["failed"]
                result.store_final += marker["failed"]


# ---------------------------------------------------------------- filters
@dataclass
class FilterSettings:
    min_images: int | None = None
    max_images: int | None = None
    min_chars: int | None = None
    min_side: int | None = None  # pixels, of every image of the document
    min_sim: float | None = None  # the corpus's image-text similarity of every image (MMC4's matched_sim)
    dedup: bool = False  # exact duplicate images across documents (sha256)
    fetched: str | None = None  # a fetched store: the sizes and sha256 of the URL images
    labels: str | None = None  # a label store with the metadata teacher, keyed by IMAGE_KEY: image sizes

    def asked(self) -> bool:
        return any(v not in (None, False) for k, v in vars(self).items() if k not in ("fetched", "labels"))


def filter_documents(store_uri: str, name: str, settings: FilterSettings, force: bool = False,
                     storage_options: dict | None = None) -> dict:
    """Judge every document of a complete document store; write the verdicts as the part `filter_<name>`.
    Returns {n, kept, dropped_by: {check: documents}}."""
    if not settings.asked():
        raise UserError("no filter asked: give --min-images, --max-images, --min-chars, --min-side, --min-sim or --dedup")
    store = DocumentStore.open(store_uri, "r+", storage_options)
    images = store.images()  # refuses an incomplete store
    fetched = _fetched_facts(settings.fetched, storage_options) if settings.fetched else {}
    sizes = _label_sizes(settings.labels, storage_options) if settings.labels else {}
    if settings.min_side and any(i["kind"] == "url" for i in images) and not (fetched or sizes):
        raise UserError("the store has URL images: give --fetched FETCHED_STORE (from `omnimill fetch` of its "
                        "image_urls.jsonl) or --labels LABEL_STORE (its metadata teacher) for their sizes")
    sims = _matched_sims(store) if settings.min_sim is not None else {}
    by_doc: dict[int, list[dict]] = {}
    for image in images:  # what is known of each image: local header or fetched store, then the label store's size
        facts = fetched.get(image["source"], {}) if image["kind"] == "url" else image
        known = {k: facts[k] for k in ("sha256", "width", "height") if k in facts}
        by_doc.setdefault(image["doc"], []).append({**image, **known, **sizes.get(image["key"], {}),
                                                    **sims.get(image["key"], {})})
    ok, n_images, chars = store.column("ok"), store.column("n_images"), store.column("n_text_chars")
    first_holder: dict[str, str] = {}  # sha256 -> IMAGE_KEY of its first document
    kept, reasons, dropped_by = [], [], {}
    for row in range(store.n):
        reason = _judge(settings, bool(ok[row]), int(n_images[row]), int(chars[row]), by_doc.get(row, []),
                        first_holder)
        kept.append(not reason)
        reasons.append(reason)
        if reason:
            check = reason.split(":", 1)[0]
            dropped_by[check] = dropped_by.get(check, 0) + 1
    record = {k: v for k, v in vars(settings).items()}
    if settings.fetched:
        record["fetched_uuid"] = _fetched_uuid(settings.fetched, storage_options)
    if settings.labels:
        from omnimill.store.labels import LabelStore

        record["labels_uuid"] = LabelStore.open(settings.labels, "r", storage_options).uuid
    token = store.acquire_lock(False, "filtered")
    try:
        store.write_filter(name, record, kept, reasons, force)
        store.append_run({"filter": name, "settings": record, "n": store.n, "kept": sum(kept), "dropped_by": dropped_by})
    finally:
        store.release_lock(token)
    return {"n": store.n, "kept": sum(kept), "dropped_by": dropped_by}


def _judge(s: FilterSettings, ok: bool, n_images: int, chars: int, images: list[dict], first_holder: dict) -> str:
    """The first check the document fails, in words ("" when it passes). Every image's hash is noted as held
    whatever the verdict, so which document counts as the first holder does not depend on other checks."""
    duplicate = ""
    if s.dedup:
        for image in images:
            digest = image.get("sha256")
            if digest and first_holder.setdefault(digest, image["key"]).rsplit("/", 1)[0] != image["key"].rsplit("/", 1)[0]:
                duplicate = duplicate or f"duplicate: {image['key']} is {first_holder[digest]}"
    if not ok:
        return "malformed"
    if s.min_images is not None and n_images < s.min_images:
        return f"min_images: {n_images} < {s.min_images}"
    if s.max_images is not None and n_images > s.max_images:
        return f"max_images: {n_images} > {s.max_images}"
    if s.min_chars is not None and chars < s.min_chars:
        return f"min_chars: {chars} < {s.min_chars}"
    if s.min_side is not None:
        for image in images:
            if "width" not in image:
                return f"min_side: {image['key']} has no size ({image.get('error') or 'not fetched'})"
            side = min(image["width"], image["height"])
            if side < s.min_side:
                return f"min_side: {image['key']} is {image['width']}x{image['height']}, side {side} < {s.min_side}"
    if s.min_sim is not None:
        for image in images:
            if "matched_sim" not in image:
                return f"min_sim: {image['key']} has no matched_sim in the corpus"
            if image["matched_sim"] < s.min_sim:
                return f"min_sim: {image['key']} matched_sim {image['matched_sim']:.3f} < {s.min_sim}"
    return duplicate


def _matched_sims(store: DocumentStore) -> dict[str, dict]:
    """IMAGE_KEY -> {matched_sim} where the corpus gave one (MMC4: CLIP ViT-L/14 similarity of the image with
    its matched sentence; its authors kept images at 0.15 and above)."""
    out = {}
    for text in store.column("segments"):
        for seg in json.loads(str(text) or "[]"):
            sim = seg.get("meta", {}).get("matched_sim") if "image" in seg else None
            if isinstance(sim, (int, float)):
                out[seg["image"]] = {"matched_sim": float(sim)}
    return out


def _fetched_facts(uri: str, storage_options: dict | None) -> dict[str, dict]:
    """URL -> {sha256, width, height} of each good image of a fetched store (by URL: the fetch keeps one key
    per URL, the first document's)."""
    from omnimill.store.fetched import FetchedStore

    store = FetchedStore.open(uri, "r", storage_options)
    urls, good = store.read("url"), store.column("ok")
    sha, width, height = store.column("sha256"), store.column("width"), store.column("height")
    return {str(urls[i]): {"sha256": str(sha[i]), "width": int(width[i]), "height": int(height[i])}
            for i in range(store.n) if good[i]}


def _label_sizes(uri: str, storage_options: dict | None) -> dict[str, dict]:
    """IMAGE_KEY -> {width, height} from a label store's metadata teacher (orig_width, orig_height: the file's
    upright size), for the images it labelled."""
    from omnimill.store.labels import LabelStore

    store = LabelStore.open(uri, "r", storage_options)
    if "metadata" not in store.parts():
        raise UserError(f"{uri} has no metadata teacher; label it with `--teacher metadata` for image sizes")
    keys, ok = store.keys(), store.read("metadata/ok")
    width, height = store.read("metadata/orig_width"), store.read("metadata/orig_height")
    return {str(keys[i]): {"width": int(width[i]), "height": int(height[i])} for i in range(len(keys)) if ok[i]}


def _fetched_uuid(uri: str, storage_options: dict | None) -> str:
    from omnimill.store.fetched import FetchedStore

    return FetchedStore.open(uri, "r", storage_options).uuid
