"""GPU figures in one run (`make bench-gpu`): teachers, the labelling engine, a tokenizer and the trainer on one GPU.

    python benchmarks/gpu.py              # one GPU, under 6 minutes; writes benchmarks/results/gpu.json
    python benchmarks/gpu.py --dry-run    # the same code paths on CPU, tiny configs, a handful of images

Every model has its real architecture and RANDOM weights (no network here or on the GPU machine; speed does not
depend on the weights' values, except SAM's mask filters: see its row). Rows:

  dinov2-b bare      transformers Dinov2Model (ViT-B/14) forward on --images preprocessed 224² images, bf16
  dinov2-b label     `omnimill label` (engine.label.label, embedded Dask cluster, 1 worker) with the dinov2
                     teacher at the same checkpoint on --images JPEGs; end to end and steady (first unit out)
  dinov2-l bare      as dinov2-b bare, ViT-L/14
  sam-vit-h          omnimill's sam teacher (automatic masks, 32² point prompts) on segment-anything's ViT-H
  depth-anything     omnimill's depth teacher, Depth-Anything-V2-Small at 518²
  clip               omnimill's clip teacher, CLIP ViT-B/16 image tower + the text tower on one caption per image
  spatial encode     omnimill's spatial tokenizer (input 256², 16 x 16 tokens, width 64) encode; tokens/s
  trainer real       the 4M trainer's step (benchmarks/trainer.py: omnimill's model, masking, AdamW) fed by the
  trainer synthetic  real TokenLoader over a WebDataset shard set vs the same batches held in memory; tokens/s

MFU = achieved FLOP/s / the GPU's peak dense bf16 FLOP/s (PEAK_BF16; an unknown GPU or the CPU: blank).
Achieved FLOP/s = rate x FLOPs per item, FLOPs counted by torch.utils.flop_counter.FlopCounterMode on one call
of exactly what the row times (a batch through the model, the teacher, the encoder, one training step forward
and backward), divided by the items in that call.

Needs, beside torch, torchvision and transformers: dask, distributed, zarr, numcodecs, webdataset, segment-anything and
vector-quantize-pytorch (benchmarks/gpu_wheels.sh downloads them and their few needs as Python 3.12 wheels for a GPU
machine without network; docs/GPU.md says how to run there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# Peak dense bf16 tensor FLOP/s from the vendors' data sheets (without sparsity). Matched in order on the name
# torch reports, so "H100 PCIe" comes before "H100" and "L40S" before "L4".
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("L4", 121e12), ("B200", 2250e12)]

STARTED = time.perf_counter()
CAPTION = "a brown dog running on the grass next to a small red ball in the park"

# Sizes of the GPU run (under 6 minutes on an H100/H200) and of the dry run (CPU, well under a minute).
GPU = SimpleNamespace(images=2048, unit=256, batch=64, view=384, seconds=8.0, sam_points=32, sam_batch=2,
                      train=dict(dim=768, layers=12, heads=12, batch_size=256, tokens=256, samples=8192, steps=20,
                                 warmup=3, rounds=2, workers=8))
DRY = SimpleNamespace(images=8, unit=4, batch=4, view=64, seconds=0.3, sam_points=4, sam_batch=1,
                      train=dict(dim=32, layers=1, heads=2, batch_size=4, tokens=16, samples=64, steps=2,
                                 warmup=1, rounds=1, workers=1))


def peak_flops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16 if key.lower() in device_name.lower()), None)


def count_flops(call) -> float:
    """FLOPs of one call, as torch's FlopCounterMode counts them (matmuls, convolutions, attention: 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        call()
    return float(counter.get_total_flops())


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def timed(call, items: int, seconds: float, device: str) -> float:
    """items/s of call() (items per call), after one warm-up call, over at least `seconds` and 2 calls."""
    call()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        call()
        calls += 1
    sync(device)
    return calls * items / (time.perf_counter() - start)


