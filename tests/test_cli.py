"""The `omnimill` command: wrong input fails fast with one line and writes nothing; exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from omnimill.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("make_args, fragment", [
    (lambda c, s, ck: (c.parent / "missing", s, "-t", "rgb"), "does not exist"),
    (lambda c, s, ck: (c, s, "-t", "nosuchteacher"), "unknown teacher 'nosuchteacher'; choose from"),
    (lambda c, s, ck: (c, s, "-t", f"dinov2={c.parent / 'no-ckpt'}"), "checkpoint"),
    (lambda c, s, ck: (c, s, "-t", f"dinov2={c}"), "not a loadable DINOv2 checkpoint"),
    (lambda c, s, ck: (c, s, "-t", "rgb=some/ckpt"), "takes no checkpoint"),
    (lambda c, s, ck: (c, s), "at least one --teacher"),
    (lambda c, s, ck: (c, s, "-t", "rgb", "-t", "rgb"), "given twice"),
    (lambda c, s, ck: (c, s, "-t", "rgb", "--batch-size", "0"), "--batch-size must be at least 1"),
    (lambda c, s, ck: (c, s, "-t", "rgb", "--device", "tpu"), "--device must be"),
    (lambda c, s, ck: (c, s, "-t", "rgb", "--dtype", "int8"), "--dtype must be"),
])
def test_wrong_input_fails_fast_and_writes_nothing(corpus, tmp_path, tiny_dinov2, make_args, fragment):
    store = tmp_path / "labels.zarr"
    result = invoke("label", *make_args(corpus, store, tiny_dinov2))
    assert result.exit_code == 2
    assert fragment in one_line_error(result)
    assert not store.exists()


def test_store_of_another_corpus_or_geometry_is_refused(corpus, tmp_path):
    store = tmp_path / "labels.zarr"
    assert invoke("label", corpus, store, "-t", "rgb", "--workers", "1", "--unit-size", "8", "--view-size", "32",
                  "--no-progress").exit_code == 0
    listing = sorted(p.relative_to(store) for p in store.rglob("*"))

    other = tmp_path / "other"
    other.mkdir()
    result = invoke("label", other, store, "-t", "rgb")
    assert "was built from corpus" in one_line_error(result) and result.exit_code == 2
    result = invoke("label", corpus, store, "-t", "rgb", "--view-size", "64")
    assert "view size 32" in one_line_error(result) and result.exit_code == 2
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == listing  # untouched


def test_status_lists_errors_and_exit_code_says_completed_with_errors(bad_corpus, tmp_path):
    store = tmp_path / "labels.zarr"
    result = invoke("label", bad_corpus, store, "-t", "metadata", "--workers", "1", "--view-size", "32",
                    "--no-progress")
    assert result.exit_code == 3, result.output
    assert "completed with errors" in result.output

    status = invoke("status", store, "--errors", "10")
    assert status.exit_code == 0
    for key in ("bad_truncated", "bad_empty", "bad_text", "bad_bomb"):
        assert key in status.output
    info = json.loads(invoke("status", store, "--json").output)
    assert info["teachers"]["metadata"]["samples_failed"] == 4


def test_status_of_a_missing_store(tmp_path):
    result = invoke("status", tmp_path / "nope.zarr")
    assert result.exit_code == 2 and "no label store" in one_line_error(result)


def test_teachers_lists_the_builtin_teachers():
    result = invoke("teachers")
    assert result.exit_code == 0
    for name in ("rgb", "metadata", "palette", "canny", "dinov2"):
        assert name in result.output


def test_teacher_options_reach_the_teacher(corpus, tmp_path):
    import zarr

    store = tmp_path / "labels.zarr"
    bad = invoke("label", corpus, store, "-t", "palette", "--option", "palette:max_colors=3")
    assert bad.exit_code == 2 and "TEACHER.KEY=VALUE" in one_line_error(bad)
    other = invoke("label", corpus, store, "-t", "palette", "--option", "canny.sigma=0.5")
    assert other.exit_code == 2 and "not given with --teacher" in one_line_error(other)
    assert not store.exists()

    ok = invoke("label", corpus, store, "-t", "palette", "-o", "palette.max_colors=3", "--workers", "1",
                "--view-size", "32", "--no-progress")
    assert ok.exit_code == 0, ok.output
    group = zarr.open_group(str(store), mode="r")
    assert group["palette/colors"].shape == (20, 3, 3)
    assert group["palette"].attrs["config"]["max_colors"] == 3


def test_fetch_status_and_verify_through_omnimill(tmp_path):
    from http_server import serving
    from test_fetch import url_list

    with serving() as server:
        urls = url_list(tmp_path, server, ["good/1.jpg", "missing.jpg"])
        out = tmp_path / "fetched.zarr"
        result = invoke("fetch", str(urls), str(out), "--workers", "1", "--no-progress", "--retries", "0")
        assert result.exit_code == 3, result.output  # complete, one URL failed
    status = invoke("status", str(out))
    assert status.exit_code == 0 and "1 images ok" in status.output and "HTTP 404" in status.output, status.output
    info = json.loads(invoke("status", str(out), "--json").output)
    assert (info["ok"], info["failed"], sum(info["failed_by_stage"].values())) == (1, 1, 1)
    checked = invoke("verify", str(out))
    assert checked.exit_code == 0 and "fetched store, 0 problems" in checked.output, checked.output


def test_documents_ingest_status_and_verify_through_omnimill(tmp_path):
    from test_documents import mixed_corpus

    out = tmp_path / "docs.zarr"
    result = invoke("documents", "ingest", str(mixed_corpus(tmp_path)), str(out), "--workers", "1", "--no-progress")
    assert result.exit_code == 3 and "1 malformed" in result.output, result.output
    status = invoke("status", str(out))
    assert status.exit_code == 0 and "mixed_0000004: layout: position 0 has both" in status.output, status.output
    checked = invoke("verify", str(out))
    assert checked.exit_code == 0 and "0 problems" in checked.output, checked.output


def test_shards_interleave_packs_a_document_store_and_verify_reads_the_set(tmp_path):
    import numpy as np

    from omnimill.store.documents import DocumentStore
    from omnimill.tokenize.base import TokenizerConfig
    from omnimill.tokenize.sequence import SequenceTokenizer
    from test_documents import mixed_corpus

    docs = tmp_path / "docs.zarr"
    assert invoke("documents", "ingest", str(mixed_corpus(tmp_path)), str(docs), "--workers", "1",
                  "--no-progress").exit_code == 3  # one malformed row, recorded
    store = DocumentStore.open(str(docs))
    parsed = [store.document(i) for i in range(store.n)]
    texts = [s["text"] for d in parsed if d["ok"] for s in d["segments"] if "text" in s]
    values = {"captions": np.array([[t] for t in texts], dtype=object), "count": np.ones(len(texts), np.int32)}
    SequenceTokenizer.train(TokenizerConfig("sequence", "caption", [], tokens_per_sample=64), values,
                            view_size=32).save(tmp_path / "text-tok")
    packed = tmp_path / "packed"
    result = invoke("shards", "interleave", str(docs), str(packed), "--text-tokenizer", str(tmp_path / "text-tok"),
                    "--slots", "4", "--seq-len", "64")
    assert result.exit_code == 0 and "sequences of 64 tokens" in result.output, result.output
    checked = invoke("shards", "verify", str(packed))
    assert checked.exit_code == 0 and "ok interleaved shard set" in checked.output, checked.output
    shard = next(packed.glob("*.tar"))
    data = bytearray(shard.read_bytes())
    data[520] ^= 0xFF  # a byte of the first sequence's tokens (its member's data starts after a 512-byte header)
    shard.write_bytes(bytes(data))
    assert invoke("shards", "verify", str(packed)).exit_code == 1
    refused = invoke("shards", "interleave", str(docs), str(tmp_path / "p2"), "--text-tokenizer",
                     str(tmp_path / "text-tok"))
    assert refused.exit_code == 2 and "one of them" in refused.output and not (tmp_path / "p2").exists()
    for bad, what in ((["--captions", "sometimes"], "sometimes"), (["--holdout", "1.5"], "1.5"),
                      (["--captions", "synthetic"], "--caption-labels"), (["--workers", "0"], "--workers")):
        refused = invoke("shards", "interleave", str(docs), str(tmp_path / "p3"), "--text-tokenizer",
                         str(tmp_path / "text-tok"), "--slots", "4", *bad)
        assert refused.exit_code == 2 and what in refused.output and not (tmp_path / "p3").exists(), refused.output

    # in parts on a Dask worker, resumable, alt text after each image, a third of the documents held out
    parts = tmp_path / "parts"
    args = ("shards", "interleave", str(docs), str(parts), "--text-tokenizer", str(tmp_path / "text-tok"),
            "--slots", "4", "--seq-len", "64", "--workers", "1", "--captions", "alt", "--holdout", "0.34")
    result = invoke(*args)
    assert result.exit_code == 0 and "held out by document" in " ".join(result.output.split()), result.output
    manifest = json.loads((parts / "manifest.json").read_text())
    assert manifest["holdout"]["fraction"] == 0.34 and manifest["captions"]["rule"] == "alt"
    assert sum(manifest["holdout"]["n"].values()) == manifest["n"]
    assert invoke("shards", "verify", str(parts)).exit_code == 0
    stamps = {f.name: f.stat().st_mtime_ns for f in parts.iterdir()}
    assert invoke(*args).exit_code == 0  # every part is in: nothing packed again
    assert {f.name: f.stat().st_mtime_ns for f in parts.iterdir() if f.name != "manifest.json"} == \
        {k: v for k, v in stamps.items() if k != "manifest.json"}
