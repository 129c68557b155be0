"""omni_caption: one caption of a clip from what it shows, what it sounds like and what is said in it.

MiCo (Zhang et al., 2024, "Explore the Limits of Omni-modal Pretraining at Scale") and VAST (Chen et al.,
2023, "VAST: A Vision-Audio-Subtitle-Text Omni-Modality Foundation Model and Dataset") train on an "omni
caption" that fuses a clip's vision caption, audio caption and subtitles. This teacher sees whole clips
(`sees = "clips"`) and reads its parts from other teachers (`requires`) and from the clip itself:

  part     from                                                       when left out
  vision   video_captioner's `caption`                                 empty (an audio file)
  audio    audio_captioner's `caption`                                no audio (has_audio False), empty
  speech   the clip's subtitles (cue texts in order), else asr's `text`  no audio and no subtitles, empty
  caption  the corpus's own caption of the clip (manifest, sidecar)    empty

**Template** (the default, no checkpoint): the parts present, in this order, each written as

  vision   "{Vision}."            first letter upper-cased
  audio    "Sound: {audio}."
  speech   'Speech: "{speech}"'   at most MAX_SPEECH_WORDS words, "..." where cut
  caption  "Title: {caption}."

joined by single spaces. A part's trailing ".", ",", ";" or ":" is dropped before its own is added; a
missing part is left out, never written as "none". For example, vision "a man riding a horse on a beach",
audio "waves crashing and wind blowing", subtitle "Look at him go!" and corpus caption "Holiday in Spain":

  A man riding a horse on a beach. Sound: waves crashing and wind blowing. Speech: "Look at him go!" Title: Holiday in Spain.

and the same clip without sound or subtitles: `A man riding a horse on a beach. Title: Holiday in Spain.`
A clip with no part at all gets "".

**Text model** (a checkpoint: `--teacher omni_caption=/models/flan-t5-base`): a transformers
sequence-to-sequence model (T5, Flan-T5, BART, ...: AutoModelForSeq2SeqLM) rewrites `prompt` + the template
into one sentence by beam search (`num_beams`, `max_new_tokens`). The template it was given is stored too.

Option `sources` (default all: "video_captioner,audio_captioner,asr,subtitles,caption") names the parts to use,
comma-separated; the teachers among them are this teacher's `requires`, so they must be labelled in the same
run or before (e.g. `--option omni_caption.sources=video_captioner,subtitles` needs only video_captioner).

Stored per clip: `caption` () str; with a text model also `template` () str, the text it rewrote.
"""

from __future__ import annotations

import re

import numpy as np

from omnimill.errors import UserError
from omnimill.labelers import checkpoints
from omnimill.labelers.base import Batch, Field, Teacher, TeacherSpec
from omnimill.labelers.clip import load_tokenizer
from omnimill.labelers.hf import HFTeacher

# source -> (part it fills, the teacher that provides it, or None when it comes with the clip)
SOURCES = {"video_captioner": ("vision", "video_captioner"), "audio_captioner": ("audio", "audio_captioner"),
           "asr": ("speech", "asr"), "subtitles": ("speech", None), "caption": ("caption", None)}
DEFAULT_SOURCES = ",".join(SOURCES)
PARTS = ("vision", "audio", "speech", "caption")  # the template's order
MAX_SPEECH_WORDS = 60  # a minute of talk in a long clip would drown the rest of the caption
PROMPT = "Describe the video in one sentence: "  # before the template, for the text model
NUM_BEAMS = 3
MAX_NEW_TOKENS = 60


def template(vision: str = "", audio: str = "", speech: str = "", caption: str = "") -> str:
    """The documented template (module docstring) of the parts given; empty parts are left out."""
    written = []
    for part, text in zip(PARTS, (vision, audio, speech, caption)):
        text = _clean(text)
        if part == "speech":
            words = text.split()
            text = " ".join(words[:MAX_SPEECH_WORDS]) + ("..." if len(words) > MAX_SPEECH_WORDS else "")
        if not text:
            continue
        if part == "vision":
            written.append(f"{text[0].upper()}{text[1:]}.")
        elif part == "audio":
            written.append(f"Sound: {text}.")
        elif part == "speech":
            written.append(f'Speech: "{text}"')
        else:
            written.append(f"Title: {text}.")
    return " ".join(written)


def _clean(text) -> str:
    """One line, single spaces, no trailing '.,;:' (the template adds its own)."""
    return re.sub(r"\s+", " ", str(text)).strip().rstrip(".,;:").strip()


def parse_sources(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip() for s in str(text).split(",") if s.strip()))
    unknown = [s for s in names if s not in SOURCES]
    if unknown or not names:
        raise UserError(f"teacher omni_caption: option sources takes a comma-separated list of "
                        f"{', '.join(SOURCES)}; not {text!r}")
    return names


