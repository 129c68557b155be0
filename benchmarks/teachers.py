"""Teacher throughput at real model sizes (random weights: speed does not depend on their values).

For every teacher: images/s over a batch-size sweep, beside the FLOP-based ceiling
    ceiling = (matmul rate this device reaches) / (GFLOPs per image of the teacher)
where the matmul rate is measured here (a large fp32 matmul on CPU, bf16 on GPU), so the ratio
says how close the teacher runs to what the hardware does on pure matrix work.

    python benchmarks/teachers.py [--teachers dinov2,depth,...] [--batches 1,4,8] [--seconds 20]

Checkpoints are built once into --workdir by benchmarks/checkpoints_*.py (real architectures).
SAM on CPU uses 16 x 16 = 256 point prompts (`--sam-points 16`) instead of 32 x 32: at 1024 prompts
its decoder alone is ~3.7 TFLOP per image. GFLOPs below are for the settings actually run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


def make_dinov2_base(path: Path) -> tuple[str, float]:
    """DINOv2 ViT-B/14 at 224: T = 16² + 1 = 257 tokens, D = 768, 12 layers, MLP 3072.
    Per layer 4·T·D² (qkv + out) = 0.606 G, 2·T²·D (attention) = 0.101 G, 2·T·D·3072 (MLP) = 1.213 G
    multiply-adds: 1.92 G; x 12 = 23.0 G MACs, + patch embedding 256·768·588 = 0.12 G -> 46.3 GFLOPs."""
    from transformers import Dinov2Config, Dinov2Model

    if not (path / "config.json").exists():
        Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072, patch_size=14, image_size=518)).save_pretrained(path)
    t, d, layers = 257, 768, 12
    macs = layers * (4 * t * d * d + 2 * t * t * d + 2 * t * d * 3072) + 256 * d * 588
    return f"dinov2={path}", 2 * macs / 1e9


def all_checkpoints() -> tuple[dict, dict]:
    import checkpoints_dense
    import checkpoints_det
    import checkpoints_sam
    import checkpoints_text

    makers = {"dinov2-b": make_dinov2_base}
    upstream = {}
    for module in (checkpoints_sam, checkpoints_dense, checkpoints_det, checkpoints_text):
        makers.update(module.CHECKPOINTS)
        upstream.update(getattr(module, "UPSTREAM", {}))
    return makers, upstream


def matmul_gflops(device: str, seconds: float = 3.0) -> float:
    """Achieved matmul rate: the practical ceiling for transformer teachers on this device."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = 4096 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * calls / (time.perf_counter() - start) / 1e9


def measure(teacher, batch_size: int, view_size: int, upstream_fn, seconds: float) -> float:
    """images/s of teacher(batch) at this batch size (after one warm-up call)."""
    from omnimill.labelers.base import Batch
    from omnimill.corpus.image import ImageInfo

    rng = np.random.default_rng(0)
    views = rng.integers(0, 256, (batch_size, view_size, view_size, 3), dtype=np.uint8)
    infos = [ImageInfo(640, 480, "RGB", "JPEG", 100_000, False, (80, 0, 560, 480), "a photo of a dog on grass")
             for _ in range(batch_size)]
    batch = Batch(views, infos, [str(i) for i in range(batch_size)],
                  upstream_fn(batch_size, view_size) if upstream_fn else {})
    teacher(batch)
    calls, start = 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - start < seconds:
        teacher(batch)
        calls += 1
    return calls * batch_size / (time.perf_counter() - start)


def main() -> None:
    import torch

    from omnimill.labelers.base import TeacherSpec
    from omnimill.labelers.registry import build

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teachers", default="")
    parser.add_argument("--batches", default="")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per (teacher, batch size)")
    parser.add_argument("--view-size", type=int, default=384)
    parser.add_argument("--sam-points", type=int, default=0, help="SAM points per side (default 16 CPU, 32 GPU)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "omnimill-teacher-bench"))
    parser.add_argument("--out", default="benchmarks/results/teachers.json")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    batches = [int(b) for b in (args.batches or ("1,8,32,64" if device == "cuda" else "1,4")).split(",")]
    sam_points = args.sam_points or (32 if device == "cuda" else 16)
    torch.set_num_threads(os.cpu_count() or 1)
    makers, upstream = all_checkpoints()
    names = args.teachers.split(",") if args.teachers else list(makers)
    peak = matmul_gflops(device)
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"{device_name}: matmul {peak:.0f} GFLOP/s ({dtype}); batches {batches}; view {args.view_size}", flush=True)

    rows = []
    for name in names:
        spec_text, gflops = makers[name](Path(args.workdir) / name)
        spec = TeacherSpec.parse(spec_text)
        if spec.name.endswith(":SAM"):
            import checkpoints_sam
            import torch as _torch

            from omnimill.labelers.sam import infer_architecture

            spec.options.update(points_per_side=sam_points)
            state = _torch.load(spec.checkpoint, map_location="cpu", mmap=True, weights_only=True)
            gflops = checkpoints_sam.gflops(infer_architecture(state), sam_points)
        teacher = build(spec, args.view_size)
        teacher.load(device, dtype)
        ceiling = peak / gflops
        for batch_size in batches:
            rate = measure(teacher, batch_size, args.view_size, upstream.get(name), args.seconds)
            rows.append({"teacher": name, "batch": batch_size, "images_per_s": rate, "gflops_per_image": gflops,
                         "ceiling_images_per_s": ceiling, "share_of_ceiling": rate / ceiling})
            print(f"{name:16s} batch {batch_size:3d}: {rate:8.2f} images/s   ceiling {ceiling:8.2f} "
                  f"({gflops:7.1f} GFLOP/image) -> {100 * rate / ceiling:5.1f}%", flush=True)
        del teacher
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device_name, "dtype": dtype, "matmul_gflops": peak, "rows": rows},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
