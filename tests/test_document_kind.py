"""The document sample kind (corpus/document_kind.py): a real document store ingested from an OBELICS parquet
with local images and URL images served by tests/http_server.py, fetched with `omnimill fetch`, listed into
one image sample per IMAGE_KEY, and labelled through `omnimill label --sample-kind document` on a LocalCluster."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from conftest import jpeg_bytes
from PIL import Image
from test_cli import invoke, one_line_error
from test_documents import obelics, png_bytes

from omnimill.corpus.image import ImageKind
from omnimill.corpus.kinds import kind_of
from omnimill.corpus.listing import ByteReader
from omnimill.corpus.sample import DecodeSettings
from omnimill.errors import SampleError, UserError
from omnimill.store.documents import DocumentStore
from omnimill.store.fetched import FetchedStore
from omnimill.store.labels import LabelStore

SETTINGS = DecodeSettings(view_size=32, max_pixels=10**8)
# Document order then position: (IMAGE_KEY, document, position, url path or "", error fragment or "")
EXPECTED = [
    ("web_0000000/img_00", "web_0000000", 0, "", ""),
    ("web_0000000/img_01", "web_0000000", 1, "good/1.jpg", ""),
    ("web_0000001/img_00", "web_0000001", 0, "missing.jpg", "fetch failed (http): HTTP 404"),
    ("web_0000001/img_01", "web_0000001", 1, "", ""),
    ("web_0000002/img_00", "web_0000002", 0, "", "ingest: not an image"),
    ("web_0000003/img_00", "web_0000003", 0, "good/1.jpg", ""),  # the same URL again: fetched once, read twice
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(documents uri, fetched uri, {IMAGE_KEY: the bytes it must read back}) of a 5-document corpus."""
    from http_server import serving

    tmp = tmp_path_factory.mktemp("docs")
    (tmp / "imgs").mkdir()
    local = {"a.jpg": jpeg_bytes(3, size=(48, 40)), "b.png": png_bytes(4), "bad.jpg": b"not an image"}
    for name, data in local.items():
        (tmp / "imgs" / name).write_bytes(data)
    with serving() as server:
        good = server.url("good/1.jpg")
        rows = [
            {"images": ["imgs/a.jpg", None, good], "texts": [None, "a text between two images", None],
             "metadata": [{"alt_text": "local a"}, None, {"alt_text": "remote one"}]},
            {"images": [server.url("missing.jpg"), None, "imgs/b.png"], "texts": [None, "gone, then b", None]},
            {"images": ["imgs/bad.jpg", None], "texts": [None, "an image that does not decode"]},
            {"images": [good, None], "texts": [None, "the good URL once more"]},
            {"images": [None], "texts": ["words only, no image at all"]},
        ]
        corpus = obelics(tmp, rows, name="web.parquet")
        docs, fetched = tmp / "docs.zarr", tmp / "fetched.zarr"
        ingest = invoke("documents", "ingest", corpus, docs, "--docs-per-unit", "2", "--workers", "1", "--no-progress")
        assert ingest.exit_code == 0, ingest.output
        got = invoke("fetch", docs / "image_urls.jsonl", fetched, "--workers", "1", "--no-progress", "--retries", "0",
                     "--timeout", "2", "--urls-per-unit", "2")
        assert got.exit_code == 3, got.output  # complete; missing.jpg failed for good
    store = FetchedStore.open(str(fetched))
    good_row = [str(u) for u in store.read("url")].index(good)
    expected = {"web_0000000/img_00": local["a.jpg"], "web_0000001/img_01": local["b.png"],
                "web_0000000/img_01": store.image_bytes(good_row), "web_0000003/img_00": store.image_bytes(good_row)}
    return str(docs), str(fetched), expected


def listed(docs: str, fetched: str | None = None, filter: str | None = None):
    """The kind's listing of the document store, the stores opened here as the label engine opens them."""
    return kind_of("document").index(docs, fetched=fetched, filter=filter, documents=DocumentStore.open(docs),
                                     fetched_store=FetchedStore.open(fetched) if fetched else None)


# ---------------------------------------------------------------- the listing
def test_every_image_once_in_document_order_with_its_document_position_and_reason(stores):
    docs, fetched, _ = stores
    index = listed(docs, fetched)
    assert index.sample_kind == "document" and index.keys == [e[0] for e in EXPECTED]
    extras = [dict(x) for x in index.extras]
    assert [(x["document"], x["position"]) for x in extras] == [(e[1], e[2]) for e in EXPECTED]
    assert [x["url"].rsplit("/", 2)[-1] if x["url"] else "" for x in extras] == [
        e[3].rsplit("/", 1)[-1] for e in EXPECTED]
    for x, e in zip(extras, EXPECTED):
        assert (e[4] in x["error"]) and bool(x["error"]) == bool(e[4]), (x, e)
    assert index.captions[0] == "local a" and index.captions[1] == "remote one"
    record = index.listing["stores"]
    assert record["documents"]["uuid"] == DocumentStore.open(docs).uuid
    assert record["fetched"]["uuid"] == FetchedStore.open(fetched).uuid
    assert record["fetched"]["urls"].endswith("docs.zarr/image_urls.jsonl")


