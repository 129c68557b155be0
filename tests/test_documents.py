"""Document corpora (corpus/documents.py), the document store (store/documents.py), the ingest job and the
filters (engine/documents.py), the `documents` commands: real parquet, jsonl and tars, real image bytes."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TESTS, jpeg_bytes, photo
from PIL import Image

from omnimill.corpus.documents import list_documents, read_documents
from omnimill.corpus.listing import index_corpus
from omnimill.engine.documents import ingest_documents
from omnimill.errors import UserError
from omnimill.store.documents import DocumentStore

FAST = dict(workers=1, progress=False, docs_per_unit=2)
ENV = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}


def png_bytes(seed: int, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo(seed, *size)).save(buf, "PNG")
    return buf.getvalue()


def obelics(tmp_path: Path, rows: list[dict], name="web.v1.parquet", row_group_size=2) -> Path:
    """A parquet of OBELICS rows; metadata and general_metadata given as objects are written as JSON strings."""
    table = {"images": [], "texts": [], "metadata": [], "general_metadata": []}
    for row in rows:
        table["images"].append(row["images"])
        table["texts"].append(row["texts"])
        meta = row.get("metadata", [None] * len(row["images"]))
        table["metadata"].append(meta if isinstance(meta, str) else json.dumps(meta))
        table["general_metadata"].append(json.dumps(row.get("general", {"url": "https://example.com"})))
    path = tmp_path / name
    pq.write_table(pa.table(table), path, row_group_size=row_group_size)
    return path


def mmc4(tmp_path: Path, lines: list, name="docs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def wds(tmp_path: Path, docs: dict[str, tuple[dict | bytes, dict[str, bytes]]], name="docs.tar") -> Path:
    """A tar with, per document, `<key>.json` and its members `<key>.<field>`."""
    path = tmp_path / name
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, (doc, members) in docs.items():
            for member, data in [("json", doc if isinstance(doc, bytes) else json.dumps(doc).encode()),
                                 *members.items()]:
                info = tarfile.TarInfo(f"{key}.{member}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


# ---------------------------------------------------------------- readers
def test_obelics_rows_become_segments_and_malformed_rows_say_why(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(1))
    rows = [
        {"images": ["https://x.org/1.jpg", None, "a.jpg"], "texts": [None, "hello", None],
         "metadata": [{"alt_text": "one", "src": "x"}, None, {"alt_text": None}]},
        {"images": [None], "texts": ["only text"]},
        {"images": ["https://x.org/2.jpg", None], "texts": ["both", "t"]},  # position 0 has both
        {"images": [None, None], "texts": ["a"] * 2, "metadata": "not json"},
        {"images": [None], "texts": [None]},  # neither
    ]
    form, refs = list_documents(str(obelics(tmp_path, rows)))
    assert form == "obelics" and [r.key for r in refs] == [f"web_v1_{i:07d}" for i in range(5)]
    docs = read_documents(form, refs[1:2] + refs[0:1] + refs[2:])  # any order, across row groups
    first = docs[1]
    assert first.segments == [{"image": "web_v1_0000000/img_00", "alt": "one", "meta": {"alt_text": "one", "src": "x"}},
                              {"text": "hello"},
                              {"image": "web_v1_0000000/img_01", "alt": None, "meta": {"alt_text": None}}]
    assert first.meta == {"url": "https://example.com"}
    assert [(i.kind, i.source) for i in first.images] == [("url", "https://x.org/1.jpg"),
                                                          ("path", str(tmp_path / "a.jpg"))]
    assert docs[0].segments == [{"text": "only text"}] and docs[0].error is None
    assert docs[2].error == ("layout", "position 0 has both an image and a text")
    assert docs[3].error[0] == "parse" and "metadata is not JSON" in docs[3].error[1]
    assert docs[4].error == ("layout", "position 0 has neither an image and a text")


def test_mmc4_images_go_before_their_matched_sentence(tmp_path):
    lines = [
        {"url": "https://page", "text_list": ["s0", "s1", "s2"],
         "image_info": [{"image_name": "b.jpg", "raw_url": " https://x.org/b.jpg\n", "matched_text_index": 2,
                         "matched_sim": 0.31},
                        {"image_name": "a.jpg", "raw_url": "https://x.org/a.jpg", "matched_text_index": 0,
                         "matched_sim": 0.28}]},
        "{not json",
        {"text_list": ["s0"], "image_info": [{"raw_url": "https://x.org/c.jpg", "matched_text_index": 5}]},
    ]
    form, refs = list_documents(str(mmc4(tmp_path, lines)))
    docs = read_documents(form, refs)
    assert form == "mmc4" and [d.key for d in docs] == ["docs_0000000", "docs_0000001", "docs_0000002"]
    segs = docs[0].segments
    assert [s.get("text") or s["image"] for s in segs] == ["docs_0000000/img_00", "s0", "s1", "docs_0000000/img_01", "s2"]
    assert segs[0]["meta"] == {"matched_sim": 0.28, "image_name": "a.jpg", "matched_text_index": 0}
    # stripped, as `omnimill fetch` strips what it reads: the fetched store finds the image by this URL
    assert docs[0].images[1].source == "https://x.org/b.jpg" and docs[0].meta == {"url": "https://page"}
    assert docs[1].error[0] == "parse"
    assert docs[2].error == ("layout", "matched_text_index 5 is not a sentence of 1")


def test_wds_documents_keep_their_members_under_the_document_key(tmp_path):
    tar = wds(tmp_path, {
        "d0": ({"segments": [{"text": "intro"}, {"image": "img0.jpg", "alt": "a cat"}, {"text": "end"}],
                "meta": {"lang": "en"}}, {"img0.jpg": jpeg_bytes(3)}),
        "d1": ({"segments": [{"image": "gone.png"}]}, {}),
        "d2": (b"{broken", {}),
    })
    form, refs = list_documents(str(tar))
    docs = read_documents(form, refs)
    assert [d.key for d in docs] == ["d0", "d1", "d2"]
    assert docs[0].segments[1] == {"image": "d0/img_00", "alt": "a cat", "meta": {}}
    image = docs[0].images[0]
    assert image.kind == "member" and image.source == f"{tar}::d0.img0.jpg"
    assert tar.read_bytes()[image.offset:image.offset + image.size] == jpeg_bytes(3)
    assert docs[1].error[0] == "member" and docs[2].error[0] == "parse"


def test_an_fsspec_url_corpus(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/p9docs/a.jsonl", (json.dumps({"text_list": ["hi"], "image_info": [
        {"image_name": "x.jpg", "matched_text_index": 0}]}) + "\n").encode())
    form, refs = list_documents("memory://p9docs/*.jsonl")
    (doc,) = read_documents(form, refs)
    assert doc.key == "a_0000000" and doc.images[0].kind == "path"
    assert doc.images[0].source == "memory:///p9docs/x.jpg"  # beside the jsonl, on its file system (as fsspec names it)


def test_literal_paths_and_missing_files(tmp_path):
    odd = tmp_path / "we[ir]d*"
    odd.mkdir()
    path = mmc4(odd, [{"text_list": ["x"]}], name="a.b.jsonl")
    assert [r.key for r in list_documents(str(path))[1]] == ["a_b_0000000"]
    with pytest.raises(UserError, match="do not exist"):
        list_documents(str(tmp_path / "p-{0..1}.parquet"))
    with pytest.raises(UserError, match="not a document corpus"):
        list_documents(str(tmp_path / "x.csv"))


# ---------------------------------------------------------------- the store and the ingest job
def mixed_corpus(tmp_path: Path) -> Path:
    """5 OBELICS documents: local images (one shared by two documents, one broken), URL images, a malformed row."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "big.jpg").write_bytes(jpeg_bytes(1, size=(96, 72)))
    (imgs / "small.png").write_bytes(png_bytes(2, size=(20, 16)))
    (imgs / "copy.jpg").write_bytes(jpeg_bytes(1, size=(96, 72)))  # the same bytes as big.jpg
    (imgs / "broken.jpg").write_bytes(b"not an image")
    rows = [
        {"images": ["imgs/big.jpg", None], "texts": [None, "a long enough text " * 3]},
        {"images": [None, "imgs/small.png"], "texts": ["short", None]},
        {"images": ["imgs/copy.jpg", None, "https://x.org/1.jpg"], "texts": [None, "text with a copy " * 3, None],
         "metadata": [None, None, {"alt_text": "remote"}]},
        {"images": [None], "texts": ["no images at all, only words " * 3]},
        {"images": ["a"], "texts": ["b"]},  # malformed
        {"images": ["imgs/broken.jpg", None], "texts": [None, "the image does not decode " * 3]},
    ]
    return obelics(tmp_path, rows, name="mixed.parquet")


