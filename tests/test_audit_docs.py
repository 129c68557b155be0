"""omnimill.audit.doc_report: one document as an HTML page (`omnimill audit report DOCS_STORE DOC_KEY`), checked
through the CLI and in a real headless Chromium (tests/chromium.py).

The stores, made by the real jobs: an OBELICS parquet of three documents ingested into a document store; its
local images labelled (rgb, metadata, canny on a LocalCluster) under their IMAGE_KEYs; its URL images fetched
from the local HTTP server (tests/http_server.py): one good image that two documents share, one 404; the
fetched images labelled too (rgb), as a second label store; two filters run on the documents.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from chromium import Chromium
from conftest import invoke, jpeg_bytes, one_line_error
from PIL import Image
from test_documents import FAST, obelics, png_bytes

from omnimill.audit.doc_report import THUMB_PIXELS, DocumentPage, write_doc_report
from omnimill.engine.document_filters import FilterSettings, filter_documents
from omnimill.engine.documents import ingest_documents
from omnimill.engine.fetch import fetch_images
from omnimill.engine.label import label
from omnimill.errors import UserError
from omnimill.store.documents import DocumentStore
from omnimill.store.fetched import FetchedStore
from omnimill.store.labels import LabelStore

DOC = "docs_0000000"
INTRO, MIDDLE, AFTER, END = ("An <intro> & a 'quoted' word.", "Between the pictures.", "After the remote ones.",
                             "The end of the first document.")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    from http_server import serving

    root = tmp_path_factory.mktemp("docs")
    (root / "imgs").mkdir()
    (root / "imgs" / "big.jpg").write_bytes(jpeg_bytes(1, size=(400, 300)))  # larger than a thumbnail
    (root / "imgs" / "small.png").write_bytes(png_bytes(2, size=(40, 30)))
    (root / "imgs" / "broken.jpg").write_bytes(b"not an image")
    with serving() as server:
        good, missing = server.url("good/1.jpg"), server.url("missing.jpg")
        rows = [
            {"images": [None, "imgs/big.jpg", None, good, None, missing, "imgs/small.png", None],
             "texts": [INTRO, None, MIDDLE, None, AFTER, None, None, END],
             "metadata": [None, {"alt_text": "a big <red> picture"}, None, {"alt_text": "the remote one"}, None,
                          {"alt_text": "gone"}, None, None],
             "general": {"url": "https://example.com/page", "lang": "en"}},
            {"images": [None, good, "imgs/broken.jpg"], "texts": ["short", None, None]},  # shares the URL image
            {"images": [None], "texts": ["text only " * 5]},
        ]
        docs = str(root / "docs.zarr")
        done = ingest_documents(str(obelics(root, rows, name="docs.parquet")), docs, **FAST)
        fetched = str(root / "fetched.zarr")
        fetch_images(done.url_list, fetched, workers=1, progress=False, timeout=0.5, url_retries=0)
    labels = str(root / "labels.zarr")
    assert label(done.local_corpus, labels, ["rgb", "metadata", "canny"], workers=1, unit_size=4, view_size=64,
                 progress=False).exit_code == 0
    remote = str(root / "remote.zarr")
    assert label(FetchedStore.open(fetched).image_corpus(), remote, ["rgb"], workers=1, view_size=64,
                 progress=False).exit_code == 0
    filter_documents(docs, "long", FilterSettings(min_chars=30))
    filter_documents(docs, "size", FilterSettings(min_side=50, fetched=fetched))
    return {"docs": docs, "labels": labels, "fetched": fetched, "remote": remote, "root": str(root)}


@pytest.fixture(scope="module")
def page(stores) -> Path:
    out = Path(stores["root"]) / "page" / f"{DOC}.html"
    result = invoke("audit", "report", stores["docs"], DOC, "--labels", stores["labels"], "--fetched",
                    stores["fetched"], "--out", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "") and " MB)" in result.output
    return out


def test_the_page_holds_metadata_verdicts_text_images_and_reasons(page, stores):
    text = page.read_text()
    assert "<script" not in text
    sources = re.findall(r"\bsrc='([^']*)'", text)
    assert len(sources) > 4 and all(s.startswith("data:image/") for s in sources)  # nothing to fetch
    assert "https://example.com/page" in text and "lang" in text  # the document's metadata
    assert "<code>long</code></td><td class='kept'>kept" in text
    assert f"dropped: min_side: {DOC}/img_02 has no size (not fetched)" in text  # missing.jpg, before small.png
    assert "An &lt;intro&gt; &amp; a &#x27;quoted&#x27; word." in text and "<intro>" not in text
    assert "“a big &lt;red&gt; picture”" in text and "(no alt text)" in text
    assert "no picture: fetch failed at http: HTTP 404" in text  # missing.jpg: why there is no picture
    assert f"not labelled: {DOC}/img_01 is not a key of" in text  # the URL image: no local labels
    for tile in ("rgb · canonical view 64px", "canny · edges", "canny over rgb"):
        assert text.count(f"<figcaption>{tile}") == 2  # big.jpg and small.png, each with its panel
    assert "metadata/orig_width" in text and "<td>400</td>" in text  # text labels as text
    thumbs = [base64.b64decode(s.split(",", 1)[1])
              for s in re.findall(r"class='thumb' alt='[^']*' src='([^']*)'", text)]
    assert len(thumbs) == 3 and all(t[:3] == b"\xff\xd8\xff" for t in thumbs)  # JPEG thumbnails
    with Image.open(io.BytesIO(thumbs[0])) as big:
        assert big.size == (THUMB_PIXELS, THUMB_PIXELS * 3 // 4)  # 400 x 300 -> 320 x 240


def test_in_chromium_images_decode_in_document_order_and_a_click_opens_the_labels(page, stores):
    doc = DocumentStore.open(stores["docs"]).document(DOC)
    expected = [("image", s["image"]) if "image" in s else ("text", s["text"]) for s in doc["segments"]]
    big = f"{DOC}/img_00"
    with Chromium() as browser:
        browser.open(page)
        images = browser.evaluate("Array.from(document.images).map(i => ({alt: i.alt, ok: i.complete && "
                                  "i.naturalWidth > 0}))")
        order = browser.evaluate("Array.from(document.querySelectorAll('article > *')).map(e => e.tagName == "
                                 "'FIGURE' ? ['image', e.dataset.key] : ['text', e.textContent])")
        tops = browser.evaluate("Array.from(document.querySelectorAll('article > *')).map(e => "
                                "e.getBoundingClientRect().top)")
        panel = (f"document.querySelector('figure[data-key=\"{big}\"] details')")
        state = (f"[{panel}.open, {panel}.getBoundingClientRect().height, Array.from({panel}.querySelectorAll("
                 "'.tiles img')).map(i => i.checkVisibility())]")  # (a closed <details> still lays out its images)
        before = browser.evaluate(state)
        browser.evaluate(f"{panel}.querySelector('summary').click()")
        after = browser.evaluate(state)
        others = browser.evaluate("Array.from(document.querySelectorAll('details')).filter(d => d.open).length")
        browser.screenshot(page.with_suffix(".png"))  # kept for people to look at (one panel open)
        errors = browser.errors()
    assert errors == [], errors
    assert len(images) > 10 and all(i["ok"] for i in images), [i["alt"] for i in images if not i["ok"]]
    assert [tuple(o) for o in order] == expected and tops == sorted(tops)
    assert before[0] is False and before[2] and not any(before[2])  # folded: its summary alone shows
    assert after[0] is True and len(after[2]) == len(before[2]) and all(after[2])
    assert after[1] > before[1] + 200  # the tiles (240 px) now take room
    assert others == 1
    with Image.open(page.with_suffix(".png")) as shot:
        assert shot.size[0] >= 1000 and np.asarray(shot.convert("L")).std() > 20


def test_the_fetched_images_labels_and_the_label_stores_view_when_that_is_all(stores):
    docs = DocumentStore.open(stores["docs"])
    remote = LabelStore.open(stores["remote"])
    # The second document shares doc 0's URL: the fetched store, and so its label store, name it docs_0000000/img_01
    shared = DocumentPage(docs, 1, remote, FetchedStore.open(stores["fetched"])).html()
    assert "labelled under <code>docs_0000000/img_01</code>" in shared and "good/1.jpg, fetched" in shared
    assert "docs_0000001/img_01" in shared and "not read at ingest" in shared  # broken.jpg says why
    # No fetched store: the picture is the label store's canonical view, and the page says so
    alone = DocumentPage(docs, 0, remote, None).html()
    assert "good/1.jpg; not fetched here (give --fetched FETCHED_STORE); shown: the label store&#x27;s canonical " \
        "view" in alone
    # No store at all but the documents: every image and panel still says why it has nothing
    bare = DocumentPage(docs, 0, None, None).html()
    assert bare.count("no labels: no label store given (--labels LABEL_STORE)") == 4
    assert bare.count("class='thumb'") == 2 and bare.count("no picture: not fetched here") == 2


def test_refusals_are_one_line(stores, tmp_path):
    out = tmp_path / "x.html"
    one_line_error(invoke("audit", "report", stores["docs"], "nope", "--out", out), "'nope' is not in")
    one_line_error(invoke("audit", "report", stores["labels"], f"{DOC}/img_00", "--fetched", stores["fetched"],
                          "--out", out), "--labels and --fetched go with a document store")
    with pytest.raises(UserError, match="is not an omnimill label store"):
        write_doc_report(stores["docs"], DOC, out, labels=stores["fetched"])
    assert not out.exists()


def test_a_malformed_document_and_a_document_store_without_filters(tmp_path):
    rows = [{"images": ["a"], "texts": ["b"]}]  # position 0 has both: not parsed
    docs = str(tmp_path / "docs.zarr")
    ingest_documents(str(obelics(tmp_path, rows, name="bad.parquet")), docs, **FAST)
    text = write_doc_report(docs, "bad_0000000", tmp_path / "bad.html").read_text()
    assert "not parsed: layout: position 0 has both an image and a text" in text
    assert "no segments: it was not parsed" in text and "no filter has run on this store" in text


def test_a_tile_goes_as_the_smaller_of_png_and_jpeg(stores):
    from omnimill.audit.doc_report import tile_picture
    from omnimill.audit.render import message_tile, sample_tiles, tile_png

    labels = LabelStore.open(stores["labels"])
    photo_tile = next(t for t in sample_tiles(labels, 0) if t.title.startswith("rgb"))
    png = tile_png(photo_tile)
    kind, data = tile_picture(png)
    assert kind == "jpeg" and data[:3] == b"\xff\xd8\xff" and len(data) < len(png)
    flat = tile_png(message_tile("nothing", "not labelled"))
    assert tile_picture(flat) == ("png", flat)