def row(name: str, what: str, batch: int, rate: float, unit: str, flops_per_item: float, peak: float | None,
        note: str = "") -> dict:
    achieved = rate * flops_per_item
    print(f"  [{time.perf_counter() - STARTED:4.0f} s] {name}: {rate:,.1f} {unit}", flush=True)
    return {"row": name, "what": what, "batch": batch, "rate": rate, "unit": unit,
            "gflops_per_item": flops_per_item / 1e9, "achieved_tflops": achieved / 1e12,
            "mfu": achieved / peak if peak else None, "note": note}


# ---------------------------------------------------------------- checkpoints (real configs; tiny for --dry-run)
def dinov2_checkpoint(path: Path, size: str) -> Path:
    """DINOv2 ViT-B/14 or ViT-L/14 (facebook/dinov2-base / -large's configs), or toy ones for --dry-run."""
    from transformers import Dinov2Config, Dinov2Model

    dims = {"b": (768, 12, 12), "l": (1024, 24, 16), "tiny-b": (32, 2, 2), "tiny-l": (48, 3, 2)}[size]
    if not (path / "config.json").exists():
        d, layers, heads = dims
        Dinov2Model(Dinov2Config(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                                 intermediate_size=4 * d, patch_size=14, image_size=518)).save_pretrained(path)
    return path


def sam_checkpoint(path: Path, tiny: bool) -> Path:
    """segment-anything's ViT-H (build_sam_vit_h, 636M parameters), or its modules at toy sizes; a plain state dict,
    as the official .pth files are."""
    import torch

    file = path / "sam.pth"
    if file.exists():
        return file
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if tiny:
        from functools import partial

        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

        # 128² input, 8 x 8 tokens of 16 px, windows of 4, block 1 global
        encoder = ImageEncoderViT(img_size=128, embed_dim=16, depth=2, num_heads=2, out_chans=16, window_size=4,
                                  global_attn_indexes=(1,), use_rel_pos=True,
                                  norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
        prompt = PromptEncoder(embed_dim=16, image_embedding_size=(8, 8), input_image_size=(128, 128), mask_in_chans=4)
        decoder = MaskDecoder(transformer_dim=16, transformer=TwoWayTransformer(depth=1, embedding_dim=16, mlp_dim=32,
                                                                                num_heads=2))
        model = Sam(encoder, prompt, decoder)
    else:
        from segment_anything import build_sam_vit_h

        model = build_sam_vit_h()
    torch.save(model.state_dict(), file.with_suffix(".tmp"))
    file.with_suffix(".tmp").rename(file)  # a half-written file never looks finished
    return file


def depth_checkpoint(path: Path, tiny: bool) -> Path:
    """Depth-Anything-V2-Small (benchmarks/checkpoints_dense.py), or a 4-layer one at 56² for --dry-run."""
    if not tiny:
        import checkpoints_dense

        checkpoints_dense.make_depth_anything_v2_small(path)
        return path
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    if not (path / "config.json").exists():
        backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, patch_size=14,
                                image_size=56, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
        DepthAnythingForDepthEstimation(DepthAnythingConfig(
            backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 8, 16, 16],
            fusion_hidden_size=8, head_hidden_size=8)).save_pretrained(path)
        DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True,
                          ensure_multiple_of=14).save_pretrained(path)
    return path


def clip_checkpoint(path: Path, tiny: bool) -> Path:
    """CLIP ViT-B/16 (CLIPConfig's defaults with 16 px patches), or a 2-layer one for --dry-run. Its tokenizer is a
    WordPiece over CAPTION's words (CLIP's real BPE needs a download); CAPTION is 16 tokens + 2 special, about what
    CLIP's BPE makes of it, and the text tower's cost depends only on that count."""
    from transformers import BertTokenizerFast, CLIPConfig, CLIPModel

    if (path / "config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                               *sorted(set(CAPTION.split()))]) + "\n")
    tokenizer = BertTokenizerFast(str(path / "vocab.txt"))
    special = dict(eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                   bos_token_id=tokenizer.cls_token_id)
    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32) if tiny else {}
    vision = dict(patch_size=8, image_size=32, **small) if tiny else dict(patch_size=16)
    CLIPModel(CLIPConfig(vision_config=vision, text_config={**special, **small},
                         projection_dim=16 if tiny else 512)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_jpegs(root: Path, n: int) -> Path:
    """n 640 x 480 JPEGs (q 90) of smooth random colour fields with a little grain: photo-like decode cost."""
    from PIL import Image

    if root.exists() and len(list(root.glob("*.jpg"))) == n:
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)

    def one(i: int) -> None:
        rng = np.random.default_rng(i)
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
        grain = rng.integers(-12, 13, (480, 640, 3), dtype=np.int16)
        pixels = np.clip(np.asarray(coarse, np.int16) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"img{i:05d}.jpg", quality=90)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # PIL's resize and encode release the GIL
        list(pool.map(one, range(n)))
    return root


