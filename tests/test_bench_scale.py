"""benchmarks/scale.py end to end at 200 samples: the real pipeline (label on a real Dask cluster, tokenize,
export, load) in its own process, and the JSON it writes has every field, positive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "scale.py"


def test_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "scale.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--root", str(tmp_path / "root"), "--out",
                           str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    (row,) = results["rows"]
    assert row["n"] == 200
    for stage in ("label", "tokenize", "export", "load"):
        figures = row["stages"][stage]
        assert figures["seconds"] > 0 and figures["per_sample_us"] > 0 and figures["client_rss"] > 0, (stage, figures)
    for stage in ("label", "tokenize"):  # unit jobs: their workers' RSS was seen, and their units' time
        assert row["stages"][stage]["worker_rss"] > 0 and row["stages"][stage]["units_seconds"] > 0
    for key in ("client_peak_rss", "worker_peak_rss", "open_seconds", "lookup_seconds", "status_seconds",
                "cli_status_seconds"):
        assert row[key] > 0, key
    for store in ("labels", "tokens", "shards"):
        assert row["stores"][store]["objects"] > 0 and row["stores"][store]["bytes"] > 0, store
    assert results["ratios"]["200"]["label"] == 1.0
    assert "| 200 |" in done.stdout  # the printed table has the row
    assert not (tmp_path / "root" / "run-200").exists()  # the run's stores are removed; the corpus is kept
    assert list((tmp_path / "root" / "corpus-200").glob("*.tar"))


def test_table_and_extrapolation():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import scale

    def row(n, status):
        stages = {s: {"seconds": n * 1e-4, "per_sample_us": 100.0} for s in scale.STAGES}
        stores = {s: {"objects": n // 100, "bytes": n * 10} for s in ("labels", "tokens", "shards")}
        return {"n": n, "stages": stages, "stores": stores, "client_peak_rss": 2 ** 28, "worker_peak_rss": 2 ** 28,
                "status_seconds": status, "cli_status_seconds": status + 1, "open_seconds": 0.001,
                "lookup_seconds": 0.002}

    rows = [row(1000, 0.01), row(10000, 0.1)]
    extrapolated = scale.status_at_1m(rows)
    # slope (0.1 - 0.01) / 9000 = 1e-5 s per sample: 0.1 + 1e-5 x 990,000 = 10.0 s
    assert extrapolated["extrapolated"] and abs(extrapolated["seconds"] - 10.0) < 1e-9
    results = {"rows": rows, "ratios": scale.ratios(rows), "marginal_us": scale.marginal(rows),
               "status_1m": extrapolated}
    assert results["marginal_us"]["1000-10000"]["label"] == 100.0
    assert scale.status_at_1m([row(1000, 0.5), row(10000, 0.2)])["seconds"] == 0.2  # noise: flat, not negative
    lines = scale.table(results)
    assert any(line.startswith("| 10,000 | 100 |") for line in lines)
    assert any("extrapolated linearly from 1,000 and 10,000" in line for line in lines)