def test_each_sample_reads_its_own_bytes_through_the_engine_reader_and_decodes_as_an_image(stores):
    docs, fetched, expected = stores
    index, kind = listed(docs, fetched), kind_of("document")
    assert isinstance(kind, ImageKind) and kind.sample_arrays == ImageKind.sample_arrays
    with ByteReader() as reader:
        for i, key in enumerate(index.keys):
            sample = {"source": index.sources[i], "offset": index.offsets[i], "size": index.sizes[i],
                      "caption": index.captions[i], **index.extras[i]}
            data = kind.fetch(reader, sample)
            if key not in expected:  # a failing row: no read, and decode says why, for good
                assert data == b"" and index.offsets[i] == -1
                with pytest.raises(SampleError) as failed:
                    kind.decode(data, sample, SETTINGS)
                assert failed.value.stage == "decode" and failed.value.reason == sample["error"]
                continue
            assert hashlib.sha256(data).digest() == hashlib.sha256(expected[key]).digest(), key
            assert ".tar::" in index.sources[i]  # the store's local tar, or the fetched unit's tar
            decoded = kind.decode(data, sample, SETTINGS)
            image = ImageKind().decode(data, sample, SETTINGS)  # exactly the image kind's view
            assert (decoded.view == image.view).all() and decoded.info == image.info
            assert decoded.info.width == Image.open(io.BytesIO(expected[key])).width
            other = next(v for k, v in expected.items() if v != expected[key])  # what a moved offset would read
            with pytest.raises(SampleError, match="not the ones listed"):
                kind.decode(other, sample, SETTINGS)


def test_url_images_without_a_fetched_store_or_with_another_lists_store_are_refused(stores, tmp_path):
    docs, fetched, _ = stores
    with pytest.raises(UserError, match=r"3 images of .* are URLs and no fetched store was given; run `omnimill "
                                        r"fetch .*docs.zarr/image_urls.jsonl FETCHED` then pass --fetched FETCHED"):
        listed(docs)
    other = tmp_path / "urls.jsonl"
    other.write_text(json.dumps({"url": "http://127.0.0.1:9/x.jpg"}) + "\n")
    assert invoke("fetch", other, tmp_path / "other.zarr", "--workers", "1", "--no-progress", "--retries", "0",
                  "--timeout", "0.5").exit_code == 3
    with pytest.raises(UserError, match="holds the images of .*urls.jsonl, not of .*docs.zarr/image_urls.jsonl"):
        listed(docs, str(tmp_path / "other.zarr"))
    with pytest.raises(UserError, match="needs the label engine to open it"):
        kind_of("document").index(docs)


def test_a_filter_lists_only_the_images_of_the_documents_it_kept(stores):
    docs, fetched, _ = stores
    with pytest.raises(UserError, match="has no filter 'nope'"):
        listed(docs, fetched, filter="nope")
    # keep documents with at most one image: web_0000002 (local, broken), web_0000003 (a URL), web_0000004 (none)
    filtered = invoke("documents", "filter", docs, "--name", "one", "--max-images", "1")
    assert filtered.exit_code == 0, filtered.output
    index = listed(docs, fetched, filter="one")
    assert index.keys == ["web_0000002/img_00", "web_0000003/img_00"]
    assert index.listing["stores"]["filter"]["name"] == "one"
    # keep only the documents without URL images: no fetched store needed any more
    nourl = invoke("documents", "filter", docs, "--name", "nourl", "--max-images", "1", "--min-chars", "29")
    assert nourl.exit_code == 0, nourl.output
    assert listed(docs, filter="nourl").keys == ["web_0000002/img_00"]