def test_ingest_writes_documents_images_and_the_image_lists(tmp_path):
    out = str(tmp_path / "docs.zarr")
    done = ingest_documents(str(mixed_corpus(tmp_path)), out, **FAST)
    assert done.result.exit_code == 3 and done.result.store_failed == 1  # the malformed row, recorded
    store = DocumentStore.open(out)
    assert store.n == 6 and store.n_units == 3 and store.complete() and store.verify() == []
    bad = store.document("mixed_0000004")
    assert (bad["ok"], bad["stage"], bad["reason"]) == (False, "layout", "position 0 has both an image and a text")
    assert store.markers("ingest")[2]["errors"] == [{"index": 4, "key": "mixed_0000004", "stage": "layout",
                                                     "error": bad["reason"], "retryable": False}]
    assert done.result.store_final == 1  # recorded for good: a rerun does not try it again
    doc = store.document(2)
    assert [s.get("image") for s in doc["segments"]] == ["mixed_0000002/img_00", None, "mixed_0000002/img_01"]
    assert list(store.column("n_images")) == [1, 1, 2, 0, 0, 1]
    assert int(store.column("n_text_chars", 3)) == len("no images at all, only words " * 3)
    table = {i["key"]: i for i in store.images()}
    assert table["mixed_0000002/img_01"]["kind"] == "url" and table["mixed_0000002/img_01"]["doc"] == 2
    assert table["mixed_0000000/img_00"]["sha256"] == table["mixed_0000002/img_00"]["sha256"]
    assert (table["mixed_0000001/img_00"]["width"], table["mixed_0000001/img_00"]["height"]) == (20, 16)
    assert "not an image" in table["mixed_0000005/img_00"]["error"]
    urls = [json.loads(line) for line in Path(done.url_list).read_text().splitlines()]
    assert urls == [{"url": "https://x.org/1.jpg", "key": "mixed_0000002/img_01", "alt": "remote"}]
    index = index_corpus(done.local_corpus)
    assert sorted(index.keys) == ["mixed_0000000/img_00", "mixed_0000001/img_00", "mixed_0000002/img_00"]
    assert store.status()["malformed"] == 1


