"""clip: CLIP / SigLIP image embedding, patch grid, and the text embedding of the corpus's caption.

CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language Supervision") and
SigLIP (Zhai et al., 2023, "Sigmoid Loss for Language Image Pre-Training") via transformers `CLIPModel` /
`SiglipModel`. The canonical view is resized to the checkpoint's image size (224 for ViT-B/16) and
normalised with its mean/std. Stored per sample:

- `embedding` (P,) float32: the image embedding in the joint image-text space, L2-normalised
  (CLIP: post-layernormed CLS token x visual projection; SigLIP: the attention-pooling head). P = 512 for
  ViT-B/16.
- `patches` (g, g, D) float16: the vision tower's last encoder layer, patch tokens only (CLIP's CLS
  dropped), D = vision width (768 for ViT-B/16), g = image_size / patch = 224 / 16 = 14. CLIP: before its
  post-layernorm (which HF applies to the CLS token only) and without projection; SigLIP: after its
  post-layernorm, which covers every token. Not in the joint space: these are features, like DINOv2's.
- `text_embedding` (P,) float32 and `has_text` () bool: the text tower's L2-normalised embedding of the
  corpus caption (alt-text), truncated to the text tower's context (77 tokens for CLIP); zeros and
  False where a sample has no caption.

`embed_text(list[str])` gives text embeddings in the same space as `embedding` (the auditor's text
queries): cosine similarity = dot product.
"""

from __future__ import annotations

import numpy as np

from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.hf import HFTeacher

# A checkpoint directory needs one of these to turn text into ids (or ids into text)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
# Used when a checkpoint has no preprocessor_config.json: what each family was trained with.
NORMALISATION = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class CLIP(HFTeacher):
    name = "clip"
    renderer = "clip"
    default_checkpoint = "openai/clip-vit-base-patch16"
    model_types = ("clip", "siglip")
    example = "clip=/models/clip-vit-base-patch16"
    title = "CLIP or SigLIP"

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        vision, text = self.hf_config.vision_config, self.hf_config.text_config
        self.image_size = vision.image_size
        self.grid = vision.image_size // vision.patch_size
        self.width = vision.hidden_size
        # CLIP projects both towers to projection_dim; SigLIP's towers end in heads of the text's projection_size
        projection = getattr(self.hf_config, "projection_dim", None)
        self.dim = projection or getattr(text, "projection_size", text.hidden_size)
        self.context = text.max_position_embeddings  # 77 for CLIP, 64 for SigLIP
        self.tokenizer = load_tokenizer(self)

    def fields(self):
        p, g, d = self.dim, self.grid, self.width
        return [
            Field("embedding", (p,), "float32", doc="L2-normalised image embedding in the joint image-text space",
                  kind="embedding"),
            Field("patches", (g, g, d), "float16", dense=True,
                  doc=f"vision tower's last-layer patch tokens on a {g}x{g} grid over the view (not projected)", kind="embedding_grid"),
            Field("text_embedding", (p,), "float32", doc="L2-normalised embedding of the corpus caption; 0 if none",
                  kind="embedding"),
            Field("has_text", (), "bool", doc="the sample has a non-empty corpus caption", kind="scalar"),
        ]

    def config(self):
        return {**super().config(), "image_size": self.image_size, "patch_size": self.image_size // self.grid,
                "embed_dim": self.dim, "vision_width": self.width, "text_context": self.context}

    def normalisation(self):
        if self.path.is_dir() and (self.path / "preprocessor_config.json").exists():
            return super().normalisation()
        return NORMALISATION[self.hf_config.model_type]

    def load(self, device="auto", dtype="auto"):
        from transformers import AutoModel

        self.load_model(AutoModel, device, dtype)

    def embed_images(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8 views -> L2-normalised embeddings (B, P) float32, patches (B, g, g, D) float16."""
        import torch

        with torch.inference_mode():
            vision = self.model.vision_model(pixel_values=self.pixels(views, self.image_size))
            pooled = vision.pooler_output
            if hasattr(self.model, "visual_projection"):  # CLIP; SigLIP's head already gives the embedding
                pooled = self.model.visual_projection(pooled)
            embedding = torch.nn.functional.normalize(pooled.float(), dim=-1)
            # (b, [CLS] + g*g, d): patches are the last g*g tokens for both families
            patches = vision.last_hidden_state[:, -self.grid * self.grid:]
            patches = patches.reshape(len(views), self.grid, self.grid, -1).to(torch.float16)
            return embedding.cpu().numpy(), patches.cpu().numpy()

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> L2-normalised embeddings (n, P) float32, in the same space as `embedding`."""
        import torch

        if self.model is None:
            self.load()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # SigLIP was trained on captions padded to its full context, without a mask; CLIP masks the padding
        # and pools at the end-of-text token
        siglip = self.hf_config.model_type == "siglip"
        tokens = self.tokenizer(list(texts), padding="max_length" if siglip else True, truncation=True,
                                max_length=self.context, return_tensors="pt")
        inputs = {"input_ids": tokens["input_ids"].to(self.device)}
        if not siglip:
            inputs["attention_mask"] = tokens["attention_mask"].to(self.device)
        with torch.inference_mode():
            pooled = self.model.text_model(**inputs).pooler_output
            if hasattr(self.model, "text_projection"):
                pooled = self.model.text_projection(pooled)
            return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()

    def __call__(self, batch: Batch):
        if self.model is None:
            self.load()
        embedding, patches = self.embed_images(batch.views)
        captions = [info.caption.strip() for info in batch.infos]
        has_text = np.array([bool(c) for c in captions])
        text = np.zeros((len(batch), self.dim), np.float32)
        if has_text.any():
            text[has_text] = self.embed_text([c for c in captions if c])
        return {"embedding": embedding, "patches": patches, "text_embedding": text, "has_text": has_text}


def load_tokenizer(teacher: HFTeacher):
    """The tokenizer saved with the checkpoint (the processor's), or the teacher's UserError.

    transformers 5 builds an empty tokenizer from config.json alone, which maps every word to <unk>:
    a weights-only directory must be refused, not labelled with garbage.
    """
    from transformers import AutoTokenizer

    if not any((teacher.path / name).exists() for name in TOKENIZER_FILES):
        raise teacher.bad_checkpoint(ValueError("no tokenizer files in the checkpoint; save the processor "
                                                "(or tokenizer) with save_pretrained next to the model"))
    try:
        return AutoTokenizer.from_pretrained(teacher.path)
    except Exception as e:
        raise teacher.bad_checkpoint(e) from None
