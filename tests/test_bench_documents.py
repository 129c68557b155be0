"""benchmarks/documents.py end to end at 12 documents: a real parquet, a real HTTP server on 127.0.0.1, the
real ingest, fetch and label jobs on Dask, real packing and loaders, in its own process; the JSON it writes
has every figure, consistent with the corpus it made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "documents.py"


def test_small_run_writes_every_figure(tmp_path):
    out = tmp_path / "documents.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--docs", "12", "--seq-len", "1024", "--mixture-batches", "8",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["docs"] == 12 and d["images"] > 0
    assert d["label"]["samples"] == d["images"] and d["label"]["failed"] == 0  # every image, local and fetched
    assert d["fetch_failed"] == 0
    assert d["stats"]["documents"] == 12 and d["stats"]["images"] == d["images"]
    for stage in ("ingest", "fetch", "label", "pack"):
        assert d["seconds"][stage] > 0 and d["docs_per_s"][stage] == 12 / d["seconds"][stage], stage
    assert abs(d["end_to_end_s"] - sum(d["seconds"].values())) < 1e-9
    # padding = PAD tokens / all tokens of the written sequences
    assert abs(d["padding_share"] - d["stats"]["padding_tokens"] / (d["sequences"] * 1024)) < 1e-6  # kept to 6 places
    assert 0 <= d["padding_share"] < 1
    loader = d["loader"]
    assert loader["interleaved_samples"] == d["sequences"] and loader["interleaved_samples_per_s"] > 0
    assert loader["mixture"]["batches"] == 8 and loader["mixture"]["samples_per_s"] > 0
    assert "| end to end |" in done.stdout and "| label |" in done.stdout
