"""captioner: image captions from a captioning model (BLIP or GIT) via transformers `generate`.

BLIP (Li et al., 2022, "BLIP: Bootstrapping Language-Image Pre-training") `BlipForConditionalGeneration`
and GIT (Wang et al., 2022, "GIT: A Generative Image-to-text Transformer") `GitForCausalLM`. The canonical
view is resized to the checkpoint's image size (BLIP 384, GIT 224) and normalised with its mean/std.

Stored per sample: `captions` (K,) str and `count` () int32, K = option `num_captions` (default 1, at most
MAX_CAPTIONS = 8). `captions[0]` is the model's best caption (beam search, `num_beams` beams);
`captions[1:]` are drawn by nucleus sampling (`top_p`) for variety. Sampling is seeded from `seed` and the
keys of the batch, so labelling the same unit again gives the same captions (a sample labelled in another
batch draws others). Duplicates and empty strings are dropped: `count` <= K captions are kept, the rest
is "". The corpus's own alt-text is the store's top-level `caption` array; it is not repeated here (and
that array is why this teacher is not called `caption`: its group would take the array's name).

Florence-2 (`florence2` in transformers >= 4.56) is not supported yet: it needs its processor's image
tokens and task prompts (`<CAPTION>`), and a checkpoint of it is refused with a message saying so.
Options (`--option captioner.KEY=VALUE`, TeacherSpec.options): num_captions, num_beams, max_new_tokens, top_p, seed.
"""

from __future__ import annotations

import zlib

import numpy as np

from omnimill.errors import UserError
from omnimill.labelers.base import Batch, Field, TeacherSpec
from omnimill.labelers.clip import NORMALISATION, load_tokenizer
from omnimill.labelers.hf import HFTeacher

MAX_CAPTIONS = 8  # the most captions per sample; captioner_embed pads to this
NUM_CAPTIONS = 1  # captions per sample: one beam-search caption, the rest sampled
NUM_BEAMS = 3  # beams for the first caption
MAX_NEW_TOKENS = 30  # BLIP/GIT captions are ~10 words; 30 tokens leaves room without running on
TOP_P = 0.9  # nucleus sampling for captions 2..K
SEED = 0  # with the batch's keys, seeds the sampled captions

CLASSES = {"blip": "BlipForConditionalGeneration", "git": "GitForCausalLM"}


class Captioner(HFTeacher):
    name = "captioner"
    serializer = "caption"
    renderer = "captioner"
    default_checkpoint = "Salesforce/blip-image-captioning-base"
    model_types = (*CLASSES, "florence2")  # florence2 is accepted only to be refused with a clear message
    example = "captioner=/models/blip-image-captioning-base"
    title = "BLIP or GIT captioning"
    options = {"num_captions": (int, NUM_CAPTIONS), "num_beams": (int, NUM_BEAMS),
               "max_new_tokens": (int, MAX_NEW_TOKENS), "top_p": (float, TOP_P), "seed": (int, SEED)}

    def __init__(self, spec: TeacherSpec, view_size: int):
        super().__init__(spec, view_size)
        if self.hf_config.model_type == "florence2":
            raise UserError(f"teacher captioner: {self.path} is a Florence-2 checkpoint, not supported yet; "
                            "use BLIP (Salesforce/blip-image-captioning-base) or GIT (microsoft/git-base-coco)")
        self.num_captions = self.option("num_captions")
        if not 1 <= self.num_captions <= MAX_CAPTIONS:
            raise UserError(f"teacher captioner: num_captions must be 1..{MAX_CAPTIONS}, not {self.num_captions}")
        self.num_beams = self.option("num_beams")
        self.max_new_tokens = self.option("max_new_tokens")
        self.top_p = self.option("top_p")
        self.seed = self.option("seed")
        self.image_size = self.hf_config.vision_config.image_size
        self.tokenizer = load_tokenizer(self)  # turns generated ids into words

    def fields(self):
        k = self.num_captions
        return [
            Field("captions", (k,), "str", doc="generated captions: [0] beam search, [1:] sampled; '' = padding",
                  kind="text"),
            Field("count", (), "int32", doc="distinct non-empty captions", kind="count"),
        ]

    def config(self):
        return {**super().config(), "image_size": self.image_size, "num_captions": self.num_captions,
                "num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens, "top_p": self.top_p,
                "seed": self.seed}

    def normalisation(self):
        if self.path.is_dir() and (self.path / "preprocessor_config.json").exists():
            return super().normalisation()
        return NORMALISATION["clip"]  # BLIP and GIT were both trained with CLIP's mean/std

    def load(self, device="auto", dtype="auto"):
        import transformers

        self.load_model(getattr(transformers, CLASSES[self.hf_config.model_type]), device, dtype)

    def generate(self, pixels, **options) -> list[str]:
        """Normalised pixels (B, 3, h, w) -> decoded captions, num_return_sequences per image, image-major."""
        ids = self.model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens, **options)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def __call__(self, batch: Batch):
        import torch

        if self.model is None:
            self.load()
        n, k = len(batch), self.num_captions
        with torch.inference_mode():
            pixels = self.pixels(batch.views, self.image_size)
            best = self.generate(pixels, num_beams=self.num_beams, do_sample=False)
            sampled = [[] for _ in range(n)]
            if k > 1:
                devices = [self.device] if self.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):  # leave the process's random state alone
                    torch.manual_seed(self.seed ^ zlib.crc32("\n".join(batch.keys).encode()))
                    drawn = self.generate(pixels, do_sample=True, top_p=self.top_p, top_k=0,
                                          num_return_sequences=k - 1)
                sampled = [drawn[i * (k - 1):(i + 1) * (k - 1)] for i in range(n)]
        captions = np.full((n, k), "", dtype=object)
        count = np.zeros(n, np.int32)
        for i in range(n):
            distinct = [c for c in dict.fromkeys([best[i], *sampled[i]]) if c]
            captions[i, :len(distinct)] = distinct
            count[i] = len(distinct)
        return {"captions": captions, "count": count}