class OmniCaption(Teacher):
    name = "omni_caption"
    sees = "clips"
    needs_checkpoint = True  # optional: without one the template is the caption
    options = {"sources": (str, DEFAULT_SOURCES), "prompt": (str, PROMPT), "num_beams": (int, NUM_BEAMS),
               "max_new_tokens": (int, MAX_NEW_TOKENS)}

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        self.sources = parse_sources(self.option("sources"))
        # an instance attribute: the engine reads `t.requires` to order teachers and hand over their outputs
        self.requires = tuple(SOURCES[s][1] for s in self.sources if SOURCES[s][1])
        self.rewriter = Rewriter(spec, view_size, self) if spec.checkpoint else None
        self.device = None

    def fields(self):
        caption = Field("caption", (), "str", doc="the clip's omni caption: vision, audio, speech and title fused",
                        kind="text")
        if self.rewriter is None:
            return [caption]
        return [caption, Field("template", (), "str", doc="the template the text model rewrote", kind="text")]

    def config(self):
        config = {**super().config(), "sources": list(self.sources), "max_speech_words": MAX_SPEECH_WORDS}
        if self.rewriter is not None:
            config.update(model_type=self.rewriter.hf_config.model_type, prompt=self.option("prompt"),
                          num_beams=self.option("num_beams"), max_new_tokens=self.option("max_new_tokens"))
        return config

    def provenance(self):
        info = super().provenance()
        if self.rewriter is not None:  # what HFTeacher records: the checkpoint's hashes, torch and transformers
            import torch
            import transformers

            info.update(checkpoints.fingerprint(self.rewriter.path))
            info["libraries"].update(torch=torch.__version__, transformers=transformers.__version__)
        return info

    def load(self, device="auto", dtype="auto"):
        if self.rewriter is not None:
            self.rewriter.load(device, dtype)
            self.device = self.rewriter.device

    def templates(self, batch: Batch) -> list[str]:
        """Each clip's template from the chosen sources (module docstring)."""
        n, clips, up = len(batch), batch.clips or {}, batch.upstream
        has_audio = np.asarray(clips.get("has_audio", np.ones(n, bool)), bool)
        out = []
        for i in range(n):
            parts = dict.fromkeys(PARTS, "")
            if "video_captioner" in self.sources:
                parts["vision"] = str(up["video_captioner"]["caption"][i])
            if "audio_captioner" in self.sources and has_audio[i]:
                parts["audio"] = str(up["audio_captioner"]["caption"][i])
            if "subtitles" in self.sources:
                parts["speech"] = " ".join(_clean(cue.text) for cue in clips["subtitles"][i] if _clean(cue.text))
            if not _clean(parts["speech"]) and "asr" in self.sources and has_audio[i]:
                parts["speech"] = str(up["asr"]["text"][i])
            if "caption" in self.sources:
                parts["caption"] = str(batch.infos[i].caption or "") if batch.infos[i] is not None else ""
            out.append(template(**parts))
        return out

    def __call__(self, batch: Batch):
        texts = self.templates(batch)
        if self.rewriter is None:
            return {"caption": np.array(texts, dtype=object)}
        captions = np.full(len(texts), "", dtype=object)
        rows = [i for i, t in enumerate(texts) if t]  # nothing to say: no model call, the absent caption
        if rows:
            captions[rows] = self.rewriter.rewrite([texts[i] for i in rows])
        return {"caption": captions, "template": np.array(texts, dtype=object)}


class Rewriter(HFTeacher):
    """The text model of OmniCaption: checkpoint, tokenizer, weights and beam search of a seq2seq model."""

    name = "omni_caption"
    example = "omni_caption=/models/flan-t5-base"
    title = "sequence-to-sequence text model (T5, BART, ...)"

    def __init__(self, spec: TeacherSpec, view_size: int, owner: OmniCaption):
        super().__init__(spec, view_size)
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

        if self.hf_config.model_type not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            raise self.bad_checkpoint(ValueError(f"model_type is {self.hf_config.model_type!r}, which "
                                                 "AutoModelForSeq2SeqLM does not load"))
        self.prompt = owner.option("prompt")
        self.num_beams, self.max_new_tokens = owner.option("num_beams"), owner.option("max_new_tokens")
        self.tokenizer = load_tokenizer(self)

    def load(self, device="auto", dtype="auto"):
        from transformers import AutoModelForSeq2SeqLM

        self.load_model(AutoModelForSeq2SeqLM, device, dtype)

    def rewrite(self, texts: list[str]) -> list[str]:
        """Templates -> one sentence each: the model's beam search on prompt + template."""
        import torch

        if self.model is None:
            self.load()
        inputs = self.tokenizer([self.prompt + t for t in texts], padding=True, truncation=True,
                                return_tensors="pt").to(self.device)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, num_beams=self.num_beams, do_sample=False,
                                      max_new_tokens=self.max_new_tokens)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