# ---------------------------------------------------------------- rows
def bare_forward(name: str, checkpoint: Path, s, device: str, dtype, peak) -> dict:
    """transformers' Dinov2Model alone on preprocessed 224² batches already on the device: the ceiling."""
    import torch
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    pixels = torch.randn(s.batch, 3, 224, 224, device=device, dtype=dtype)

    @torch.inference_mode()
    def forward():
        model(pixel_values=pixels)

    flops = count_flops(forward) / s.batch
    rate = timed(forward, s.batch, s.seconds, device)
    return row(name, f"Dinov2Model forward, 224², {str(dtype).removeprefix('torch.')}", s.batch, rate, "images/s",
               flops, peak)


def label_run(checkpoint: Path, corpus: Path, store: Path, s, device: str, dtype: str, flops: float, peak) -> dict:
    """`omnimill label` with the dinov2 teacher: embedded cluster, 1 worker, the engine's defaults otherwise."""
    import engine as engine_bench  # benchmarks/engine.py: the steady rate from the units' stats

    from omnimill.engine.label import LabelOptions, label

    shutil.rmtree(store, ignore_errors=True)
    options = LabelOptions(batch_size=s.batch, unit_size=s.unit, view_size=s.view, progress=False, device=device,
                           dtype=dtype, workers=1, decode_threads=max(2, (os.cpu_count() or 2) // 2))
    start = time.perf_counter()
    result = label(str(corpus), str(store), [f"dinov2={checkpoint}"], options)
    seconds = time.perf_counter() - start
    if result.units_failed or result.samples_failed:
        raise SystemExit(f"omnimill label failed: {result}")
    steady = engine_bench.steady_rate(result.unit_stats)
    out = row("dinov2-b label", f"omnimill label, dinov2 teacher, {s.images} JPEGs 640x480, view {s.view}, unit "
              f"{s.unit}, 1 worker", s.batch, steady, "images/s", flops, peak,
              f"steady (first unit out); end to end {s.images / seconds:,.1f} images/s in {seconds:.1f} s")
    out["end_to_end_rate"] = s.images / seconds
    return out


def teacher_row(name: str, what: str, spec: str, batch: int, s, device: str, dtype: str, peak, note: str = "",
                **options) -> dict:
    """A teacher from the registry, loaded as a worker loads it, timed on one batch of random views with a caption."""
    from omnimill.corpus.image import ImageInfo
    from omnimill.labelers.base import Batch, TeacherSpec
    from omnimill.labelers.registry import build

    parsed = TeacherSpec.parse(spec)
    parsed.options.update(options)
    teacher = build(parsed, s.view)
    teacher.load(device, dtype)
    views = np.random.default_rng(0).integers(0, 256, (batch, s.view, s.view, 3), dtype=np.uint8)
    infos = [ImageInfo(640, 480, "RGB", "JPEG", 100_000, False, (80, 0, 560, 480), CAPTION)] * batch
    one = Batch(views, infos, [str(i) for i in range(batch)])
    flops = count_flops(lambda: teacher(one)) / batch
    rate = timed(lambda: teacher(one), batch, s.seconds, device)  # outputs come back as numpy: each call syncs
    return row(name, what, batch, rate, "images/s", flops, peak, note)


def spatial_row(s, device: str, dry: bool, peak) -> dict:
    """The spatial tokenizer at the production size of benchmarks/tokenizer_bench.py (tiny for --dry-run)."""
    from tokenizer_bench import encode_rate

    from omnimill.tokenize.base import TokenizerConfig
    from omnimill.tokenize.spatial import SpatialTokenizer

    size, grid, width = (32, 4, 8) if dry else (256, 16, 64)
    config = TokenizerConfig("spatial", "rgb", ["image"], normalization={"mode": "image", "mean": [0.5] * 3,
                                                                        "std": [0.25] * 3},
                             options={"view_size": s.view, "input_size": size, "grid": grid, "width": width,
                                      "vocab": 1024, "sample_shape": [s.view, s.view, 3]})
    tokenizer = SpatialTokenizer(config).to(device)
    images = {"image": np.random.default_rng(0).integers(0, 256, (s.batch, s.view, s.view, 3), dtype=np.uint8)}
    tokens = grid * grid
    flops = count_flops(lambda: tokenizer.encode(images)) / (s.batch * tokens)
    rate = encode_rate(tokenizer, images, batch=s.batch, seconds=s.seconds) * tokens
    return row("spatial encode", f"spatial tokenizer encode, {size}² in, {grid}x{grid} tokens, width {width}, fp32",
               s.batch, rate, "tokens/s", flops, peak, "fp32 (as omnimill encodes); MFU against the bf16 peak")


def trainer_rows(s, work: Path, device: str, peak) -> tuple[list[dict], float]:
    """benchmarks/trainer.py's comparison (real TokenLoader vs the same batches in memory) at this run's size."""
    import torch
    import trainer

    from omnimill.train.model import ModalitySpec

    t = s.train
    args = SimpleNamespace(dim=t["dim"], layers=t["layers"], heads=t["heads"], batch_size=t["batch_size"],
                           tokens=t["tokens"], device=device, warmup=t["warmup"], steps=t["steps"],
                           rounds=t["rounds"], loader_batches=4 * t["steps"])
    data = str(trainer.make_shards(work / "trainer", t["samples"]))
    result = trainer.measure(args, data, t["workers"], torch.device(device))
    # FLOPs of one step (forward, backward; AdamW's elementwise work is not counted) per token it processed
    config = trainer.make_config(args, data, 0)
    loader = trainer.make_loader(config, torch.device(device))
    specs = [ModalitySpec(m.name, m.vocab_size, m.length) for m in loader.modalities.values()]
    batch = next(iter(loader))
    step = trainer.Trainer(config, specs, torch.device(device))
    tokens = []
    flops = count_flops(lambda: tokens.append(step.step(batch)[0]))
    per_token = flops / tokens[0]
    size = f"dim {t['dim']}, {t['layers']}+{t['layers']} layers, batch {t['batch_size']}, {t['tokens']}+{t['tokens']} tokens"
    params = f"{result['parameters'] / 1e6:.0f}M parameters"
    rows = [row(f"trainer {feed}", f"4M trainer step, {size}, {feed} batches", t["batch_size"],
                result[feed]["tokens_s"], "tokens/s", per_token, peak,
                f"{params}; {t['workers']} loader workers" if feed == "real" else params)
            for feed in ("real", "synthetic")]
    return rows, result["ratio"]


# ---------------------------------------------------------------- the run
def table(rows: list[dict], ratios: dict) -> str:
    lines = ["| row | what | batch | rate | unit | GFLOP/item | TFLOP/s | MFU | note |",
             "|---|---|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
        lines.append(f"| {r['row']} | {r['what']} | {r['batch']} | {r['rate']:,.1f} | {r['unit']} | "
                     f"{r['gflops_per_item']:.4g} | {r['achieved_tflops']:.4g} | {mfu} | {r['note']} |")
    lines += ["", "| ratio | value | goal |", "|---|---:|---:|"]
    lines += [f"| {name} | {value:.3f} | {goal} |" for name, (value, goal) in ratios.items()]
    return "\n".join(lines)


def versions(device: str) -> dict:
    import torch
    import transformers

    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()}" \
                                                                  f", {os.cpu_count()} cores)"
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda if device == "cuda" else None,
            "transformers": transformers.__version__, "python": platform.python_version(), "cores": os.cpu_count()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny configs, a handful of images (< 1 minute)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "omnimill-bench-gpu"),
                        help="checkpoints, corpus and shards, kept for the next run")
    parser.add_argument("--out", help="default benchmarks/results/gpu.json; with --dry-run WORKDIR/gpu-dry-run.json "
                                      "(a dry run never overwrites the recorded GPU figures)")
    args = parser.parse_args()

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine (docs/GPU.md), or --dry-run here")
    s = DRY if args.dry_run else GPU
    if args.dry_run:
        torch.set_num_threads(1)  # toy tensors: more threads only add hand-offs on a shared CPU
    device = "cpu" if args.dry_run else "cuda"
    dtype_name = "float32" if args.dry_run else "bfloat16"
    dtype = getattr(torch, dtype_name)
    work = Path(args.workdir) / ("dry" if args.dry_run else "gpu")
    work.mkdir(parents=True, exist_ok=True)
    info = versions(device)
    peak = peak_flops(info["device"]) if device == "cuda" else None
    print(f"{info['device']}; peak bf16 {peak / 1e12 if peak else '?'} TFLOP/s; torch {info['torch']}, CUDA "
          f"{info['cuda']}, transformers {info['transformers']}; {dtype_name}; RANDOM WEIGHTS (real architectures)",
          flush=True)
    tiny = args.dry_run
    rows = []
    d2b = dinov2_checkpoint(work / "dinov2-b", "tiny-b" if tiny else "b")
    rows.append(bare_forward("dinov2-b bare", d2b, s, device, dtype, peak))
    corpus = make_jpegs(work / f"corpus-{s.images}", s.images)
    rows.append(label_run(d2b, corpus, work / "labels.zarr", s, device, dtype_name, rows[0]["gflops_per_item"] * 1e9,
                          peak))
    d2l = dinov2_checkpoint(work / "dinov2-l", "tiny-l" if tiny else "l")
    rows.append(bare_forward("dinov2-l bare", d2l, s, device, dtype, peak))
    sam = sam_checkpoint(work / "sam", tiny)
    rows.append(teacher_row("sam-vit-h", f"sam teacher, automatic masks, {s.sam_points}² prompts"
                            f"{'' if tiny else ', ViT-H 1024²'}", f"omnimill.labelers.sam:SAM={sam}", s.sam_batch, s,
                            device, dtype_name, peak, "random weights: few masks pass the filters, so painting is "
                            "cheaper than with real SAM; anchor 1.2-6 images/s on an H100", points_per_side=s.sam_points))
    rows.append(teacher_row("depth-anything", "depth teacher, Depth-Anything-V2-Small", "omnimill.labelers.depth:Depth="
                            f"{depth_checkpoint(work / 'depth', tiny)}", s.batch, s, device, dtype_name, peak))
    rows.append(teacher_row("clip", "clip teacher, ViT-B/16 image + text of one caption", "omnimill.labelers.clip:CLIP="
                            f"{clip_checkpoint(work / 'clip', tiny)}", s.batch, s, device, dtype_name, peak))
    rows.append(spatial_row(s, device, tiny, peak))
    trained, loader_ratio = trainer_rows(s, work, device, peak)
    rows += trained
    ratios = {"dinov2-b: omnimill label (steady) / bare forward": (rows[1]["rate"] / rows[0]["rate"], ">= 0.9"),
              "dinov2-b: omnimill label (end to end) / bare forward": (rows[1]["end_to_end_rate"] / rows[0]["rate"], ""),
              "trainer: synthetic / real step time": (loader_ratio, ">= 0.95")}
    seconds = time.perf_counter() - STARTED  # the whole script, imports and checkpoint building included
    text = table(rows, ratios)
    print(f"\n{text}\n\n{info['device']}, {seconds:.0f} s; random weights, real architectures", flush=True)
    out = Path(args.out or (work.parent / "gpu-dry-run.json" if args.dry_run else
                            ROOT / "benchmarks" / "results" / "gpu.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**info, "peak_bf16_flops": peak, "dtype": dtype_name, "dry_run": args.dry_run,
                               "weights": "random (real architectures)", "seconds": round(seconds, 1),
                               "load": os.getloadavg()[0], "command": " ".join(["benchmarks/gpu.py", *sys.argv[1:]]),
                               "rows": rows, "ratios": {k: {"value": v, "goal": g} for k, (v, g) in ratios.items()}},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
