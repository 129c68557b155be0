"""Document filters (engine/document_filters.py): each check recorded per document with its reason, on real
document stores, a real fetched store (local HTTP server), real label stores (metadata teacher; a tiny real
CLIP with random weights) and a real FAISS index (`omnimill audit index`)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_clip import CLIP as CLIP_SPEC
from test_clip import tiny_clip  # noqa: F401  (a fixture: a tiny real CLIP checkpoint)
from test_documents import FAST, jpeg_bytes, mixed_corpus, mmc4, obelics, png_bytes, wds

from omnimill.engine.document_filters import (FilterSettings, NearDuplicates, clip_similarities, filter_documents,
                                              near_duplicates)
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


def test_a_threshold_of_zero_is_asked():
    assert FilterSettings(min_chars=0).asked() and FilterSettings(min_clip_sim=0.0, clip_labels="l.zarr").asked()
    assert not FilterSettings(clip_labels="l.zarr", near_threshold=0.9).asked()


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


# ---------------------------------------------------------------------------- CLIP and near-duplicates
LONG_BEFORE = "q " * 30 + "red ball"  # the tiny CLIP's text tower takes 16 tokens: BOS, 14, EOS
LONG_AFTER = "green tree " + "w " * 30
# what survives the cut, by hand: one token per "q"/"w" word, per letter of the others ("d</w>", "l</w>" end them)
BEFORE_CUT = "q q q q q q q red ball"  # 7 + 3 + 4 = 14 tokens: the END of the text before the image
AFTER_CUT = "green tree w w w w w"  # 5 + 4 + 5 = 14 tokens: the START of the text after it


def clip_corpus(tmp_path):
    """d0: long text, then its image; d1: an image, then long text; d2: two images between two short texts;
    d3: an image alone (no text); d4: a re-encoded copy of d2's first image, with text; d5: bytes that are no
    image."""
    def doc(*segments):
        images = {f"i{i}.{name.rsplit('.', 1)[1]}": data for i, (name, data) in enumerate(
            s for s in segments if isinstance(s, tuple))}
        order, n = [], 0
        for s in segments:
            if isinstance(s, tuple):
                order.append({"image": f"i{n}.{s[0].rsplit('.', 1)[1]}"})
                n += 1
            else:
                order.append({"text": s})
        return {"segments": order}, images

    copy = Image.open(io.BytesIO(jpeg_bytes(12)))
    buf = io.BytesIO()
    copy.save(buf, "JPEG", quality=60)  # the same picture, re-encoded
    return wds(tmp_path, {"d0": doc(LONG_BEFORE, ("a.jpg", jpeg_bytes(10))),
                          "d1": doc(("a.jpg", jpeg_bytes(11)), LONG_AFTER),
                          "d2": doc("a cat", ("a.jpg", jpeg_bytes(12)), ("b.png", png_bytes(13, (80, 60))), "a dog"),
                          "d3": doc(("a.jpg", jpeg_bytes(14))),
                          "d4": doc("the cat again", ("a.jpg", buf.getvalue())),
                          "d5": doc("broken", ("a.jpg", b"not an image"))})  # no image: never labelled


@pytest.fixture(scope="module")
def clip_docs(tmp_path_factory, tiny_clip):
    """The document store and its local images labelled by a tiny real CLIP (random weights) on a LocalCluster."""
    tmp = tmp_path_factory.mktemp("clipdocs")
    out = str(tmp / "docs.zarr")
    done = ingest_documents(str(clip_corpus(tmp)), out, **FAST)
    labels = str(tmp / "clip.zarr")
    result = label(done.local_corpus, labels, [f"{CLIP_SPEC}={tiny_clip}"], workers=1, unit_size=4, view_size=32,
                   progress=False)
    assert result.exit_code == 0 and "d5/img_00" not in LabelStore.open(labels).keys()  # ingest left it out
    return out, labels, tiny_clip


def by_hand(checkpoint, texts):
    """CLIP's text embeddings straight from the model: tokenizer (no cut needed), text tower, projection."""
    import torch
    from transformers import AutoTokenizer, CLIPModel

    model, tokenizer = CLIPModel.from_pretrained(checkpoint).eval(), AutoTokenizer.from_pretrained(checkpoint)
    with torch.no_grad():
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        assert tokens["input_ids"].shape[1] <= 16  # nothing here is cut
        pooled = model.text_projection(model.text_model(**tokens).pooler_output)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_clip_similarity_is_the_best_cosine_with_the_neighbouring_texts(clip_docs):
    out, labels, checkpoint = clip_docs
    store = DocumentStore.open(out)
    scores, identity = clip_similarities(store, store.images(), labels, "cpu")
    stored = LabelStore.open(labels)
    image = dict(zip(stored.keys(), stored.read("clip/embedding")))
    before, after, cat, dog = by_hand(checkpoint, [BEFORE_CUT, AFTER_CUT, "a cat", "a dog"])
    assert scores["d0/img_00"] == pytest.approx(float(image["d0/img_00"] @ before), abs=1e-5)
    assert scores["d1/img_00"] == pytest.approx(float(image["d1/img_00"] @ after), abs=1e-5)
    for key in ("d2/img_00", "d2/img_01"):  # the other image between is skipped: both see "a cat" and "a dog"
        assert scores[key] == pytest.approx(max(float(image[key] @ cat), float(image[key] @ dog)), abs=1e-5)
    assert scores["d3/img_00"] == "no neighbouring text"
    assert scores["d5/img_00"] == "no clip embedding (not labelled, or its labelling failed)"
    assert identity["labels_uuid"] == stored.uuid and len(identity["checkpoint_sha256"]) == 64

    # every image must reach T: the threshold between d2's two scores drops d2 for its weaker image
    weak, strong = sorted(["d2/img_00", "d2/img_01"], key=scores.get)
    t = round((scores[weak] + scores[strong]) / 2, 6)
    result = filter_documents(out, "clip", FilterSettings(clip_labels=labels, min_clip_sim=t), device="cpu")
    reasons = list(store.column("reason", part="filter_clip"))
    assert reasons[2] == f"clip_sim: {weak} {scores[weak]:.3f} < {t}"
    assert reasons[3] == "clip_sim: d3/img_00 has no neighbouring text"
    assert reasons[5] == "clip_sim: d5/img_00 has no clip embedding (not labelled, or its labelling failed)"
    for row, key in ((0, "d0/img_00"), (1, "d1/img_00"), (4, "d4/img_00")):
        assert (reasons[row] == "") == (scores[key] >= t), (key, scores[key], reasons[row])
    assert result["dropped_by"]["clip_sim"] == sum(1 for r in reasons if r)
    settings = store.filter_settings("clip")
    assert settings["min_clip_sim"] == t and settings["clip"] == identity


