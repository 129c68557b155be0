"""What the audio teachers (clap, audio_tags, audio_captioner) share: a clip's audio as they read it, the
checkpoint's own feature extractor, resampling, and cutting long audio into the windows a model takes.

Every audio teacher reads the whole span's waveform (`Batch.clips["waveforms"]`: mono float32 at the clip
kind's AUDIO_RATE, 16 kHz), not the K short segments: the models were trained on clips of 10 to 30 s, and a
clip's label should hear all of it. A clip without audio (`has_audio` False, or an empty waveform) is
"absent": each teacher stores its absent value (zeros, count 0, "") for it instead of failing.
"""

from __future__ import annotations

import warnings
from math import gcd

import numpy as np

from omnimill.corpus.media import AUDIO_RATE
from omnimill.labelers.base import Batch
from omnimill.labelers.hf import HFTeacher


def clip_audio(batch: Batch) -> tuple[list[np.ndarray], np.ndarray]:
    """The batch's waveforms (B 1-D float32 arrays at AUDIO_RATE) and which clips have audio (B,) bool."""
    waveforms = [np.asarray(w, np.float32) for w in batch.clips["waveforms"]]
    present = np.array([bool(h) and w.size > 0 for h, w in zip(batch.clips["has_audio"], waveforms)], bool)
    return waveforms, present


def load_feature_extractor(teacher: HFTeacher):
    """The feature extractor saved with the checkpoint (preprocessor_config.json), or the teacher's UserError.

    Its settings (mel bins, rate, normalisation) are part of what the model learnt: a default-built one would
    feed the model the wrong features without an error, so a checkpoint without it is refused."""
    from transformers import AutoFeatureExtractor

    if not (teacher.path / "preprocessor_config.json").exists():
        raise teacher.bad_checkpoint(ValueError("no preprocessor_config.json in the checkpoint; save the "
                                                "processor (or feature extractor) with save_pretrained"))
    try:
        with warnings.catch_warnings():
            # AST's own setting (128 mel bins over a 400-point FFT) leaves a filter empty; transformers warns
            # on every load, about the checkpoint as it was trained
            warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
            return AutoFeatureExtractor.from_pretrained(teacher.path)
    except Exception as e:
        raise teacher.bad_checkpoint(e) from None


def resample(waveform: np.ndarray, rate: int) -> np.ndarray:
    """A waveform at AUDIO_RATE -> the same sound at `rate` (polyphase filter: CLAP takes 48 kHz)."""
    if rate == AUDIO_RATE:
        return waveform
    from scipy.signal import resample_poly

    g = gcd(rate, AUDIO_RATE)
    return resample_poly(waveform, rate // g, AUDIO_RATE // g).astype(np.float32)


def windows(waveform: np.ndarray, length: int) -> list[np.ndarray]:
    """Consecutive pieces of at most `length` samples covering the waveform (the last may be shorter; the
    feature extractors pad it). Fixed cuts, never random crops: labelling a clip again gives the same labels."""
    return [waveform[a:a + length] for a in range(0, len(waveform), length)]
