"""vad: where people speak in a clip, from silero-vad (Silero Team, "Silero VAD", PyPI `silero-vad`).

Sees whole clips (`sees = "clips"`): each clip's waveform (Batch.clips["waveforms"], 16 kHz mono). The
weights are the TorchScript model shipped inside the `silero-vad` wheel (`silero_vad/data/silero_vad.jit`),
so the teacher needs no checkpoint and no network; torchaudio is not used (silero needs it only to read
files, and the engine hands it decoded audio). Silero rates each 512-sample window (32 ms) with a speech
probability; the B clips of a batch run through it together, window by window, each with its own state
(a clip's rates are the ones silero gives it alone). Silero's own `get_speech_timestamps_from_probs` turns
the rates into speech segments with the options below, as `get_speech_timestamps` would.

Stored per clip (clip seconds, like the clip's frame_times and audio_spans):
  share        ()            float32  fraction of the clip's audio inside speech segments (all of them)
  segments     (K, 2)        float32  (start, end) of each speech segment, K = MAX_SEGMENTS = 16, the first
                                      ones in time; rows past `count` are 0 (kind "scalar": numbers per item)
  count        ()            int32    real rows of `segments`
  audio_share  (A,)          float32  fraction of each of the clip's audio segments (audio_spans) in speech:
                                      the time alignment of the label with the audio the store keeps
A clip without audio (has_audio false, or an empty waveform) is not a failure: share 0, count 0.

Options (`--option vad.KEY=VALUE`): threshold, min_speech_ms, min_silence_ms, speech_pad_ms (silero's),
audio_segments (A: must be the store's --audio-segments, default 3).
"""

from __future__ import annotations

import warnings

import numpy as np

from omnimill.corpus.media import AUDIO_RATE, DEFAULT_AUDIO_SEGMENTS
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, Field, Teacher

MAX_SEGMENTS = 16  # a 10 s clip of speech has a few pauses; a 60 s one rarely more than 16 runs of speech
WINDOW = 512  # samples silero rates at once at 16 kHz (fixed by the model)
THRESHOLD = 0.5  # silero's default: probability above which a window is speech
MIN_SPEECH_MS = 250  # silero's defaults for turning rates into segments
MIN_SILENCE_MS = 100
SPEECH_PAD_MS = 30


class VAD(Teacher):
    name = "vad"
    sees = "clips"
    options = {"threshold": (float, THRESHOLD), "min_speech_ms": (int, MIN_SPEECH_MS),
               "min_silence_ms": (int, MIN_SILENCE_MS), "speech_pad_ms": (int, SPEECH_PAD_MS),
               "audio_segments": (int, DEFAULT_AUDIO_SEGMENTS)}

    def __init__(self, spec, view_size: int):
        super().__init__(spec, view_size)
        self.audio_segments = self.option("audio_segments")
        if self.audio_segments < 1:
            raise UserError(f"teacher vad: audio_segments must be >= 1, not {self.audio_segments}")
        self.model = None

    def fields(self):
        return [
            Field("share", (), "float32", doc="fraction of the clip's audio that is speech", kind="scalar"),
            Field("segments", (MAX_SEGMENTS, 2), "float32", doc="speech (start, end) in clip seconds; 0 = padding",
                  kind="scalar"),
            Field("count", (), "int32", doc="real rows of segments", kind="count"),
            Field("audio_share", (self.audio_segments,), "float32",
                  doc="fraction of each audio segment (audio_spans) that is speech", kind="scalar"),
        ]

    def config(self):
        return {**super().config(), "threshold": self.option("threshold"),
                "min_speech_ms": self.option("min_speech_ms"), "min_silence_ms": self.option("min_silence_ms"),
                "speech_pad_ms": self.option("speech_pad_ms"), "max_segments": MAX_SEGMENTS,
                "audio_segments": self.audio_segments}

    def provenance(self):
        from importlib.metadata import version

        import torch

        from omnimill.labelers import checkpoints

        info = super().provenance()
        info.update(checkpoints.fingerprint(weights_path()))
        info["libraries"].update(torch=torch.__version__, silero_vad=version("silero-vad"))
        return info

    def load(self, device="cpu", dtype="float32"):
        """The wheel's TorchScript model, on the CPU: it is 2 MB and rates 32 ms at a time, a GPU gains nothing."""
        self.model = load_model()

    def __call__(self, batch: Batch):
        clips = batch.clips
        n = len(batch)
        spans = np.asarray(clips["audio_spans"], np.float64)
        if spans.shape[1] != self.audio_segments:
            raise UserError(f"teacher vad: the store has {spans.shape[1]} audio segments per clip; "
                            f"pass --option vad.audio_segments={spans.shape[1]}")
        out = {"share": np.zeros(n, np.float32), "segments": np.zeros((n, MAX_SEGMENTS, 2), np.float32),
               "count": np.zeros(n, np.int32), "audio_share": np.zeros((n, self.audio_segments), np.float32)}
        heard = [i for i in range(n) if clips["has_audio"][i] and clips["waveforms"][i].size]
        if not heard:
            return out
        if self.model is None:
            self.load()
        waves = [np.asarray(clips["waveforms"][i], np.float32) for i in heard]
        for i, wave, probs in zip(heard, waves, speech_probs(self.model, waves)):
            found = self.segments(probs, wave.size)
            seconds = wave.size / AUDIO_RATE
            out["share"][i] = sum(b - a for a, b in found) / seconds
            kept = np.array(found[:MAX_SEGMENTS], np.float32).reshape(-1, 2)
            out["segments"][i, :len(kept)] = kept
            out["count"][i] = len(kept)
            out["audio_share"][i] = [overlap(found, a, b) for a, b in spans[i]]
        return out

    def segments(self, probs: np.ndarray, samples: int) -> list[tuple[float, float]]:
        return speech_segments(probs, samples, self.option("threshold"), self.option("min_speech_ms"),
                               self.option("min_silence_ms"), self.option("speech_pad_ms"))


