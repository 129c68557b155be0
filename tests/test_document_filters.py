"""Document filters (engine/document_filters.py): each check recorded per document with its reason, on real
document stores, a real fetched store (local HTTP server) and a real label store (metadata teacher)."""

from __future__ import annotations

import pytest
from test_documents import FAST, jpeg_bytes, mixed_corpus, mmc4, obelics, png_bytes, wds

from omnimill.engine.document_filters import FilterSettings, filter_documents
from omnimill.engine.documents import ingest_documents
from omnimill.engine.label import label
from omnimill.errors import UserError
from omnimill.store.documents import DocumentStore
from omnimill.store.labels import LabelStore


def test_filters_record_each_document_with_its_reason(tmp_path):
    out = str(tmp_path / "docs.zarr")
    ingest_documents(str(mixed_corpus(tmp_path)), out, **FAST)
    with pytest.raises(UserError, match="--fetched"):  # URL images need their sizes from a fetched store
        filter_documents(out, "web", FilterSettings(min_side=32))
    done = filter_documents(out, "local", FilterSettings(min_images=1, max_images=1, min_chars=20, dedup=True))
    store = DocumentStore.open(out)
    reasons = list(store.column("reason", part="filter_local"))
    assert reasons == ["", "min_chars: 5 < 20", "max_images: 2 > 1", "min_images: 0 < 1", "malformed", ""]
    assert list(store.kept("local")) == [True, False, False, False, False, True]
    assert done == {"n": 6, "kept": 2, "dropped_by": {"min_chars": 1, "max_images": 1, "min_images": 1,
                                                      "malformed": 1}}
    assert store.filter_settings("local")["min_chars"] == 20 and store.verify() == []
    dedup = filter_documents(out, "dups", FilterSettings(dedup=True, min_chars=1))
    assert dedup["dropped_by"] == {"duplicate": 1, "malformed": 1}
    assert store.column("reason", 2, part="filter_dups") == "duplicate: mixed_0000002/img_00 is mixed_0000000/img_00"
    with pytest.raises(UserError, match="another --name"):
        filter_documents(out, "dups", FilterSettings(dedup=True))
    assert sorted(store.filters()) == ["dups", "local"]


def test_min_side_reads_local_headers_and_a_fetched_store(tmp_path):
    from http_server import serving

    from omnimill.engine.fetch import fetch_images

    with serving() as server:
        rows = [{"images": [server.url("good/1.jpg"), None], "texts": [None, "remote"]},
                {"images": [server.url("missing.jpg"), None], "texts": [None, "gone"]},
                {"images": [server.url("good/2.png"), None], "texts": [None, "remote too"]}]
        out = str(tmp_path / "docs.zarr")
        done = ingest_documents(str(obelics(tmp_path, rows)), out, **FAST)
        fetched = str(tmp_path / "fetched.zarr")
        fetch_images(done.url_list, fetched, workers=1, progress=False, timeout=0.5, url_retries=0)
    result = filter_documents(out, "size", FilterSettings(min_side=10, dedup=True, fetched=fetched))
    reasons = list(DocumentStore.open(out).column("reason", part="filter_size"))
    assert reasons[1] == "min_side: web_v1_0000001/img_00 has no size (not fetched)"
    assert reasons[0] == reasons[2] == "" and result["kept"] == 2


def test_min_sim_reads_the_corpus_similarity_of_each_image(tmp_path):
    lines = [{"text_list": ["a", "b"], "image_info": [{"raw_url": "https://x.org/1.jpg", "matched_text_index": 0,
                                                        "matched_sim": 0.31},
                                                       {"raw_url": "https://x.org/2.jpg", "matched_text_index": 1,
                                                        "matched_sim": 0.12}]},
             {"text_list": ["c"], "image_info": [{"raw_url": "https://x.org/3.jpg", "matched_text_index": 0,
                                                   "matched_sim": 0.2}]},
             {"text_list": ["d"], "image_info": [{"raw_url": "https://x.org/4.jpg", "matched_text_index": 0}]},
             {"text_list": ["text only"]}]
    out = str(tmp_path / "docs.zarr")
    ingest_documents(str(mmc4(tmp_path, lines)), out, **FAST)
    filter_documents(out, "sim", FilterSettings(min_sim=0.15))
    assert list(DocumentStore.open(out).column("reason", part="filter_sim")) == [
        "min_sim: docs_0000000/img_01 matched_sim 0.120 < 0.15", "",
        "min_sim: docs_0000002/img_00 has no matched_sim in the corpus", ""]



def test_the_local_images_label_under_their_image_keys_and_their_sizes_filter(tmp_path):
    tar = wds(tmp_path, {f"d{i}": ({"segments": [{"text": f"doc {i}"}, {"image": "img0.jpg", "alt": f"alt {i}"},
                                                 {"image": "img1.png"}]},
                                   {"img0.jpg": jpeg_bytes(i), "img1.png": png_bytes(i, (40, 30) if i == 0 else (80, 60))})
                         for i in range(3)})
    out = str(tmp_path / "docs.zarr")
    done = ingest_documents(str(tar), out, **FAST)
    assert done.result.exit_code == 0 and done.url_list is None
    labels = str(tmp_path / "labels.zarr")
    result = label(done.local_corpus, labels, ["rgb", "metadata"], workers=1, unit_size=4, view_size=32,
                   progress=False)
    assert result.exit_code == 0
    labelled = LabelStore.open(labels)
    assert sorted(labelled.keys()) == sorted(f"d{i}/img_{j:02d}" for i in range(3) for j in range(2))
    captions = dict(zip(labelled.keys(), labelled.read("caption")))
    assert captions["d1/img_00"] == "alt 1" and captions["d1/img_01"] == ""  # the alt text, as the caption
    filter_documents(out, "big", FilterSettings(min_side=35, labels=labels))
    store = DocumentStore.open(out)
    assert list(store.column("reason", part="filter_big")) == ["min_side: d0/img_01 is 40x30, side 30 < 35", "", ""]
    assert store.filter_settings("big")["labels_uuid"] == LabelStore.open(labels).uuid
