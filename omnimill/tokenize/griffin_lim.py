"""Hear a log-mel spectrogram: mel -> linear spectrogram -> Griffin-Lim phase -> waveform -> a WAV file.

What `tokenizer eval` uses to let a person listen to an audio tokenizer's reconstructions. Not a vocoder: the
phase is estimated (Griffin & Lim, 1984, with the momentum of Perraudin et al., 2013, "A fast Griffin-Lim
algorithm"), so even the original log-mel sounds phasey; compare a reconstruction with the original heard the
same way. Written on torch.stft/istft rather than librosa (`librosa.feature.inverse.mel_to_audio`), which
would bring numba and llvmlite for these few lines.

The mel filters are the log_mel teacher's (labelers/log_mel.py, transformers' Slaney filterbank); the linear
power is their pseudo-inverse applied to the mel power, clipped at 0 (librosa solves the same with NNLS).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch

from omnimill.corpus.media import AUDIO_RATE
from omnimill.labelers.log_mel import WINDOW, mel_filters

ITERATIONS = 64
MOMENTUM = 0.99


def mel_to_audio(log_mel: np.ndarray, hop: int, window: int = WINDOW, iterations: int = ITERATIONS,
                 seed: int = 0) -> np.ndarray:
    """(..., M, F) natural-log mel power (FFT of `window` samples, hop `hop`, 16 kHz) -> (..., F x hop) float32
    waveforms; a stack of spectrograms is done in one batch."""
    *lead, m, frames = log_mel.shape
    filters = torch.from_numpy(mel_filters(m)).float()  # (window // 2 + 1, M)
    mel = torch.from_numpy(np.exp(log_mel.reshape(-1, m, frames).astype(np.float64))).float()
    magnitude = (torch.linalg.pinv(filters.T) @ mel).clamp_min(0).sqrt()  # (b, bins, F)
    hann = torch.hann_window(window)  # periodic, as transformers' window_function
    length = frames * hop

    def stft(x):
        return torch.stft(x, window, hop, window=hann, center=True, return_complex=True)[..., :frames]

    def istft(s):  # the frame dropped after the last one (log_mel.py) comes back as a copy of it
        return torch.istft(torch.cat([s, s[..., -1:]], -1), window, hop, window=hann, center=True, length=length)

    generator = torch.Generator().manual_seed(seed)
    angles = torch.exp(2j * torch.pi * torch.rand(magnitude.shape, generator=generator))
    previous = torch.zeros_like(angles)
    for _ in range(iterations):
        rebuilt = stft(istft(magnitude * angles))
        accelerated = rebuilt - MOMENTUM / (1 + MOMENTUM) * previous
        previous = rebuilt
        angles = accelerated / accelerated.abs().clamp_min(1e-8)
    return istft(magnitude * angles).numpy().astype(np.float32).reshape(*lead, length)


def write_wav(path: str | Path, waveform: np.ndarray, rate: int = AUDIO_RATE) -> None:
    """16-bit mono PCM; samples past full scale are clipped."""
    pcm = (np.clip(waveform, -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
