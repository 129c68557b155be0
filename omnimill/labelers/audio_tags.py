"""audio_tags: the top-k AudioSet labels of a clip's audio, from an Audio Spectrogram Transformer.

AST (Gong et al., 2021, "AST: Audio Spectrogram Transformer"; MIT/ast-finetuned-audioset-10-10-0.4593)
via transformers `ASTForAudioClassification` and the checkpoint's own `ASTFeatureExtractor` (Kaldi-style
128-bin log-mel filterbanks, 10 ms frames, normalised with the checkpoint's mean/std). Sees whole clips.

The clip's waveform (16 kHz mono, the extractor's rate) is cut into consecutive windows of the extractor's
`max_length` frames (1024 frames = 10.24 s); each window is classified and a class's score for the clip is
its highest score over the windows (a sound anywhere in the clip is in the clip). Scores are sigmoids of
the logits (AudioSet is multi-label: several sounds at once), or a softmax where the checkpoint's config
says `problem_type: single_label_classification`.

Stored per clip, k = option `top_k` (default 5, at most the number of classes):
- `ids` (k,) int32: class ids, best first; names in the teacher's provenance `config.class_names` (the
  checkpoint's id2label, in id order);
- `scores` (k,) float32: their scores, 0..1;
- `count` () int32: k, or 0 for a clip without audio (then `ids` and `scores` are zeros).
"""

from __future__ import annotations

import numpy as np

from omnimill.errors import UserError
from omnimill.labelers.audio_features import clip_audio, load_feature_extractor, windows
from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.hf import HFTeacher

TOP_K = 5
FRAMES_PER_SECOND = 100  # the extractor's Kaldi filterbank: one frame every 10 ms


class AudioTags(HFTeacher):
    name = "audio_tags"
    sees = "clips"
    default_checkpoint = "MIT/ast-finetuned-audioset-10-10-0.4593"
    model_types = ("audio-spectrogram-transformer",)
    example = "audio_tags=/models/ast-finetuned-audioset-10-10-0.4593"
    title = "Audio Spectrogram Transformer (AST)"
    options = {"top_k": (int, TOP_K)}

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        labels = self.hf_config.id2label
        self.class_names = [labels[i] for i in range(len(labels))]
        self.top_k = self.option("top_k")
        if not 1 <= self.top_k <= len(self.class_names):
            raise UserError(f"teacher audio_tags: top_k must be 1..{len(self.class_names)} (the checkpoint's "
                            f"classes), not {self.top_k}")
        self.extractor = load_feature_extractor(self)
        self.rate = self.extractor.sampling_rate
        self.window = self.extractor.max_length * self.rate // FRAMES_PER_SECOND  # samples the model hears at once
        self.activation = "softmax" if self.hf_config.problem_type == "single_label_classification" else "sigmoid"

    def fields(self):
        k = self.top_k
        return [
            Field("ids", (k,), "int32", doc="AudioSet class ids, best first; names in config.class_names",
                  kind="classes"),
            Field("scores", (k,), "float32", doc=f"{self.activation} score of each class, highest over the clip's windows",
                  kind="scores"),
            Field("count", (), "int32", doc="real rows of ids/scores: top_k, 0 for a clip without audio", kind="count"),
        ]

    def config(self):
        return {**super().config(), "top_k": self.top_k, "class_names": self.class_names,
                "sampling_rate": self.rate, "window_seconds": self.window / self.rate, "activation": self.activation}

    def load(self, device="auto", dtype="auto"):
        from transformers import ASTForAudioClassification

        self.load_model(ASTForAudioClassification, device, dtype)

    def class_scores(self, waveforms: list[np.ndarray]) -> np.ndarray:
        """Non-empty 16 kHz waveforms -> every class's score for each (n, C) float32, max over its windows.
        All windows of all clips go through the model in one batch."""
        import torch

        pieces = [windows(w, self.window) for w in waveforms]
        inputs = self.extractor([p for ps in pieces for p in ps], sampling_rate=self.rate, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(input_values=inputs["input_values"].to(self.device, self.dtype)).logits.float()
        each = (logits.softmax(-1) if self.activation == "softmax" else logits.sigmoid()).cpu().numpy()
        bounds = np.cumsum([0] + [len(ps) for ps in pieces])
        return np.stack([each[a:b].max(0) for a, b in zip(bounds[:-1], bounds[1:])])

    def __call__(self, batch: Batch):
        if self.model is None:
            self.load()
        waveforms, has_audio = clip_audio(batch)
        n, k = len(batch), self.top_k
        ids, scores = np.zeros((n, k), np.int32), np.zeros((n, k), np.float32)
        if has_audio.any():
            every = self.class_scores([w for w, h in zip(waveforms, has_audio) if h])
            best = np.argsort(-every, axis=1, kind="stable")[:, :k]
            ids[has_audio], scores[has_audio] = best, np.take_along_axis(every, best, axis=1)
        return {"ids": ids, "scores": scores, "count": np.where(has_audio, k, 0).astype(np.int32)}
