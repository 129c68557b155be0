"""The document sample kind: the images of a document store (store/documents.py), one sample each, keyed
IMAGE_KEY ("DOC_KEY/img_03"), in document order then position order, decoded exactly as the image kind
decodes (this kind is an `ImageKind`: same canonical view, same `crop_box`, same teachers).

    omnimill fetch DOCS/image_urls.jsonl FETCHED          (only when some documents have URL images)
    omnimill label DOCS OUT --sample-kind document --fetched FETCHED [--doc-filter NAME] --teacher ...

Where each image's bytes are read from, through the engine's normal reader (`SampleKind.fetch`):
  local   a path or tar member of the corpus: ingest copied it into the store's local tars
          (`DocumentStore.local_corpus()`, members `<IMAGE_KEY>.<ext>`); source = that tar, offset and size
          of the member's data
  url     the fetched store of the store's own URL list, looked up by URL (the same URL in two documents is
          fetched once and read by both); source = the fetched unit's tar, offset and size of the bytes

Nothing is dropped silently: an image without bytes is a row whose `error` column says why (a local image
that did not read at ingest, a URL whose fetch failed and its reason), and `decode` fails it with that
reason at stage "decode", which is final: the next run does not try it again (fetch it again with
`omnimill fetch`, then label into a new store). URL images and no fetched store is a UserError that says
what to run; a fetched store of another URL list, or one not fetched to the end, is refused.

Index columns (kept per sample in the label store): document (DOC_KEY), position (the image's place among
its document's images: IMAGE_KEY's NN), url ("" for a local image), error ("" when the bytes are there),
sha256 (of the bytes as listed: `decode` fails bytes that hash otherwise, for good, instead of labelling
another image: a fetched unit fetched again is a new tar whose offsets moved).
The caption is the image's alt text from the document's segments.

Index options: `fetched` (the fetched store's URI, as given) and `filter` (a `documents filter` name: only
the images of the documents it kept are listed, so the cheap filters run first and fewer images are
labelled). What was read is recorded in `CorpusIndex.listing["stores"]`: the document store's uri and
uuid, the fetched store's uri, uuid and URL list, the filter and its settings; `check_stores` refuses a
resumed run whose stores at those paths were made again (another uuid: the recorded offsets are stale).

corpus/ imports no store (tests/test_architecture.py: store imports corpus). `index` is therefore handed
the opened stores by whoever may open them (the label engine): `documents` (a DocumentStore) and
`fetched_store` (a FetchedStore or None), and uses their public read API only: uri, uuid, unit_size,
storage_options, read, column, images, filters, filter_settings, kept, local_corpus, complete, source,
tar_path.
"""

from __future__ import annotations

import hashlib
import json

from omnimill.corpus.image import Decoded, ImageKind
from omnimill.corpus.sample import DecodeSettings, SampleArray
from omnimill.errors import SampleError, UserError

URL_LIST = "image_urls.jsonl"  # the URL list a document store writes beside itself (DocumentStore.url_list)


