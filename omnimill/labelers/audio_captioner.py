"""audio_captioner: a caption of what a clip sounds like, from a Whisper audio-captioning checkpoint.

The supported family: Whisper fine-tuned for audio captioning (Kadlčík et al., 2023, "A Whisper transformer
for audio captioning trained with synthetic captions and transfer learning";
MU-NLPC/whisper-{tiny,small,large-v2}-audio-captioning). Their config says
`model_type: whisper` and `architectures: [WhisperForAudioCaptioning]`, a class of the authors' repository
that only changes `generate`: its weights are exactly `WhisperForConditionalGeneration`'s, so transformers
loads them into that class, and this teacher does the authors' decoding itself: the decoder is started
with Whisper's task tokens `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>` followed by a caption
*style* prefix (option `style`; the checkpoints know "clotho > caption: ", "audiocaps > caption: " and
"audioset > keywords: "), then generates. The style prefix is not part of the stored caption. The
checkpoint's own `suppress_tokens` / `begin_suppress_tokens` (generation_config.json) are honoured.

Refused, in one line: another model type; a speech-recognition Whisper (`architectures:
[WhisperForConditionalGeneration]`: it would transcribe speech, not caption sound; that is the asr
teacher); and any checkpoint that asks for its own code (`auto_map`): omnimill never runs a checkpoint's code.

The clip's waveform (16 kHz mono) is cut into consecutive 30 s windows (Whisper's input; the feature
extractor pads a shorter one); each window is captioned and a clip's caption is its windows' captions
joined by a space (one window for clips up to 30 s, which is most). Decoding is beam search with
`num_beams` (default 1: greedy, as the authors' example), at most `max_new_tokens` tokens.

Stored per clip: `caption` () str, "" for a clip without audio.
"""

from __future__ import annotations

import json

import numpy as np

from omnimill.errors import UserError
from omnimill.labelers.audio_features import clip_audio, load_feature_extractor, windows
from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.clip import load_tokenizer
from omnimill.labelers.hf import HFTeacher

STYLE = "clotho > caption: "  # the authors' default: one-sentence Clotho-style captions
TASK_TOKENS = ("<|en|>", "<|transcribe|>", "<|notimestamps|>")  # after <|startoftranscript|>, as in training
NUM_BEAMS = 1
MAX_NEW_TOKENS = 60  # Clotho captions are 8 to 20 words


class AudioCaptioner(HFTeacher):
    name = "audio_captioner"
    sees = "clips"
    default_checkpoint = "MU-NLPC/whisper-small-audio-captioning"
    model_types = ("whisper",)
    example = "audio_captioner=/models/whisper-small-audio-captioning"
    title = "Whisper audio-captioning (MU-NLPC/whisper-*-audio-captioning)"
    options = {"style": (str, STYLE), "num_beams": (int, NUM_BEAMS), "max_new_tokens": (int, MAX_NEW_TOKENS)}

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        self._refuse_other_whispers()
        self.style = self.option("style")
        self.num_beams = self.option("num_beams")
        self.max_new_tokens = self.option("max_new_tokens")
        self.extractor = load_feature_extractor(self)
        self.rate = self.extractor.sampling_rate
        self.window = self.extractor.n_samples  # 30 s: Whisper's encoder hears that much at once
        self.tokenizer = load_tokenizer(self)
        self.prompt = self._prompt()
        room = self.hf_config.max_target_positions - len(self.prompt)
        if not 1 <= self.max_new_tokens <= room:
            raise UserError(f"teacher audio_captioner: max_new_tokens must be 1..{room} (the decoder's "
                            f"{self.hf_config.max_target_positions} positions less the prompt), not {self.max_new_tokens}")
        if self.num_beams < 1:
            raise UserError(f"teacher audio_captioner: num_beams must be at least 1, not {self.num_beams}")

    def _refuse_other_whispers(self) -> None:
        if getattr(self.hf_config, "auto_map", None):
            raise UserError(f"teacher audio_captioner: {self.path} asks for its own code (auto_map in config.json); "
                            "omnimill never runs a checkpoint's code")
        architectures = self.hf_config.architectures or []
        if architectures and "WhisperForAudioCaptioning" not in architectures:
            raise UserError(f"teacher audio_captioner: {self.path} is a {'/'.join(architectures)}, a speech-recognition "
                            "Whisper (use the asr teacher); pass an audio-captioning one, e.g. "
                            "MU-NLPC/whisper-small-audio-captioning")

    def _prompt(self) -> list[int]:
        """Decoder start: <|startoftranscript|>, the task tokens, then the style prefix's tokens."""
        ids = self.tokenizer.convert_tokens_to_ids(list(TASK_TOKENS))
        if self.tokenizer.unk_token_id in ids or None in ids:
            raise self.bad_checkpoint(ValueError(f"its tokenizer lacks Whisper's task tokens {' '.join(TASK_TOKENS)}"))
        style = self.tokenizer(self.style, add_special_tokens=False)["input_ids"]
        return [self.hf_config.decoder_start_token_id, *ids, *style]

    def fields(self):
        return [Field("caption", (), "str", doc=f"caption of the clip's audio (style {self.style.strip()!r}); '' if "
                      "no audio", kind="text")]

    def config(self):
        return {**super().config(), "style": self.style, "num_beams": self.num_beams,
                "max_new_tokens": self.max_new_tokens, "sampling_rate": self.rate,
                "window_seconds": self.window / self.rate, "prompt_ids": self.prompt}

    def load(self, device="auto", dtype="auto"):
        from transformers import WhisperForConditionalGeneration

        self.load_model(WhisperForConditionalGeneration, device, dtype)

    def generation_config(self):
        """Beam search from the prompt, with the checkpoint's own token suppression (generation_config.json)."""
        from transformers import GenerationConfig

        saved = self.path / "generation_config.json"
        own = json.loads(saved.read_text()) if saved.exists() else {}
        return GenerationConfig(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False,
                                decoder_start_token_id=self.hf_config.decoder_start_token_id,
                                eos_token_id=self.hf_config.eos_token_id, pad_token_id=self.hf_config.pad_token_id,
                                suppress_tokens=own.get("suppress_tokens"),
                                begin_suppress_tokens=own.get("begin_suppress_tokens"))

    def caption_windows(self, pieces: list[np.ndarray]) -> list[str]:
        """Pieces of 16 kHz audio, at most 30 s each -> one caption each (style prefix removed)."""
        import torch
        from transformers import GenerationMixin

        features = self.extractor(pieces, sampling_rate=self.rate, return_tensors="pt")["input_features"]
        prompt = torch.tensor([self.prompt], device=self.device).expand(len(pieces), -1)
        with torch.inference_mode():
            # the generic encoder-decoder generate, as the authors' WhisperForAudioCaptioning calls it: Whisper's
            # own generate would replace the prompt with its transcription one
            ids = GenerationMixin.generate(self.model, input_features=features.to(self.device, self.dtype),
                                           decoder_input_ids=prompt, generation_config=self.generation_config())
        new = ids[:, len(self.prompt):]
        return [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def __call__(self, batch: Batch):
        if self.model is None:
            self.load()
        waveforms, has_audio = clip_audio(batch)
        captions = np.full(len(batch), "", dtype=object)
        pieces = {i: windows(waveforms[i], self.window) for i in np.flatnonzero(has_audio)}
        if pieces:
            said = iter(self.caption_windows([p for ps in pieces.values() for p in ps]))
            for i, ps in pieces.items():
                captions[i] = " ".join(c for c in (next(said) for _ in ps) if c)
        return {"caption": captions}
