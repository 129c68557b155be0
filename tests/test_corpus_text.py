"""Text-only corpora: .txt and .jsonl files, folders and globs, and clear errors."""

from __future__ import annotations

import pytest

from omnimill.errors import UserError
from omnimill.corpus.text import read_texts


def test_txt_and_jsonl_in_a_folder(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n  \nsecond line\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text('{"text": "from json"}\n{"text": ""}\n{"body": "x", "text": "again"}\n')
    keys, texts = read_texts(str(tmp_path))
    assert texts == ["first line", "second line", "from json", "again"]
    assert keys == ["a_00000000", "a_00000003", "sub/b_00000000", "sub/b_00000002"]
    assert read_texts(str(tmp_path / "*.txt"), limit=1) == (["a_00000000"], ["first line"])


def test_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(UserError, match="no text files"):
        read_texts(str(tmp_path / "missing.txt"))
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match="c.jsonl line 2: not a JSON object with a 'text' field"):
        read_texts(str(tmp_path / "c.jsonl"))
    (tmp_path / "d.csv").write_text("x")
    with pytest.raises(UserError, match="not .csv"):
        read_texts(str(tmp_path / "d.csv"))


# --- `omnimill shards text`: OUT apart from the corpus, careful --force, options checked first, resumable ---

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from conftest import invoke, listing, one_line_error  # noqa: E402


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("".join(f"a small red boat number {i}\n" for i in range(9)))
    (folder / "sub" / "b.jsonl").write_text("".join(json.dumps({"text": f"green field {i}"}) + "\n" for i in range(8)))
    return folder


@pytest.mark.parametrize("corpus_arg, out_arg", [
    ("corpus", "corpus"),  # OUT is the corpus folder
    ("corpus", "corpus/sub"),  # inside it
    ("corpus/*.txt", "corpus"),  # OUT holds a file being read
    ("corpus/a.txt", "corpus/a.txt"),  # OUT is the file
])
def test_text_out_overlapping_the_corpus_is_refused_and_the_corpus_intact(token_data, corpus, corpus_arg, out_arg):
    root = corpus.parent
    before = listing(corpus)
    result = invoke("shards", "text", root / corpus_arg, root / out_arg, "--tokenizer",
                    token_data["tokenizers"]["caption"], "--force")
    one_line_error(result, "corpus")
    assert listing(corpus) == before


def test_text_out_in_the_tokenizer_is_refused(token_data, corpus):
    tokenizer = token_data["tokenizers"]["caption"]
    one_line_error(invoke("shards", "text", corpus, f"{tokenizer}/shards", "--tokenizer", tokenizer),
                   "inside the tokenizer")


@pytest.mark.parametrize("option, value", [("--samples-per-shard", "0"), ("--samples-per-shard", "-1"),
                                           ("--limit", "0"), ("--limit", "-5")])
def test_text_counts_below_one_write_nothing(token_data, corpus, tmp_path, option, value):
    out = tmp_path / "out"
    one_line_error(invoke("shards", "text", corpus, out, "--tokenizer", token_data["tokenizers"]["caption"],
                          option, value), f"{option} must be at least 1")
    assert not out.exists()


def test_text_blank_corpus_writes_nothing(token_data, tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n")
    one_line_error(invoke("shards", "text", tmp_path / "blank.txt", tmp_path / "out", "--tokenizer",
                          token_data["tokenizers"]["caption"]), "no text")
    assert not (tmp_path / "out").exists()


def test_text_force_keeps_other_files(token_data, corpus, tmp_path):
    out = tmp_path / "out"
    command = ("shards", "text", corpus, out, "--tokenizer", token_data["tokenizers"]["caption"])
    assert invoke(*command, "--samples-per-shard", "4").exit_code == 0
    (out / "notes.txt").write_text("mine")
    one_line_error(invoke(*command), "already holds an export")
    assert invoke(*command, "--force").exit_code == 0
    assert sorted(listing(out)) == ["manifest.json", "notes.txt", "shard-000000.idx.npz", "shard-000000.tar"]


@pytest.mark.parametrize("target", ["manifest.json", "shard-000002.tar"])
def test_text_killed_while_writing_then_the_same_command_finishes_it(token_data, corpus, tmp_path, target):
    from test_wds import KILLER

    clean, out = tmp_path / "clean", tmp_path / "out"
    args = ("--tokenizer", token_data["tokenizers"]["caption"], "--samples-per-shard", "5")
    assert invoke("shards", "text", corpus, clean, *args).exit_code == 0
    run = subprocess.run([sys.executable, "-c", KILLER, target, "0.5", "shards", "text", str(corpus),
                          str(out), *args], capture_output=True, text=True)
    assert run.returncode == -9, run.stdout + run.stderr
    result = invoke("shards", "text", corpus, out, *args)
    assert result.exit_code == 0, result.output
    got, want = listing(out), listing(clean)
    assert sorted(got) == sorted(want) and len(want) == 9  # 17 texts: 4 shards + indexes + manifest
    assert all(got[name] == want[name] for name in want if name != "manifest.json")
    assert invoke("shards", "verify", out).exit_code == 0


KILLED_TEXT_RUN = """
from omnimill.corpus.text import read_texts
from omnimill.engine.text import write_text_shards
keys, texts = read_texts(sys.argv[3])
write_text_shards(texts, keys, sys.argv[4], sys.argv[5], samples_per_shard=5, workers=1, progress=False)
"""


def test_text_is_a_unit_job_a_killed_run_keeps_its_finished_shards(token_data, corpus, tmp_path):
    """Each shard is a unit committed by its note in _export/: the rerun writes only the shards not noted."""
    from test_wds import KILLER

    from omnimill.engine.text import write_text_shards

    clean, out = tmp_path / "clean", tmp_path / "out"
    tokenizer = token_data["tokenizers"]["caption"]
    keys, texts = read_texts(str(corpus))
    assert write_text_shards(texts, keys, tokenizer, str(clean), samples_per_shard=5, progress=False).exit_code == 0
    script = KILLER.rsplit("from omnimill.cli", 1)[0] + KILLED_TEXT_RUN
    run = subprocess.run([sys.executable, "-c", script, "shard-000002.tar", "0.5", str(corpus), tokenizer, str(out)],
                         capture_output=True, text=True)
    assert run.returncode == -9, run.stdout + run.stderr
    noted = sorted(p.name.removesuffix(".json") for p in (out / "_export").glob("shard-*.tar.json"))
    assert noted and "shard-000002.tar" not in noted and not (out / "manifest.json").exists()
    before = {name: (out / name).stat().st_mtime_ns for name in noted}
    result = write_text_shards(texts, keys, tokenizer, str(out), samples_per_shard=5, progress=False)
    assert result.exit_code == 0 and result.units_planned == 4 - len(noted)
    assert {name: (out / name).stat().st_mtime_ns for name in noted} == before  # not written again
    got, want = listing(out), listing(clean)
    assert sorted(got) == sorted(want) and all(got[name] == want[name] for name in want if name != "manifest.json")
