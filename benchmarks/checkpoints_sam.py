"""Real-size SAM checkpoints with random weights, for benchmarks/teachers.py.

This machine cannot download the official files, and the encoder's and decoder's speed does not depend on
the weights' values. What does: how many masks pass the filters. Random weights predict low IoUs, so at the
default thresholds almost nothing survives and painting costs nothing, where real SAM keeps tens to hundreds
of masks per image. Pass relaxed thresholds (options pred_iou_thresh=0, stability_score_thresh=0) to time
the worst case.

CHECKPOINTS maps a name to make(path) -> (spec for --teacher, GFLOPs per image at the teacher's defaults).
`path` is the .pth file to write, or a folder to write it into; an existing file is reused.
"""

from __future__ import annotations

from pathlib import Path

SAM = "omnimill.labelers.sam:SAM"  # works before and after the registry knows "sam"; stored as "sam" either way


def gflops(arch: dict, points_per_side: int = 32) -> float:
    """GFLOPs (2 per multiply-add) of one image: encoder + points_per_side² prompts through the decoder.

    Matmuls and convolutions only (norms, softmax, GELU and the mask filters are memory-bound extras).
    For SAM ViT-B at 1024², 32² prompts (N = 64² = 4096 tokens, D = 768, 12 blocks, 8 of them windowed):
      encoder  patch embed      N·D·3·16²                      =   2.42 G MAC
               12 MLPs          12 · N·8D²                     = 231.9
               qkv + proj       4D² per token, 4 global blocks on N, 8 windowed blocks on the windows'
                                padded Np = 70² = 4900 tokens: 4D²·(4N + 8Np)  = 131.1
               attention        global 4 · 2N²D; windowed 8 · 2·Np·14²·D        = 114.9
               rel-pos          global 4 · 2N·64·D; windowed 8 · 2·Np·14·D      =   2.45
               neck             N·D·256 + N·9·256²             =   3.22
                                                                 = 486.0 G MAC = 972.1 GFLOP
      decoder, per prompt (E = 256, cross-attention at E/2 = 128, T = 7 tokens: iou, 4 masks, point, pad)
               2 blocks: image k,v for token->image 2N·E·E/2, image q,out for image->token 2N·E·E/2,
                         attention 4·T·N·E/2, token self-attention and MLP     = 2 · 561 M
               final token->image attention                    = 276 M
               upscaling 64² → 128² → 256²: N·E·E/4·4 + 4N·E/4·E/8·4           = 403 M
               masks 4 · E/8 · 256² + hypernetwork and IoU MLPs + point PE     =   9 M
                                                                 = 1.81 G MAC = 3.62 GFLOP
      per image: 972.1 + 1024 · 3.62 = 4682 GFLOP; the decoder is 79% of it at 32² prompts.
    """
    n_side = arch["image_size"] // arch["patch_size"]
    n, d, depth = n_side * n_side, arch["embed_dim"], arch["depth"]
    w, glob = arch["window_size"], len(arch["global_attn_indexes"])
    windowed = depth - glob
    padded = -(-n_side // w) * w if w else n_side  # windows pad the grid up to a multiple of the window
    n_pad = padded * padded
    c = arch["out_chans"]
    macs = n * d * 3 * arch["patch_size"] ** 2  # patch embedding
    macs += depth * n * 2 * d * arch["mlp_dim"]  # MLPs run on the unpadded grid
    macs += 4 * d * d * (glob * n + windowed * n_pad)  # qkv + proj run on the (padded) windows
    macs += glob * (2 * n * n * d + 2 * n * n_side * d)  # global attention + decomposed rel-pos
    macs += windowed * (2 * n_pad * w * w * d + 2 * n_pad * w * d)  # window attention + rel-pos
    macs += n * d * c + n * 9 * c * c  # neck: 1x1 then 3x3 convolutions

    e, ei, mlp = arch["prompt_dim"], arch["prompt_dim"] // arch["attention_downsample_rate"], arch["decoder_mlp_dim"]
    k = arch["multimask_outputs"] + 1  # mask tokens
    t = 1 + k + 2  # tokens: IoU, masks, the point and the padding point
    cross = 2 * n * e * ei + 2 * t * e * ei + 2 * t * n * ei  # image k,v (or q,out) + token projections + attention
    block = 4 * t * e * e + 2 * t * t * e + 2 * cross + 2 * t * e * mlp  # self-attn, 2 cross-attns, token MLP
    prompt = arch["decoder_depth"] * block + cross  # + the final token->image attention
    prompt += 2 * 2 * (e // 2)  # prompt encoder: random Fourier features of the 2 points
    prompt += n * e * (e // 4) * 4 + 4 * n * (e // 4) * (e // 8) * 4  # two 2x2 transposed convolutions
    prompt += k * (e // 8) * 16 * n  # hypernetwork masks: (k, E/8) @ (E/8, 4g x 4g)
    prompt += k * (2 * e * e + e * (e // 8))  # hypernetwork MLPs
    h = arch["iou_head_hidden_dim"]
    prompt += e * h + (arch["iou_head_depth"] - 2) * h * h + h * k  # IoU head
    return 2 * (macs + points_per_side ** 2 * prompt) / 1e9


def make_vit_b(path: Path) -> tuple[str, float]:
    """SAM ViT-B (the teacher's default model: 91M parameters, 375 MB) with random weights."""
    import torch
    from segment_anything import build_sam_vit_b

    from omnimill.labelers.sam import infer_architecture

    path = Path(path)
    file = path if path.suffix == ".pth" else path / "sam_vit_b_random.pth"
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        tmp = file.with_suffix(".tmp")
        torch.save(build_sam_vit_b().state_dict(), tmp)  # the official file's format: a plain state dict
        tmp.rename(file)  # a half-written file never looks finished
    arch = infer_architecture(torch.load(file, map_location="cpu", mmap=True, weights_only=True))
    return f"{SAM}={file}", gflops(arch)


CHECKPOINTS = {"sam-vit-b": make_vit_b}