class DocumentKind(ImageKind):
    """An image of a document, keyed IMAGE_KEY; everything about the view is the image kind's."""

    name = "document"
    noun = "image of a document"
    plural = "images of documents"
    index_columns = (
        SampleArray("document", (), "str", "DOC_KEY of the document the image belongs to"),
        SampleArray("position", (), "int32", "the image's place among its document's images (IMAGE_KEY's NN)"),
        SampleArray("url", (), "str", "the URL it was fetched from; '' for a local image"),
        SampleArray("error", (), "str", "why its bytes are not there (the sample fails); '' when they are"),
        SampleArray("sha256", (), "str", "of the bytes when listed: bytes read later must hash to it"),
    )
    index_options = {"fetched": None, "filter": None}

    def index(self, uri: str, storage_options: dict | None = None, fetched: str | None = None,
              filter: str | None = None, documents=None, fetched_store=None):
        """The images of the document store at `uri` (a CorpusIndex). `documents` and `fetched_store`: the
        stores opened by the caller (module docstring); `fetched`: the fetched store's URI as given."""
        if documents is None:
            raise UserError(f"{uri}: labelling a document store needs the label engine to open it (and --fetched); "
                            "this omnimill's engine does not: label DocumentStore.local_corpus() instead")
        if fetched is not None and fetched_store is None:
            raise UserError(f"--fetched {fetched} was given but not opened by the label engine")
        return image_index(documents, fetched_store, filter, storage_options)

    def check_stores(self, recorded: dict, documents=None, fetched_store=None) -> None:
        """A resumed run reads bytes where the listing pointed: refuse when the store at a recorded path is not
        the one listed (`recorded`: the listing's "stores"; a store ingested or fetched again has a new uuid)."""
        for name, store in (("documents", documents), ("fetched", fetched_store)):
            was = recorded.get(name)
            if was and store is not None and store.uuid != was["uuid"]:
                raise UserError(f"{store.uri} is not the {store.WHAT} this label store was listed from (uuid "
                                f"{store.uuid}, listed {was['uuid']}: made again since?); label into a new store")

    def fetch(self, reader, sample: dict) -> bytes:
        """The image's bytes; none for a row that records why it has none (decode fails it)."""
        return b"" if sample.get("error") else super().fetch(reader, sample)

    def decode(self, data: bytes, sample: dict, settings: DecodeSettings) -> Decoded:
        if sample.get("error"):
            raise SampleError("decode", str(sample["error"]))
        if sample.get("sha256") and hashlib.sha256(data).hexdigest() != sample["sha256"]:
            # A fetched unit fetched again is a new tar: its offsets moved. Wrong bytes must not be labelled.
            raise SampleError("decode", "the bytes at its offset are not the ones listed (its store was written "
                                        "again since); label into a new store")
        return super().decode(data, sample, settings)


def image_index(documents, fetched_store=None, filter: str | None = None, storage_options: dict | None = None):
    """Every image of `documents` (of the documents `filter` kept), in document order then position, as a
    CorpusIndex of sample kind "document" (module docstring: sources, error rows, columns, provenance)."""
    from omnimill.corpus.listing import CorpusIndex, normalise_uri  # not at import: listing imports the registry

    storage_options = storage_options or documents.storage_options
    images = documents.images()  # refuses a store not ingested to the end
    doc_keys = documents.read("keys")
    kept = _kept(documents, filter)
    images = [i for i in images if kept is None or kept[i["doc"]]]
    urls = [i for i in images if i["kind"] == "url"]
    if urls and fetched_store is None:
        raise UserError(f"{len(urls)} images of {documents.uri} are URLs and no fetched store was given; run "
                        f"`omnimill fetch {documents.uri.rstrip('/')}/{URL_LIST} FETCHED` then pass --fetched FETCHED")
    fetched = _fetched_by_url(fetched_store, documents) if fetched_store is not None else {}
    local = _local_members(documents, storage_options) if len(urls) < len(images) else {}
    alts = _alts(documents)
    index = CorpusIndex(normalise_uri(documents.uri), "documents", sample_kind=DocumentKind.name)
    position, last_doc = 0, None
    for image in images:
        position = position + 1 if image["doc"] == last_doc else 0
        last_doc = image["doc"]
        key = image["key"]
        where, error = (fetched.get(image["source"], _NOT_FETCHED) if image["kind"] == "url"
                        else _local_source(image, local))
        source, offset, size, sha256 = where or ("", -1, -1, "")
        index.add(key, source, offset, size, alts.get(key) or "",
                  {"document": str(doc_keys[image["doc"]]), "position": position,
                   "url": image["source"] if image["kind"] == "url" else "", "error": error, "sha256": sha256})
    index.listing = {"stores": _provenance(documents, fetched_store, filter)}
    return index


_NOT_FETCHED = (None, "the URL is not in the fetched store (it was fetched from an older URL list?)")


