"""clap: a clip's audio embedding and its caption's text embedding in CLAP's joint audio-text space.

CLAP (Wu et al., 2023, "Large-scale Contrastive Language-Audio Pretraining with Feature Fusion and
Keyword-to-Caption Augmentation", the LAION checkpoints laion/clap-htsat-unfused and -fused) via
transformers `ClapModel` and the checkpoint's own `ClapFeatureExtractor` and tokenizer. Sees whole clips.

The audio is the whole clip's waveform (16 kHz mono), resampled to the extractor's rate (48 kHz) and cut
into consecutive windows of the extractor's length (10 s), so that no window is cropped at random (the
extractor crops longer input at random); each window is embedded on its own (the extractor's batch-of-one
behaviour, which the fused checkpoints need to stay deterministic) and the clip's embedding is the mean of
its windows' L2-normalised embeddings, L2-normalised again. One embedding per clip, not per audio segment:
a teacher declares its fields before it sees a store, and the number of segments is a store setting.

Stored per clip:
- `embedding` (D,) float32: the L2-normalised audio embedding (D = projection_dim, 512 for LAION's);
  zeros where the clip has no audio.
- `has_audio` () bool: the clip has audio (else `embedding` is zeros).
- `text_embedding` (D,) float32 and `has_text` () bool: the text tower's L2-normalised embedding of the
  corpus caption, truncated to the text tower's context; zeros and False where the clip has no caption.

`embed_text(list[str])` gives text embeddings in the same space as `embedding` (an auditor's text queries:
cosine similarity = dot product); `embed_audio(list of 16 kHz waveforms)` the audio side.
"""

from __future__ import annotations

import numpy as np

from omnimill.labelers.audio_features import clip_audio, load_feature_extractor, resample, windows
from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.clip import load_tokenizer
from omnimill.labelers.hf import HFTeacher

ROBERTA_POSITION_OFFSET = 2  # CLAP's RoBERTa text tower numbers positions from padding_idx + 1


class CLAP(HFTeacher):
    name = "clap"
    sees = "clips"
    default_checkpoint = "laion/clap-htsat-unfused"
    model_types = ("clap",)
    example = "clap=/models/clap-htsat-unfused"
    title = "CLAP"
    options = {}

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        self.dim = self.hf_config.projection_dim
        self.extractor = load_feature_extractor(self)
        self.rate = self.extractor.sampling_rate
        self.window = self.extractor.nb_max_samples  # the longest input the extractor takes uncropped
        text = self.hf_config.text_config
        self.tokenizer = load_tokenizer(self)
        self.context = min(self.tokenizer.model_max_length, text.max_position_embeddings - ROBERTA_POSITION_OFFSET)

    def fields(self):
        d = self.dim
        return [
            Field("embedding", (d,), "float32", doc="L2-normalised audio embedding of the clip (mean of its 10 s "
                  "windows) in CLAP's audio-text space; 0 if no audio", kind="embedding"),
            Field("has_audio", (), "bool", doc="the clip has audio", kind="scalar"),
            Field("text_embedding", (d,), "float32", doc="L2-normalised embedding of the corpus caption; 0 if none",
                  kind="embedding"),
            Field("has_text", (), "bool", doc="the clip has a non-empty corpus caption", kind="scalar"),
        ]

    def config(self):
        return {**super().config(), "embed_dim": self.dim, "sampling_rate": self.rate,
                "window_seconds": self.window / self.rate, "truncation": self.extractor.truncation,
                "padding": self.extractor.padding, "text_context": self.context}

    def load(self, device="auto", dtype="auto"):
        from transformers import ClapModel

        self.load_model(ClapModel, device, dtype)

    def embed_audio(self, waveforms: list[np.ndarray]) -> np.ndarray:
        """Non-empty 16 kHz mono waveforms -> L2-normalised embeddings (n, D) float32 (mean over 10 s windows)."""
        import torch

        if self.model is None:
            self.load()
        if not waveforms:
            return np.zeros((0, self.dim), np.float32)
        pieces = [windows(resample(w, self.rate), self.window) for w in waveforms]
        inputs = [self.extractor(p, sampling_rate=self.rate, return_tensors="pt") for ps in pieces for p in ps]
        features = torch.cat([i["input_features"] for i in inputs]).to(self.device, self.dtype)
        is_longer = torch.cat([i["is_longer"] for i in inputs]).to(self.device)
        with torch.inference_mode():
            each = self.model.get_audio_features(input_features=features, is_longer=is_longer).pooler_output
        each = each.float().cpu()
        bounds = np.cumsum([0] + [len(ps) for ps in pieces])
        mean = torch.stack([each[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])])
        return torch.nn.functional.normalize(mean, dim=-1).numpy()

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> L2-normalised embeddings (n, D) float32, in the same space as `embedding`."""
        import torch

        if self.model is None:
            self.load()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.context,
                                return_tensors="pt")
        with torch.inference_mode():
            out = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                               attention_mask=tokens["attention_mask"].to(self.device))
        return out.pooler_output.float().cpu().numpy()

    def __call__(self, batch: Batch):
        if self.model is None:
            self.load()
        waveforms, has_audio = clip_audio(batch)
        embedding = np.zeros((len(batch), self.dim), np.float32)
        if has_audio.any():
            embedding[has_audio] = self.embed_audio([w for w, h in zip(waveforms, has_audio) if h])
        captions = [str(c).strip() for c in batch.clips["captions"]]
        has_text = np.array([bool(c) for c in captions], bool)
        text = np.zeros((len(batch), self.dim), np.float32)
        if has_text.any():
            text[has_text] = self.embed_text([c for c in captions if c])
        return {"embedding": embedding, "has_audio": has_audio, "text_embedding": text, "has_text": has_text}
