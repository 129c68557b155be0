"""docs/BENCHMARKS.md's tables are exactly what benchmarks/tables.py renders from the committed JSON of the
benchmark runs (benchmarks/results/*.json), so the doc cannot contradict its JSON."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("benchmark_tables", ROOT / "benchmarks" / "tables.py")
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)


def test_every_table_equals_what_its_json_renders():
    text = tables.DOC.read_text()
    found = list(tables.MARKED.finditer(text))
    assert {m["name"] for m in found} >= {"engine-runs", "audit", "shards-formats", "trainer"}
    for m in found:
        assert m["body"] == tables.render(m["name"]) + "\n", \
            f"table {m['name']} differs from its JSON: run `python benchmarks/tables.py --write`"
    assert tables.update(text) == text


def test_no_table_without_json():
    outside = tables.MARKED.sub("", tables.DOC.read_text())
    stray = [line for line in outside.splitlines() if line.lstrip().startswith("|")]
    assert not stray, f"table lines outside <!-- table:NAME --> markers (no JSON behind them): {stray[:3]}"


def test_each_table_names_its_json_file():
    for m in tables.MARKED.finditer(tables.DOC.read_text()):
        file, _ = tables.TABLES[m["name"]]
        assert (tables.RESULTS / f"{file}.json").exists()
    text = tables.DOC.read_text()
    for file in {file for file, _ in tables.TABLES.values() if (tables.RESULTS / f"{file}.json").exists()}:
        assert f"benchmarks/results/{file}.json" in text