def test_local_image_is_the_bytes_ingest_copied_and_any_other_key_is_one_line_that_says_why(tmp_path):
    out = tmp_path / "docs.zarr"
    ingest_documents(str(mixed_corpus(tmp_path)), str(out), **FAST)
    store = DocumentStore.open(str(out))
    assert store.local_image("mixed_0000000/img_00") == (tmp_path / "imgs" / "big.jpg").read_bytes()
    assert store.local_image("mixed_0000001/img_00") == (tmp_path / "imgs" / "small.png").read_bytes()
    assert store.local_image("mixed_0000002/img_00") == (tmp_path / "imgs" / "copy.jpg").read_bytes()  # unit 1
    cases = [("mixed_0000002/img_01", r"it is a URL image \(https://x.org/1.jpg\); its bytes are in the fetched"),
             ("mixed_0000005/img_00", r"ingest could not read it \(.*not an image"),
             ("mixed_0000003/img_00", "document mixed_0000003 has no image mixed_0000003/img_00"),
             ("nope/img_00", "no document 'nope'"), ("mixed_0000000", "no document ''")]
    for key, why in cases:
        with pytest.raises(UserError, match=f"^{key} is not a local image of {re.escape(str(out))}: {why}") as error:
            store.local_image(key)
        assert "\n" not in str(error.value)
    with tarfile.open(out / "local" / "000000.tar", "w", format=tarfile.GNU_FORMAT):
        pass  # unit 0's tar, emptied: the member is gone
    with pytest.raises(UserError, match="mixed_0000000/img_00.jpg is missing from .*000000.tar; run `omnimill verify"):
        store.local_image("mixed_0000000/img_00")
    DocumentStore.open(str(out), "r+").clear_markers("ingest", [1])  # as a run killed before unit 1 committed
    with pytest.raises(UserError, match="its unit 1 is not ingested yet"):
        DocumentStore.open(str(out)).local_image("mixed_0000002/img_00")


