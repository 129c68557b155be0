"""Text-only corpora: .txt and .jsonl files, folders and globs, and clear errors."""

from __future__ import annotations

import pytest

from omnimill.errors import UserError
from omnimill.shards.textcorpus import read_texts


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
