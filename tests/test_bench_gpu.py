"""benchmarks/gpu.py: its --dry-run (the GPU run's code paths on CPU, tiny configs) prints every row and writes
the JSON; peak FLOP/s by GPU name; FLOPs counted as FlopCounterMode counts them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("benchmark_gpu", ROOT / "benchmarks" / "gpu.py")
gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu)

ROWS = ["dinov2-b bare", "dinov2-b label", "dinov2-l bare", "sam-vit-h", "depth-anything", "clip", "spatial encode",
        "trainer real", "trainer synthetic"]


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12), ("Tesla T4", None)])
def test_peak_flops_by_gpu_name(name, peak):
    assert gpu.peak_flops(name) == peak


def test_count_flops_is_two_per_multiply_add():
    a, b = torch.ones(8, 16), torch.ones(16, 4)
    assert gpu.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_dry_run_prints_every_row_and_writes_the_json(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--workdir",
                          str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout[run.stdout.index("| row |"):]
    for name in ROWS:
        assert f"\n| {name} |" in table
    assert "RANDOM WEIGHTS" in run.stdout

    result = json.loads(out.read_text())
    assert result["dry_run"] is True and result["weights"].startswith("random")
    assert result["device"].startswith("CPU") and result["torch"] == torch.__version__ and result["cuda"] is None
    assert [r["row"] for r in result["rows"]] == ROWS
    for r in result["rows"]:
        assert r["rate"] > 0 and r["gflops_per_item"] > 0 and r["achieved_tflops"] > 0, r
        assert r["mfu"] is None  # no peak for a CPU: MFU is left blank, not made up
    units = {r["row"]: r["unit"] for r in result["rows"]}
    assert units["spatial encode"] == units["trainer real"] == "tokens/s" and units["clip"] == "images/s"
    assert len(result["ratios"]) == 3 and all(v["value"] > 0 for v in result["ratios"].values())
