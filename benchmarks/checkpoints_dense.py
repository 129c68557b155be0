"""Real-size depth, normals and semseg checkpoints with random weights, for benchmarks/teachers.py.

This machine cannot download the official weights, and speed does not depend on their values: each
`make` builds the default model's exact architecture, saves it with save_pretrained plus the
preprocessor_config.json the teacher reads (input size, mean/std), and reuses a directory that is
already there.

CHECKPOINTS maps a name to make(path) -> (spec for --teacher, GFLOPs per image at the teacher's
default input size). GFLOPs count 2 per multiply-add of matmuls, convolutions and attention;
norms, activations, softmax and resizes are memory-bound extras left out. `python
benchmarks/checkpoints_dense.py DIR` builds all three and checks each figure against torch's
FlopCounterMode on one image.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEPTH = "omnimill.labelers.depth:Depth"
NORMALS = "omnimill.labelers.normals:Normals"
SEMSEG = "omnimill.labelers.semseg:SemSeg"


def conv(pixels: int, c_in: int, c_out: int, k: int = 1) -> int:
    """Multiply-adds of a k x k convolution producing `pixels` outputs."""
    return pixels * c_in * c_out * k * k


def vit_macs(tokens: int, dim: int, layers: int, mlp: int, patches: int, patch: int) -> int:
    """Patch embedding + layers x (qkv and out projections 4TD², attention QKᵀ and AV 2T²D, MLP 2TD·mlp)."""
    return patches * 3 * patch * patch * dim + layers * (4 * tokens * dim * dim + 2 * tokens * tokens * dim
                                                        + 2 * tokens * dim * mlp)


def dpt_fusion_macs(sizes: list[int], f: int, first_has_residual: bool) -> int:
    """DPT fusion, deepest level first: residual units (two 3x3 f->f convolutions) at each level's side, a 1x1
    projection after each upsampling; `sizes` = side of the fused map at each level, then its final side."""
    unit = 2 * conv(1, f, f, 3)
    macs = 0
    for i, side in enumerate(sizes[:-1]):
        units = 1 if i == 0 and not first_has_residual else 2
        macs += units * unit * side * side + conv(sizes[i + 1] ** 2, f, f)
    return macs


# ---------------------------------------------------------------- depth: Depth Anything V2 Small at 518


def depth_anything_gflops(config, size: int) -> float:
    """Depth-Anything-V2-Small at 518 (g = 37 patches of 14, T = 1369 + 1 tokens, D = 384, 12 layers):
      backbone  ViT-S/14: 12 · (4TD² + 2T²D + 8TD²) + patch embed 1369·588·384   = 46.70 G MAC
      reassemble 1x1 to (48, 96, 192, 384) on 37²: 1369·384·720                  =  0.38
                 resize: 4x4/4 transposed on 48, 2x2/2 on 96, 3x3/2 conv to 19² on 384   =  0.58
      neck      3x3 to 64 at 148², 74², 37², 19²                                    =  1.14
      fusion    64-ch residual units at 19², 37², 74², 148², upsampling to 37..296   =  4.74
      head      3x3 64->32 at 296², resize to 518², 3x3 32->32 and 1x1 32->1 there  =  4.10
                                                                                    = 57.64 G MAC = 115.3 GFLOP
    """
    b, p = config.backbone_config, config.patch_size
    g = size // p
    macs = vit_macs(g * g + 1, b.hidden_size, b.num_hidden_layers, int(b.hidden_size * b.mlp_ratio), g * g, p)
    c, f = config.neck_hidden_sizes, config.fusion_hidden_size
    sides = [g * 4, g * 2, g, -(-g // 2)]  # reassemble factors 4, 2, 1, 1/2 (stride-2 conv rounds up)
    macs += g * g * b.hidden_size * sum(c)  # 1x1 projections
    macs += g * g * c[0] * c[0] * 16 + g * g * c[1] * c[1] * 4 + conv(sides[3] ** 2, c[3], c[3], 3)
    macs += sum(conv(s * s, ci, f, 3) for s, ci in zip(sides, c))
    macs += dpt_fusion_macs([sides[3], sides[2], sides[1], sides[0], sides[0] * 2], f, first_has_residual=False)
    top = sides[0] * 2
    macs += conv(top * top, f, f // 2, 3) + conv(size * size, f // 2, config.head_hidden_size, 3)
    macs += conv(size * size, config.head_hidden_size, 1)
    return 2 * macs / 1e9


def make_depth_anything_v2_small(path: Path) -> tuple[str, float]:
    """Depth-Anything-V2-Small (24.8M parameters, the depth teacher's default) with random weights."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    path = Path(path)
    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                            patch_size=14, image_size=518, out_indices=[3, 6, 9, 12], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384,
                                 neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32,
                                 depth_estimation_type="relative")
    if not (path / "config.json").exists():
        DepthAnythingForDepthEstimation(config).save_pretrained(path)
        DPTImageProcessor(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                          resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
                          ).save_pretrained(path)
    return f"{DEPTH}={path}", depth_anything_gflops(config, 518)


