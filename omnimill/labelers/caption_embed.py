"""caption_embed, captioner_embed: sentence embeddings (all-MiniLM-L6-v2 style) of the alt-text, of generated captions.

Sentence-BERT (Reimers & Gurevych, 2019, "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks"):
a text encoder (transformers AutoModel), mean pooling over the non-padding tokens (or the CLS token, when
the checkpoint's `1_Pooling/config.json` says so), L2 normalisation; cosine similarity = dot product.
all-MiniLM-L6-v2: 6 layers, D = 384, texts truncated to 256 tokens (`sentence_bert_config.json`).

Two teachers, because the two sources have different lifetimes:
- `caption_embed` embeds the corpus's own caption (alt-text): `embedding` (D,) float32, `has_text` () bool
  (zeros and False where the sample has none). It needs nothing else and never waits for a captioner.
- `captioner_embed` embeds the `captioner` teacher's captions: `embeddings` (8, D) float32 (row j for
  captions[j], 8 = caption.MAX_CAPTIONS, zero rows past `count`) and `count` () int32. It `requires`
  captioner: the engine runs it after the captioner (in the same run, or from the store), and a sample
  the captioner failed on fails here too, since it has nothing to embed.
One teacher doing both would make every alt-text embedding wait for (and fail with) the captioner.

Text-only: the views are ignored. Plain transformers rather than sentence-transformers: the same
loading path as every other teacher (config check, sha256, dtype), and the tests check that the
results equal sentence-transformers' own `encode`.
"""

from __future__ import annotations

import json

import numpy as np

from omnimill.errors import UserError
from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.caption import MAX_CAPTIONS
from omnimill.labelers.clip import load_tokenizer
from omnimill.labelers.hf import HFTeacher

MAX_TOKENS = 256  # when the checkpoint does not say (sentence_bert_config.json): all-MiniLM-L6-v2's limit


class CaptionEmbed(HFTeacher):
    name = "caption_embed"
    renderer = "caption_embed"
    default_checkpoint = "sentence-transformers/all-MiniLM-L6-v2"
    model_types = ("bert", "mpnet", "roberta", "xlm-roberta", "distilbert", "modernbert")
    example = "caption_embed=/models/all-MiniLM-L6-v2"
    title = "sentence-embedding (BERT-family text encoder)"

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        self.dim = self.hf_config.hidden_size
        self.pooling = self.read_pooling()
        self.max_tokens = self.read_max_tokens()
        self.tokenizer = load_tokenizer(self)

    def read_pooling(self) -> str:
        """"mean" or "cls", from sentence-transformers' pooling config; mean when there is none."""
        config = self.path / "1_Pooling" / "config.json" if self.path.is_dir() else None
        if config is None or not config.exists():
            return "mean"
        modes = [k.removeprefix("pooling_mode_") for k, v in json.loads(config.read_text()).items()
                 if k.startswith("pooling_mode_") and v]
        if modes == ["mean_tokens"]:
            return "mean"
        if modes == ["cls_token"]:
            return "cls"
        raise UserError(f"teacher {self.name}: {config} asks for pooling {modes}; only mean or CLS pooling "
                        "is supported")

    def read_max_tokens(self) -> int:
        config = self.path / "sentence_bert_config.json" if self.path.is_dir() else None
        if config is not None and config.exists():
            return int(json.loads(config.read_text()).get("max_seq_length", MAX_TOKENS))
        return min(MAX_TOKENS, self.hf_config.max_position_embeddings)

    def fields(self):
        return [
            Field("embedding", (self.dim,), "float32", doc="L2-normalised sentence embedding of the corpus caption",
                  kind="embedding"),
            Field("has_text", (), "bool", doc="the sample has a non-empty corpus caption; embedding is 0 if not",
                  kind="scalar"),
        ]

    def config(self):
        return {**super().config(), "dim": self.dim, "pooling": self.pooling, "max_tokens": self.max_tokens}

    def load(self, device="auto", dtype="auto"):
        from transformers import AutoModel

        self.load_model(AutoModel, device, dtype)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> L2-normalised sentence embeddings (n, D) float32."""
        import torch

        if self.model is None:
            self.load()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                                return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**tokens).last_hidden_state.float()  # (n, tokens, D)
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:  # mean over real tokens: padding must not dilute short captions
                mask = tokens["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()

    def __call__(self, batch: Batch):
        captions = [info.caption.strip() for info in batch.infos]
        has_text = np.array([bool(c) for c in captions])
        embedding = np.zeros((len(batch), self.dim), np.float32)
        if has_text.any():
            embedding[has_text] = self.embed_text([c for c in captions if c])
        return {"embedding": embedding, "has_text": has_text}


class CaptionerEmbed(CaptionEmbed):
    name = "captioner_embed"
    renderer = "captioner_embed"
    requires = ("captioner",)
    example = "captioner_embed=/models/all-MiniLM-L6-v2"

    def fields(self):
        return [
            Field("embeddings", (MAX_CAPTIONS, self.dim), "float32",
                  doc="L2-normalised sentence embedding of captioner/captions[j]; zero rows past count",
                  kind="embedding"),
            Field("count", (), "int32", doc="captions embedded (= captioner/count)", kind="count"),
        ]

    def __call__(self, batch: Batch):
        upstream = batch.upstream["captioner"]
        captions, count = upstream["captions"], np.asarray(upstream["count"], np.int32)
        embeddings = np.zeros((len(batch), MAX_CAPTIONS, self.dim), np.float32)
        rows = [(i, j) for i in range(len(batch)) for j in range(count[i])]
        if rows:
            vectors = self.embed_text([str(captions[i, j]) for i, j in rows])
            embeddings[tuple(zip(*rows))] = vectors
        return {"embeddings": embeddings, "count": count}