def test_a_changed_corpus_is_refused_and_verify_finds_a_damaged_tar(tmp_path):
    corpus, out = mixed_corpus(tmp_path), tmp_path / "docs.zarr"
    ingest_documents(str(corpus), str(out), **FAST)
    tar = out / "local" / "000000.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF  # inside the first image's bytes (its header block is the first 512)
    tar.write_bytes(bytes(data))
    store = DocumentStore.open(str(out))
    assert [(p["unit"], p["problem"]) for p in store.verify()] == [(0, "mixed_0000000/img_00.jpg is not the recorded "
                                                                        "bytes")]
    again = ingest_documents(str(corpus), str(out), **FAST, repair=True)
    assert again.result.units_repaired == 1 and DocumentStore.open(str(out)).verify() == []
    mmc4(tmp_path, [{"text_list": ["x"]}], name="other.jsonl")
    with pytest.raises(UserError, match="give a new document store path"):
        ingest_documents(str(tmp_path / "other.jsonl"), str(out), **FAST)


def test_a_unit_killed_before_its_marker_is_redone_by_the_next_run(tmp_path):
    """The worker dies (omnimill.faults) after the unit's rows, before its marker: that unit (and the one queued
    on that worker) stays uncommitted, the others commit; the same command again does those units alone."""
    corpus = mmc4(tmp_path, [{"text_list": [f"sentence {i}"]} for i in range(8)])
    out = tmp_path / "docs.zarr"
    cmd = [sys.executable, "-m", "omnimill.documents_cli", "ingest", str(corpus), str(out), "--docs-per-unit", "2",
           "--workers", "1", "--no-progress", "--unit-retries", "0"]
    env = {**ENV, "OMNIMILL_FAULT": "unit.chunks", "OMNIMILL_FAULT_ONCE": str(tmp_path / "fired")}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 4 and (tmp_path / "fired").exists(), killed.stderr[-2000:]
    store = DocumentStore.open(str(out))
    finished = {m["unit"]: m for m in store.markers("ingest") if m}
    assert 2 <= len(finished) <= 3 and store.lock() is None
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    store = DocumentStore.open(str(out))
    after = store.markers("ingest")
    assert all(after[u] == m for u, m in finished.items()) and all(after)
    assert store.history()[-1]["units_done"] == 4 - len(finished) and store.verify() == []
    assert [json.loads(s) for s in store.column("segments")] == [[{"text": f"sentence {i}"}] for i in range(8)]


# ---------------------------------------------------------------- the local images, labelled; the CLI
def test_cli_ingest_and_filter(tmp_path):
    corpus = mixed_corpus(tmp_path)
    run = lambda *args: subprocess.run([sys.executable, "-m", "omnimill.documents_cli", *args], env=ENV,  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    ingest = run("ingest", str(corpus), str(tmp_path / "d.zarr"), "--workers", "1", "--no-progress")
    assert ingest.returncode == 3 and "1 malformed" in ingest.stdout and "omnimill fetch" in ingest.stdout
    filtered = run("filter", str(tmp_path / "d.zarr"), "--name", "f", "--min-chars", "20")
    assert filtered.returncode == 0 and "4/6 documents kept (filter_f)" in filtered.stdout, filtered.stderr
    status = run("status", str(tmp_path / "d.zarr"))
    assert status.returncode == 0 and "1 malformed" in status.stdout and "filter_f: 4 kept" in status.stdout
    assert "mixed_0000004: layout: position 0 has both" in status.stdout, status.stdout
    empty = run("filter", str(tmp_path / "d.zarr"))
    assert empty.returncode == 2 and "no filter asked" in empty.stderr
