"""engine/pack.py: a document store packed in parts on a real Dask LocalCluster; a run killed before a
part's marker (omnimill.faults) resumes without packing the finished parts again and ends with the set a
clean run writes, byte for byte; a rerun with other settings is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_documents import FAST, mmc4

from omnimill.engine.documents import ingest_documents
from omnimill.engine.pack import pack_job
from omnimill.errors import UserError
from omnimill.shards import interleave as il

RUN = dict(workers=1, progress=False, retries=0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A document store of 12 MMC4 documents in 6 units, and a real omnimill sequence tokenizer."""
    from omnimill.tokenize.base import TokenizerConfig
    from omnimill.tokenize.sequence import SequenceTokenizer

    tmp = tmp_path_factory.mktemp("pack")
    lines = [{"text_list": [f"a cat sits on the mat {i}", "the dog runs in the park " * (i % 4)],
              "image_info": [{"raw_url": f"https://x.org/{i}.jpg", "matched_text_index": 1}] * (i % 3)}
             for i in range(12)]
    store = str(tmp / "docs.zarr")
    ingest_documents(str(mmc4(tmp, lines)), store, **FAST)
    texts = [t for line in lines for t in line["text_list"]]
    values = {"captions": np.array([[t] for t in texts], dtype=object), "count": np.ones(len(texts), np.int32)}
    SequenceTokenizer.train(TokenizerConfig("sequence", "caption", [], tokens_per_sample=64), values,
                            view_size=32).save(tmp / "text-tok")
    return store, str(tmp / "text-tok")


def packed(inputs, out, **kw):
    store, tokenizer = inputs
    return pack_job(store, str(out), tokenizer, **{"slots": 4, "seq_len": 32, "samples_per_shard": 2, "holdout": 0.3,
                                                   **RUN, **kw})


def test_a_killed_pack_resumes_without_redoing_finished_parts(inputs, tmp_path, monkeypatch):
    clean = packed(inputs, tmp_path / "clean")
    assert clean.exit_code == 0 and clean.parts == clean.parts_packed == 6
    assert il.verify_interleaved(str(tmp_path / "clean"))["problems"] == []
    assert clean.manifest["stats"]["documents"] == 12 and clean.manifest["holdout"]["n"]["heldout"] > 0

    monkeypatch.setenv("OMNIMILL_FAULT", "unit.chunks")  # the worker dies after a part's shards, before its marker
    monkeypatch.setenv("OMNIMILL_FAULT_ONCE", str(tmp_path / "fired"))
    out = tmp_path / "killed"
    killed = packed(inputs, out)
    assert killed.exit_code == 4 and killed.manifest is None and (tmp_path / "fired").exists()
    assert not (out / "manifest.json").exists() and killed.parts_failed
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.json")}
    assert 0 < len(done) < 6 and len(done) + len(killed.parts_failed) == 6

    with pytest.raises(UserError, match="holdout differ"):
        packed(inputs, out, holdout=0.1)
    resumed = packed(inputs, out)  # the fault fired once: this run goes through
    assert resumed.exit_code == 0 and resumed.parts_packed == 6 - len(done)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.json") if p.name in done} == done  # not redone
    assert resumed.manifest["shards"] == clean.manifest["shards"]  # the same bytes as the clean run's
    assert json.loads((out / "manifest.json").read_text()) == clean.manifest
    assert il.verify_interleaved(str(out))["problems"] == []
    again = packed(inputs, out)  # nothing left to do: the same manifest
    assert again.parts_packed == 0 and again.manifest == clean.manifest


def test_force_starts_over_and_other_folders_are_refused(inputs, tmp_path):
    out = tmp_path / "set"
    packed(inputs, out)
    redone = packed(inputs, out, holdout=0.0, force=True)
    assert redone.exit_code == 0 and redone.parts_packed == 6 and redone.manifest["holdout"]["n"]["heldout"] == 0
    assert il.verify_interleaved(str(out))["problems"] == []
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        packed(inputs, tmp_path / "other")
    with pytest.raises(UserError, match="one of them"):
        pack_job(inputs[0], str(tmp_path / "neither"), inputs[1], **RUN)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine" and not (tmp_path / "neither").exists()