def test_near_duplicates_drop_the_later_document(clip_docs, tmp_path):
    from typer.testing import CliRunner

    from omnimill.cli import app

    out, labels, _ = clip_docs
    index = str(tmp_path / "index")
    runner = CliRunner()
    built = runner.invoke(app, ["audit", "index", labels, "--field", "clip/embedding", "--out", index])
    assert built.exit_code == 0, built.output
    stored = LabelStore.open(labels)
    vectors = dict(zip(stored.keys(), stored.read("clip/embedding")))
    keys = sorted(vectors)
    cosine = {(a, b): float(vectors[a] @ vectors[b] / np.linalg.norm(vectors[a]) / np.linalg.norm(vectors[b]))
              for a in keys for b in keys if a < b}
    copy = cosine[("d2/img_00", "d4/img_00")]
    others = max(c for pair, c in cosine.items() if pair != ("d2/img_00", "d4/img_00"))
    assert copy > others  # the re-encoded copy is the closest pair (else the threshold below means nothing)
    t = round((copy + others) / 2, 6)
    filtered = runner.invoke(app, ["documents", "filter", out, "--name", "near", "--near-dups", index,
                                   "--near-threshold", str(t)])
    assert filtered.exit_code == 0, filtered.output
    store = DocumentStore.open(out)
    assert list(store.column("reason", part="filter_near")) == [
        "", "", "", "", f"near_duplicate: d4/img_00 ~ d2/img_00 cosine {copy:.3f}", ""]  # the earlier one kept
    # the rule on groups given by hand: every document but the group's earliest goes; one document's own do not
    info = json.loads((Path(index) / "info.json").read_text())
    groups = [["d2/img_00", "d4/img_00", "d0/img_00"], ["d2/img_00", "d2/img_01"]]
    facts, _ = near_duplicates(store, store.images(), NearDuplicates(groups, info))
    assert facts == {key: {"near_duplicate": f"near_duplicate: {key} ~ d0/img_00 cosine "
                                             f"{cosine[tuple(sorted((key, 'd0/img_00')))]:.3f}"}
                     for key in ("d2/img_00", "d4/img_00")}
    settings = store.filter_settings("near")
    assert settings["near_dups"] == index and settings["near_threshold"] == t
    assert settings["near_index"]["labels_uuid"] == LabelStore.open(labels).uuid
    assert settings["near_index"]["field"] == "clip/embedding" and settings["near_index"]["created"]


def test_wrong_clip_labels_or_index_exit_2_with_one_line(clip_docs, tmp_path):
    from typer.testing import CliRunner

    from omnimill.cli import app

    out, labels, _ = clip_docs
    other = str(tmp_path / "other.zarr")  # another document store: its image keys are not the label store's
    ingest_documents(str(wds(tmp_path, {"x0": ({"segments": [{"text": "t"}, {"image": "a.jpg"}]},
                                               {"a.jpg": jpeg_bytes(3)})})), other, **FAST)
    index = str(tmp_path / "index")
    runner = CliRunner()
    assert runner.invoke(app, ["audit", "index", labels, "--field", "clip/embedding", "--out", index]).exit_code == 0
    metadata = str(tmp_path / "meta.zarr")
    assert label(DocumentStore.open(out).local_corpus(), metadata, ["metadata"], workers=1, unit_size=4,
                 view_size=32, progress=False).exit_code == 0
    for args, message in [([out, "--clip-labels", metadata, "--min-clip-sim", "0.2"], "has no clip teacher"),
                          ([other, "--clip-labels", labels, "--min-clip-sim", "0.2"],
                           "is not a label store of the images of"),
                          ([other, "--near-dups", index], "is not a label store of the images of"),
                          ([out, "--min-clip-sim", "0.2"], "go together"),
                          ([out, "--near-dups", str(tmp_path)], "no info.json")]:
        bad = runner.invoke(app, ["documents", "filter", *args])
        lines = bad.stderr.strip().splitlines()
        assert bad.exit_code == 2 and len(lines) == 1 and message in lines[0], (args, bad.output)