def _kept(documents, filter: str | None):
    """The filter's verdict per document, or None (every document) when no filter is named."""
    if filter is None:
        return None
    if filter not in documents.filters():
        known = ", ".join(documents.filters()) or "none"
        raise UserError(f"{documents.uri} has no filter {filter!r} (filters: {known}); run `omnimill documents filter "
                        f"{documents.uri} --name {filter} ...` first, or drop --doc-filter")
    return documents.kept(filter)


def _fetched_by_url(fetched_store, documents) -> dict[str, tuple]:
    """{url: ((tar, offset, size, sha256), "") for a good image, or (None, why not)}, from a complete fetched store of
    this document store's URL list."""
    from omnimill.corpus.fetch import EXTENSIONS  # not at import: fetch imports listing, which imports the registry
    from omnimill.corpus.listing import MEMBER_SEP, normalise_uri

    wanted = normalise_uri(f"{documents.uri.rstrip('/')}/{URL_LIST}")
    if fetched_store.source.get("uri") != wanted:
        raise UserError(f"{fetched_store.uri} holds the images of {fetched_store.source.get('uri')}, not of {wanted}; "
                        f"run `omnimill fetch {wanted} FETCHED` and pass that --fetched")
    if not fetched_store.complete():
        raise UserError(f"{fetched_store.uri} is not fetched to the end; run `omnimill fetch {wanted} "
                        f"{fetched_store.uri}` again first")
    keys, urls = fetched_store.read("keys"), fetched_store.read("url")
    ok, stage, reason, offset, nbytes, kind, sha = (fetched_store.column(c) for c in ("ok", "stage", "reason", "offset",
                                                                                  "nbytes", "content_type", "sha256"))
    found = {}
    for row, url in enumerate(urls):
        if not ok[row]:
            found[str(url)] = (None, f"fetch failed ({stage[row]}): {reason[row]}")
            continue
        tar = fetched_store.tar_path(row // fetched_store.unit_size)
        member = f"{keys[row]}.{EXTENSIONS.get(str(kind[row]), 'img')}"  # as the fetched store names it
        found[str(url)] = ((f"{tar}{MEMBER_SEP}{member}", int(offset[row]), int(nbytes[row]), str(sha[row])), "")
    return found


def _local_members(documents, storage_options: dict | None) -> dict[str, tuple]:
    """{IMAGE_KEY: (source, offset, size)} of the local images ingest copied into the store's tars."""
    from omnimill.corpus.listing import index_corpus

    corpus = documents.local_corpus()
    if corpus is None:
        return {}
    listed = index_corpus(corpus, storage_options, "image")
    return {k: (s, o, z) for k, s, o, z in zip(listed.keys, listed.sources, listed.offsets, listed.sizes)}


def _local_source(image: dict, local: dict) -> tuple:
    if "sha256" not in image:  # ingest could not read it: its reason
        return None, f"ingest: {image.get('error') or 'the image was not read'}"
    if image["key"] not in local:
        return None, "not in the document store's local tars; run `omnimill verify` on the document store"
    return (*local[image["key"]], image["sha256"]), ""


def _alts(documents) -> dict[str, str]:
    """{IMAGE_KEY: alt text} from every document's segments."""
    return {seg["image"]: seg.get("alt") or "" for text in documents.column("segments")
            for seg in json.loads(str(text) or "[]") if "image" in seg}


def _provenance(documents, fetched_store, filter: str | None) -> dict:
    """What the listing read, for the label store's record (a resumed or later run can be checked against it)."""
    record = {"documents": {"uri": documents.uri, "uuid": documents.uuid}}
    if fetched_store is not None:
        record["fetched"] = {"uri": fetched_store.uri, "uuid": fetched_store.uuid,
                             "urls": fetched_store.source.get("uri")}
    if filter is not None:
        record["filter"] = {"name": filter, "settings": documents.filter_settings(filter)}
    return record