# ---------------------------------------------------------------- through `omnimill label`
def test_label_a_document_store_through_the_cli_once_then_resume_does_nothing(stores, tmp_path):
    docs, fetched, _ = stores
    out = tmp_path / "labels.zarr"
    args = (docs, out, "--sample-kind", "document", "--fetched", fetched, "--teacher", "metadata", "--workers", "1",
            "--no-progress", "--unit-size", "4")
    first = invoke("label", *args)
    assert first.exit_code == 3, first.output  # complete, two samples failed for good
    labels = LabelStore.open(str(out))
    assert labels.sample_kind == "document" and [str(k) for k in labels.read("keys")] == [e[0] for e in EXPECTED]
    assert [str(d) for d in labels.read("document")] == [e[1] for e in EXPECTED]
    assert labels.read("position").tolist() == [e[2] for e in EXPECTED]
    assert labels.ok("metadata", slice(None)).tolist() == [not e[4] for e in EXPECTED]
    errors = [e for m in labels.markers("metadata") if m for e in m["errors"]]
    assert sorted((e["key"], e["stage"], e["retryable"]) for e in errors) == [
        ("web_0000001/img_00", "decode", False), ("web_0000002/img_00", "decode", False)]
    assert any("HTTP 404" in e["error"] for e in errors) and any("ingest: not an image" in e["error"] for e in errors)
    assert labels.corpus["listing"]["stores"]["fetched"]["uuid"] == FetchedStore.open(fetched).uuid
    status = invoke("status", out)
    assert status.exit_code == 0 and "HTTP 404" in status.output, status.output
    assert "ingest: not an image" in status.output, status.output
    checked = invoke("verify", out)
    assert checked.exit_code == 0 and "0 problems" in checked.output, checked.output
    again = invoke("label", *args)
    assert again.exit_code == 3 and "0/0 units" in again.output, again.output  # nothing to do, failures recorded
    resumed = invoke("label", docs, out, "--teacher", "metadata", "--workers", "1", "--no-progress")
    assert resumed.exit_code == 3 and "0/0 units" in resumed.output, resumed.output
    moved = invoke("label", docs, out, "--fetched", str(tmp_path / "elsewhere.zarr"), "--teacher", "metadata",
                   "--workers", "1", "--no-progress")
    assert moved.exit_code == 2 and "--fetched" in one_line_error(moved)


def test_wrong_input_exits_2_with_one_line(stores, tmp_path):
    docs, fetched, _ = stores
    base = ("--sample-kind", "document", "--teacher", "metadata", "--workers", "1", "--no-progress")
    missing = invoke("label", docs, tmp_path / "a.zarr", *base)
    assert missing.exit_code == 2 and "then pass --fetched" in one_line_error(missing)
    folder = tmp_path / "photos"
    folder.mkdir()
    Path(folder / "x.jpg").write_bytes(jpeg_bytes(1))
    not_docs = invoke("label", folder, tmp_path / "b.zarr", *base)
    assert not_docs.exit_code == 2 and "document store" in one_line_error(not_docs)
    images = invoke("label", folder, tmp_path / "c.zarr", "--fetched", fetched, "--teacher", "metadata")
    assert images.exit_code == 2 and "--fetched applies to document stores" in one_line_error(images)
    for out in ("a.zarr", "b.zarr", "c.zarr"):
        assert not (tmp_path / out).exists()


def test_a_resume_against_a_fetched_store_made_again_is_refused(stores, tmp_path):
    import shutil

    docs, _, _ = stores
    own = tmp_path / "f.zarr"

    def fetch():  # the test server is gone: every URL fails to connect, recorded (the store is complete)
        return invoke("fetch", Path(docs) / "image_urls.jsonl", own, "--workers", "1", "--no-progress", "--retries",
                      "0", "--timeout", "0.5")

    assert fetch().exit_code == 3
    args = (docs, tmp_path / "l.zarr", "--sample-kind", "document", "--fetched", own, "--teacher", "metadata",
            "--workers", "1", "--no-progress")
    first = invoke("label", *args)
    assert first.exit_code == 3 and "4 failed labels" in first.output, first.output  # 3 URL images, bad.jpg
    shutil.rmtree(own)
    assert fetch().exit_code == 3  # the same path, another store
    again = invoke("label", *args)
    assert again.exit_code == 2 and "is not the fetched store this label store was listed from" in one_line_error(again)


def test_doc_filter_labels_only_the_kept_documents_images(stores, tmp_path):
    docs, fetched, _ = stores
    assert invoke("documents", "filter", docs, "--name", "two", "--min-images", "2").exit_code == 0
    out = tmp_path / "kept.zarr"
    done = invoke("label", docs, out, "--sample-kind", "document", "--fetched", fetched, "--doc-filter", "two",
                  "--teacher", "metadata", "--workers", "1", "--no-progress")
    assert done.exit_code == 3, done.output  # web_0000001's URL is a 404
    labels = LabelStore.open(str(out))
    assert [str(k) for k in labels.read("keys")] == [e[0] for e in EXPECTED[:4]]
    assert labels.corpus["listing"]["filter"] == "two"
    assert labels.corpus["listing"]["stores"]["filter"]["settings"]["min_images"] == 2