# ---------------------------------------------------------------- normals: TIPSv2-B/14 DPT at 448


def tipsv2_dpt_gflops(config, size: int) -> float:
    """TIPSv2-B/14 + normals DPT at 448 (g = 32 patches of 14, T = 1024 + CLS + 1 register, D = 768, 12 layers):
      backbone  ViT-B/14: 12 · (12TD² + 2T²D) + patch embed 1024·588·768          = 107.01 G MAC
      readout   4 levels · Linear(2D -> D) on 1024 tokens                             =   4.83
      reassemble 1x1 to (96, 192, 384, 768) + 4x4/4 and 2x2/2 transposed + 3x3/2 conv =   2.79
      neck      3x3 to 256 at 128², 64², 32², 16²                                     =   6.79
      fusion    256-ch residual units at 16², 32², 64², 128², upsampling to 32..256   =  56.74
      decoder   3x3 256->256 at 256² + Linear(256 -> 3)                                =  38.70
                                                                                      = 216.87 G MAC = 433.7 GFLOP
    The head costs as much as the backbone: 3x3 convolutions over 256 channels at up to 256² pixels.
    """
    b = config.backbone_config
    p, d = b.patch_size, b.hidden_size
    g = size // p
    macs = vit_macs(g * g + 1 + b.num_register_tokens, d, b.num_hidden_layers, int(d * b.mlp_ratio), g * g, p)
    c, f = config.neck_hidden_sizes, config.fusion_hidden_size
    sides = [g * 4, g * 2, g, -(-g // 2)]
    macs += len(c) * g * g * 2 * d * d  # readout projections: [patch, CLS] -> D
    macs += g * g * d * sum(c)
    macs += g * g * c[0] * c[0] * 16 + g * g * c[1] * c[1] * 4 + conv(sides[3] ** 2, c[3], c[3], 3)
    macs += sum(conv(s * s, ci, f, 3) for s, ci in zip(sides, c))
    fused = [sides[3], sides[3] * 2, sides[3] * 4, sides[3] * 8, sides[3] * 16]  # each layer upsamples 2x
    macs += dpt_fusion_macs(fused, f, first_has_residual=False)
    macs += conv(fused[-1] ** 2, f, f, 3) + fused[-1] ** 2 * f * 3  # decoder: 3x3 projection + Linear(f -> 3)
    return 2 * macs / 1e9


def make_tipsv2_b14_dpt(path: Path) -> tuple[str, float]:
    """TIPSv2-B/14 with its normals DPT head (google/tipsv2-b14-dpt, the normals teacher's default)."""
    from transformers import Tipsv2DptConfig, Tipsv2DptForNormalEstimation
    from transformers.models.tipsv2.configuration_tipsv2 import Tipsv2VisionConfig
    from transformers.models.tipsv2_dpt.image_processing_tipsv2_dpt import Tipsv2DptImageProcessor

    path = Path(path)
    backbone = Tipsv2VisionConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=448,
                                  patch_size=14, num_register_tokens=1, out_indices=[3, 6, 9, 12],
                                  apply_layernorm=True, reshape_hidden_states=False)
    config = Tipsv2DptConfig(backbone_config=backbone, neck_hidden_sizes=[96, 192, 384, 768], fusion_hidden_size=256)
    if not (path / "config.json").exists():
        Tipsv2DptForNormalEstimation(config).save_pretrained(path)
        Tipsv2DptImageProcessor(size={"height": 448, "width": 448}).save_pretrained(path)
    return f"{NORMALS}={path}", tipsv2_dpt_gflops(config, 448)


# ---------------------------------------------------------------- semseg: SegFormer-B5 at 640


def segformer_gflops(config, size: int) -> float:
    """SegFormer-B5 at 640: 4 stages at 160², 80², 40², 20² (N tokens), C = 64, 128, 320, 512, depths 3, 6, 40, 3,
    attention keys/values from a map reduced r = 8, 4, 2, 1 times per side (M = N / r² tokens):
      patch embeds  7x7/4 3->64, then 3x3/2 C(i-1)->C(i)                             =   1.89 G MAC
      per block     q + out 2NC², reduction conv NC² (r > 1), kv 2MC², attention 2NMC,
                    Mix-FFN 8NC² + 3x3 depthwise 36NC
        stage 1  3 · 2.53 = 7.58;  stage 2  6 · 1.85 = 11.11;  stage 3  40 · 2.31 = 92.49;  stage 4  3 · 1.43 = 4.29
                                                                                     = 115.47
      decode head   Linear(C -> 768) per stage + 1x1 fuse 4·768 -> 768 at 160² + 768 -> 150 classifier
                    = 2.44 + 60.40 + 2.95                                           =  65.79
                                                                                     = 183.14 G MAC = 366.3 GFLOP
    (the SegFormer paper's "183.3 GFLOPs" for B5 at 640 counts multiply-adds)
    """
    macs, side, c_prev = 0, size, 3
    decoder = config.decoder_hidden_size
    head = 0
    for i in range(config.num_encoder_blocks):
        stride, k, c, r = config.strides[i], config.patch_sizes[i], config.hidden_sizes[i], config.sr_ratios[i]
        side = -(-side // stride)
        n = side * side
        m = (side // r) ** 2
        macs += conv(n, c_prev, c, k)
        block = 2 * n * c * c + (n * c * c if r > 1 else 0) + 2 * m * c * c + 2 * n * m * c
        mlp = c * config.mlp_ratios[i]
        block += 2 * n * c * mlp + n * mlp * 9
        macs += config.depths[i] * block
        head += n * c * decoder
        c_prev = c
    top = -(-size // config.strides[0])
    head += conv(top * top, decoder * config.num_encoder_blocks, decoder) + conv(top * top, decoder, config.num_labels)
    return 2 * (macs + head) / 1e9


def make_segformer_b5(path: Path) -> tuple[str, float]:
    """SegFormer-B5 ADE20K-640 (84.7M parameters, the semseg teacher's default) with random weights."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    path = Path(path)
    config = SegformerConfig(depths=[3, 6, 40, 3], hidden_sizes=[64, 128, 320, 512], num_attention_heads=[1, 2, 5, 8],
                             sr_ratios=[8, 4, 2, 1], decoder_hidden_size=768, num_labels=150)
    if not (path / "config.json").exists():
        SegformerForSemanticSegmentation(config).save_pretrained(path)
        SegformerImageProcessor(size={"height": 640, "width": 640}).save_pretrained(path)
    return f"{SEMSEG}={path}", segformer_gflops(config, 640)


CHECKPOINTS = {
    "depth-anything-v2-small": make_depth_anything_v2_small,
    "tipsv2-b14-dpt-normals": make_tipsv2_b14_dpt,
    "segformer-b5-ade-640": make_segformer_b5,
}


def check(root: Path) -> None:
    """Build each checkpoint under root and compare its GFLOPs with torch's FlopCounterMode on one image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from omnimill.labelers.base import TeacherSpec
    from omnimill.labelers.registry import build

    for name, make in CHECKPOINTS.items():
        spec, gflops = make(root / name)
        teacher = build(TeacherSpec(*spec.split("=", 1)), 384)
        teacher.load("cpu", "float32")
        teacher.model.set_attn_implementation("eager")  # FlopCounterMode does not see CPU SDPA kernels
        x = torch.zeros(1, 3, teacher.image_size, teacher.image_size)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            teacher.model(pixel_values=x)
        measured = counter.get_total_flops() / 1e9
        print(f"{name:26s} arithmetic {gflops:7.1f} GFLOP   FlopCounterMode {measured:7.1f} GFLOP "
              f"({gflops / measured - 1:+.1%})")


if __name__ == "__main__":
    check(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/checkpoints"))
