"""t5_embed: per-token T5 encoder embeddings of the corpus caption, with a mask (4M-21's `t5_caption`).

4M-21 (Bachmann et al., 2024, "4M-21: An Any-to-Any Vision Model for Tens of Tasks and Modalities") feeds
the T5-XXL encoder's last hidden states of a caption, at most 77 tokens, with a validity mask
(ml-4m: modality `t5_caption`, type `seq_emb`, max_tokens 77, stored as `emb` and `mask_valid`).
transformers' T5EncoderModel and the checkpoint's own tokenizer compute them: the tokenizer ends every
caption with `</s>`, truncation keeps it, and the encoder's output at each real token is stored as is
(T5's final layer norm applied, no pooling, no normalisation).

Stored per sample, L = 77, D = the encoder's d_model (4096 for google/t5-v1_1-xxl, 768 for -base):
- `embeddings` (L, D) float32: row j for token j; zero rows past `count`.
- `mask` (L,) bool: the real tokens (4M's `mask_valid`); all False where the sample has no caption.
- `count` () int32: real tokens (= mask.sum()), 0 without a caption.

Like `caption_embed`, text-only: the views are ignored, and the caption is the corpus's own (alt-text).
T5 overflows in float16 (its activations pass 65504), so a float16 request runs in bfloat16 on GPUs that
have it and float32 elsewhere.
"""

from __future__ import annotations

import numpy as np

from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.clip import load_tokenizer
from omnimill.labelers.hf import HFTeacher

MAX_TOKENS = 77  # 4M-21's t5_caption length (ml-4m modality_info max_tokens)


class T5Embed(HFTeacher):
    name = "t5_embed"
    renderer = "t5_embed"  # audit/render.py's RENDERERS entry; until it has one, tiles by field kind
    default_checkpoint = "google/t5-v1_1-xxl"  # 4M-21's T5-XXL (D = 4096, ml-4m's orig_emb_dim)
    model_types = ("t5",)
    example = "t5_embed=/models/t5-v1_1-xxl"
    title = "T5 encoder"

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        self.dim = self.hf_config.d_model
        self.tokenizer = load_tokenizer(self)

    def fields(self):
        n, d = MAX_TOKENS, self.dim
        return [
            Field("embeddings", (n, d), "float32", doc="T5 encoder output per caption token; zero rows past count",
                  kind="embedding"),
            Field("mask", (n,), "bool", doc="real tokens of the corpus caption (4M's mask_valid)", kind="scalar"),
            Field("count", (), "int32", doc="caption tokens, </s> included; 0 without a caption", kind="count"),
        ]

    def config(self):
        return {**super().config(), "dim": self.dim, "max_tokens": MAX_TOKENS}

    def load(self, device="auto", dtype="auto"):
        import torch
        from transformers import T5EncoderModel

        from omnimill.labelers.torch_device import pick_device

        if dtype == "float16":  # see the module docstring: T5 is not finite in float16
            cuda = pick_device(device).type == "cuda"
            dtype = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"
        self.load_model(T5EncoderModel, device, dtype)

    def embed_text(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (embeddings (n, L, D) float32 with zero padding rows, mask (n, L) bool)."""
        import torch

        if self.model is None:
            self.load()
        if not texts:
            return np.zeros((0, MAX_TOKENS, self.dim), np.float32), np.zeros((0, MAX_TOKENS), bool)
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=MAX_TOKENS,
                                return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            mask = tokens["attention_mask"].bool()
            # the encoder writes something at padding positions too; stored rows past count are zero
            embeddings = hidden.last_hidden_state.float() * mask.unsqueeze(-1)
            return embeddings.cpu().numpy(), mask.cpu().numpy()

    def __call__(self, batch: Batch):
        captions = [info.caption.strip() for info in batch.infos]
        has_text = np.array([bool(c) for c in captions])
        embeddings = np.zeros((len(batch), MAX_TOKENS, self.dim), np.float32)
        mask = np.zeros((len(batch), MAX_TOKENS), bool)
        if has_text.any():
            embeddings[has_text], mask[has_text] = self.embed_text([c for c in captions if c])
        return {"embeddings": embeddings, "mask": mask, "count": mask.sum(1).astype(np.int32)}