def speech_segments(probs: np.ndarray, samples: int, threshold: float = THRESHOLD,
                    min_speech_ms: int = MIN_SPEECH_MS, min_silence_ms: int = MIN_SILENCE_MS,
                    speech_pad_ms: int = SPEECH_PAD_MS) -> list[tuple[float, float]]:
    """Speech (start, end) in clip seconds from one clip's window rates, by silero's own rule."""
    from silero_vad import get_speech_timestamps_from_probs

    found = get_speech_timestamps_from_probs(
        probs.tolist(), sampling_rate=AUDIO_RATE, threshold=threshold, min_speech_duration_ms=min_speech_ms,
        min_silence_duration_ms=min_silence_ms, speech_pad_ms=speech_pad_ms, audio_length_samples=samples)
    return [(s["start"] / AUDIO_RATE, s["end"] / AUDIO_RATE) for s in found]


def speaks(model, waves: list[np.ndarray]) -> list[bool]:
    """Whether silero finds any speech in each waveform, with its default settings (the asr teacher's gate)."""
    return [bool(speech_segments(probs, w.size)) for w, probs in zip(waves, speech_probs(model, waves))]


def weights_path():
    """The TorchScript weights inside the installed silero-vad wheel."""
    from importlib.resources import files
    from pathlib import Path

    return Path(str(files("silero_vad.data").joinpath("silero_vad.jit")))


def load_model():
    """silero-vad's model from its wheel, leaving the process's torch thread count as it was (importing
    silero_vad sets it to 1, which would slow every other teacher in the worker)."""
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still the shipped format
            return load_silero_vad(onnx=False)
    finally:
        torch.set_num_threads(threads)


def speech_probs(model, waves: list[np.ndarray]) -> list[np.ndarray]:
    """Silero's speech probability of every 512-sample window of each waveform (the last window zero-padded,
    as silero pads it), all waveforms stepped through the model together, each row keeping its own state.
    On one torch thread, as silero itself sets: its steps are too small to share, and with the worker's threads
    the same batch took 45x longer on a 2-core machine (3.5 s instead of 0.08 s per 10 s clip)."""
    import torch

    windows = [-(-w.size // WINDOW) for w in waves]
    x = np.zeros((len(waves), max(windows) * WINDOW), np.float32)  # zeros after a clip end: rates ignored
    for row, w in enumerate(waves):
        x[row, :w.size] = w
    x = torch.from_numpy(x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            model.reset_states()
            rates = torch.cat([model(x[:, s:s + WINDOW], AUDIO_RATE) for s in range(0, x.shape[1], WINDOW)], dim=1)
    finally:
        torch.set_num_threads(threads)
    rates = rates.float().numpy()
    return [rates[row, :n] for row, n in enumerate(windows)]


def overlap(segments: list[tuple[float, float]], a: float, b: float) -> float:
    """Fraction of [a, b] covered by the (disjoint) segments; 0 for an empty span."""
    if b <= a:
        return 0.0
    return sum(max(0.0, min(b, e) - max(a, s)) for s, e in segments) / (b - a)
