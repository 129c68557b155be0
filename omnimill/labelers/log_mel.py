"""log_mel: the log-mel spectrogram of each of a clip's K audio segments: what the audio tokenizer reads.

Sees whole clips (`sees = "clips"`): the K segments of `Batch.clips["audio"]` (B, K, L), 16 kHz mono, the
same segments the store's `audio_spans` (N, K, 2) place in the clip. Computed with transformers'
`audio_utils` (`mel_filter_bank`, `spectrogram`), the filterbank and STFT the Whisper and CLAP feature
extractors use, so no hand-written DSP decides what a token means:

    a 25 ms periodic Hann window (400 samples, FFT 400: 201 frequency bins), hop `hop_ms` (default 10 ms),
    centred frames (reflect padding); power spectrum through `n_mels` (default 64) Slaney-normalised mel
    filters on the Slaney mel scale, 0 Hz to 8 kHz; mel power floored at FLOOR (1e-6) and taken as a
    natural log: values from log(1e-6) = -13.8 (silence) up, about +5 for a full-scale tone.

The centred STFT gives L // hop + 1 frames; the last one (centred on the segment's last sample, half
padding) is dropped, so F = L // hop frames, frame f centred at f x hop_ms into the segment: a 2 s segment
at 10 ms gives F = 200.

Stored per clip:
  mel        (K, M, F) float32  log-mel of each audio segment (kind "spectrogram"); FLOOR_LOG everywhere
                                when the clip has no audio
  has_audio  ()        bool     the clip has an audio stream (else `mel` is the floor)

Options (`--option log_mel.KEY=VALUE`): n_mels, hop_ms; audio_segments and audio_seconds must be the store's
(--audio-segments, --audio-seconds; defaults 3 and 2.0): a teacher declares its shapes before it sees a clip.
"""

from __future__ import annotations

import math

import numpy as np

from omnimill.corpus.media import AUDIO_RATE, DEFAULT_AUDIO_SECONDS, DEFAULT_AUDIO_SEGMENTS
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, Field, Teacher

N_MELS = 64
HOP_MS = 10.0
WINDOW = 400  # samples: 25 ms at 16 kHz, the speech front ends' usual window; also the FFT length
FLOOR = 1e-6  # mel power below this is silence; keeps log() finite
FLOOR_LOG = math.log(FLOOR)


def mel_filters(n_mels: int) -> np.ndarray:
    """(WINDOW // 2 + 1, n_mels) Slaney mel filters over 0..8 kHz, as transformers builds them."""
    from transformers.audio_utils import mel_filter_bank

    return mel_filter_bank(num_frequency_bins=WINDOW // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                           max_frequency=AUDIO_RATE / 2, sampling_rate=AUDIO_RATE, norm="slaney",
                           mel_scale="slaney")


def hop_samples(hop_ms: float) -> int:
    return int(round(hop_ms * AUDIO_RATE / 1000))


def frames_of(samples: int, hop: int) -> int:
    """F: frames kept for a segment of `samples` (the centred STFT's L // hop + 1, less the last)."""
    return samples // hop


def log_mel(waveform: np.ndarray, filters: np.ndarray, hop: int) -> np.ndarray:
    """(M, F) float32 natural-log mel power of a 16 kHz mono waveform (see the module doc)."""
    from transformers.audio_utils import spectrogram, window_function

    mel = spectrogram(np.asarray(waveform, np.float32), window_function(WINDOW, "hann"), frame_length=WINDOW,
                      hop_length=hop, fft_length=WINDOW, power=2.0, center=True, pad_mode="reflect",
                      mel_filters=filters, mel_floor=FLOOR, log_mel="log")
    return mel[:, :frames_of(len(waveform), hop)].astype(np.float32)


class LogMel(Teacher):
    name = "log_mel"
    sees = "clips"
    options = {"n_mels": (int, N_MELS), "hop_ms": (float, HOP_MS),
               "audio_segments": (int, DEFAULT_AUDIO_SEGMENTS), "audio_seconds": (float, DEFAULT_AUDIO_SECONDS)}

    def __init__(self, spec, view_size: int):
        super().__init__(spec, view_size)
        self.n_mels, self.hop = self.option("n_mels"), hop_samples(self.option("hop_ms"))
        self.segments = self.option("audio_segments")
        self.samples = int(round(self.option("audio_seconds") * AUDIO_RATE))
        if self.n_mels < 1 or self.hop < 1 or self.segments < 1 or self.samples < WINDOW:
            raise UserError(f"teacher log_mel: n_mels, hop_ms and audio_segments must be positive and "
                            f"audio_seconds at least {WINDOW / AUDIO_RATE}s; got n_mels={self.n_mels}, "
                            f"hop {self.hop} samples, audio_segments={self.segments}, "
                            f"audio_seconds={self.option('audio_seconds')}")
        self.filters = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.segments, self.n_mels, frames_of(self.samples, self.hop)

    def fields(self):
        k, m, f = self.shape
        return [
            Field("mel", (k, m, f), "float32", kind="spectrogram",
                  doc=f"natural-log mel power of each audio segment: {m} Slaney mel bands 0-8 kHz x {f} frames of "
                      f"{self.hop / AUDIO_RATE * 1000:g} ms; {FLOOR_LOG:.2f} (1e-6 floor) = silence or no audio"),
            Field("has_audio", (), "bool", doc="the clip has audio (else mel is the floor)", kind="scalar"),
        ]

    def config(self):
        return {**super().config(), "n_mels": self.n_mels, "hop_samples": self.hop, "window": WINDOW,
                "floor": FLOOR, "audio_segments": self.segments, "audio_seconds": self.option("audio_seconds")}

    def provenance(self):
        import transformers

        info = super().provenance()
        info["libraries"].update(transformers=transformers.__version__)
        return info

    def load(self, device="cpu", dtype="float32"):
        """The filterbank; there are no weights."""
        self.filters = mel_filters(self.n_mels)

    def __call__(self, batch: Batch):
        audio = np.asarray(batch.clips["audio"], np.float32)  # (B, K, L)
        if audio.shape[1:] != (self.segments, self.samples):
            raise UserError(f"teacher log_mel: the store's clips have {audio.shape[1]} audio segments of "
                            f"{audio.shape[2] / AUDIO_RATE:g}s; pass --option log_mel.audio_segments={audio.shape[1]} "
                            f"--option log_mel.audio_seconds={audio.shape[2] / AUDIO_RATE:g}")
        if self.filters is None:
            self.load()
        has_audio = np.array([bool(h) for h in batch.clips["has_audio"]], bool)
        mel = np.full((len(batch), *self.shape), FLOOR_LOG, np.float32)
        for i in np.flatnonzero(has_audio):
            for k in range(self.segments):
                mel[i, k] = log_mel(audio[i, k], self.filters, self.hop)
        return {"mel": mel, "has_audio": has_audio}
