"""The tokenizer interface and its directory format.

A tokenizer turns the labels of one modality into a fixed-length row of integer tokens and back:

    encode(values, crops) -> (B, L) int32     decode(tokens) -> values in the crop's frame

`values` maps field names to per-sample arrays, exactly as the label store holds them (a spatial or
vector tokenizer reads one field; a sequence tokenizer may read several fields of one teacher).
`crops` (B, 5) int32 = (top, left, h, w, flip) in canonical-view pixels, shared by every modality of
a sample (4M-style multi-crop); each kind applies it as its data means: dense maps are cut and
resized, coordinates are moved into the crop, global values ignore it.

A tokenizer directory holds everything needed to use it, loaded by path:

    config.json        kind, source field, vocab size, tokens per sample, input normalisation, ...
    model.safetensors  weights (spatial, vector, mask, audio)   tokenizer.json  (sequence, HF tokenizers)
    metrics.json       written by `tokenizer eval`        *.png  pictures (reconstructions, usage, curve)
    audio_*.wav        written by `tokenizer eval` (audio): held-out clips' log-mel and its reconstruction, heard
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from omnimill.errors import UserError
from omnimill.store.tokens import modality_name

FORMAT = "omnimill.tokenizer/1"


@dataclass
class TokenizerConfig:
    kind: str  # spatial | vector | sequence | mask | audio
    teacher: str  # label-store group the values come from ("" for top-level arrays such as `caption`)
    fields: list[str]  # field names read from that group
    vocab_size: int = 0  # filled in by the tokenizer
    tokens_per_sample: int = 0  # L
    pad_id: int = -1  # sequence tokenizers pad to L with this id; -1: no padding (fixed length)
    normalization: dict = field(default_factory=dict)  # how raw values are scaled before the model
    source: dict = field(default_factory=dict)  # store URI, teacher provenance sha, field shapes/dtypes
    options: dict = field(default_factory=dict)  # kind-specific settings (levels, grid, sizes, ...)

    @property
    def modality(self) -> str:
        """The label-store field it reads, as `--field` names it: teacher/field, or teacher for whole groups,
        or a top-level array (its token-store modality is `modality_name(teacher, fields)`: rgb_image)."""
        return modality_name(self.teacher, self.fields, "/")


class Tokenizer:
    kind: ClassVar[str]

    def __init__(self, config: TokenizerConfig):
        self.config = config

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def tokens_per_sample(self) -> int:
        return self.config.tokens_per_sample

    def encode(self, values: dict[str, np.ndarray], crops: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def to(self, device: str) -> "Tokenizer":
        """Where encode/decode compute; tokenizers without a model ignore it."""
        return self

    def time_layout(self, field_shape: tuple[int, ...] | None = None) -> dict | None:
        """The time axis of the tokens this tokenizer gives for a field of per-sample `field_shape` (the store's,
        time axes included): {"steps": n, "of": "frames" | "audio_segments"} when each sample's L tokens are n
        equal runs, one per time step, in time order (token l is in step l // (L // n)); None: no time axis.
        What the token store records as a modality's `time` attribute. The audio kind: its K segments."""
        return None

    def decode(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # ------------------------------------------------------------------ directory format
    def save(self, directory: str | Path) -> Path:
        """Weights first, config.json last and whole: a directory without it is not a tokenizer (yet)."""
        from omnimill.files import write_atomic

        directory = prepare_directory(directory)
        self.save_weights(directory)
        write_atomic(directory / "config.json", json.dumps({"format": FORMAT, **asdict(self.config)}, indent=2))
        return directory

    def save_weights(self, directory: Path) -> None:
        """Kind-specific files beside config.json."""

    @classmethod
    def from_directory(cls, directory: Path, config: TokenizerConfig) -> "Tokenizer":
        raise NotImplementedError


class ModelTokenizer(Tokenizer):
    """A tokenizer whose encoder/quantizer/decoder is `self.model`, stored as model.safetensors."""

    model = None  # a torch.nn.Module, set by the subclass
    device = "cpu"

    def to(self, device: str) -> "ModelTokenizer":
        """Run on `device` ("cpu", "cuda", "auto" = cuda when present); inputs and outputs stay numpy."""
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model.to(device)
        return self

    def save_weights(self, directory: Path) -> None:
        from safetensors.torch import save_model

        temp = directory / ".model.safetensors.tmp"
        save_model(self.model, str(temp))
        os.replace(temp, directory / "model.safetensors")

    @classmethod
    def from_directory(cls, directory: Path, config: TokenizerConfig) -> "ModelTokenizer":
        from safetensors.torch import load_model

        tokenizer = cls(config)
        load_model(tokenizer.model, str(directory / "model.safetensors"))
        return tokenizer


OWN_FILES = ("config.json", "model.safetensors", "tokenizer.json", "train_log.json", "curve.png", "metrics.json",
             "reconstructions.png", "usage.png")
OWN_PATTERNS = ("audio_*.wav",)  # what `tokenizer eval` lets a person hear (audio kind)


def prepare_directory(directory: str | Path) -> Path:
    """A new or empty directory, or an earlier tokenizer (its own files are removed, config.json first, so
    a half-written retrain is never taken for a tokenizer). Anything else is a user's folder: refused."""
    directory = check_directory(directory)
    if directory.is_dir():
        for name in OWN_FILES:  # config.json first
            (directory / name).unlink(missing_ok=True)
        for pattern in OWN_PATTERNS:
            for path in directory.glob(pattern):
                path.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def check_directory(directory: str | Path) -> Path:
    """Refuse a file or a user's folder as a tokenizer directory; writes nothing."""
    directory = Path(directory)
    if directory.is_file():
        raise UserError(f"{directory} is a file; give a new or empty directory for the tokenizer")
    if directory.is_dir() and any(directory.iterdir()):
        config = directory / "config.json"
        try:
            ours = json.loads(config.read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise UserError(f"{directory} is not empty and holds no omnimill tokenizer; give a new or empty "
                            "directory")
    return directory


KINDS = {
    "spatial": "omnimill.tokenize.spatial:SpatialTokenizer",
    "vector": "omnimill.tokenize.vector:VectorTokenizer",
    "sequence": "omnimill.tokenize.sequence:SequenceTokenizer",
    "mask": "omnimill.tokenize.mask:MaskTokenizer",
    "audio": "omnimill.tokenize.audio:AudioTokenizer",
}


def tokenizer_class(kind: str) -> type[Tokenizer]:
    import importlib

    if kind not in KINDS:
        raise UserError(f"unknown tokenizer kind {kind!r}; choose {', '.join(KINDS)}")
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load any tokenizer directory written by `save`."""
    directory = Path(directory)
    path = directory / "config.json"
    if not path.exists():
        raise UserError(f"{directory} is not a tokenizer directory (no config.json); "
                        "make one with `omnimill tokenizer train`")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
            raise UserError(f"{directory} holds a tokenizer of another format; retrain it")
        config = TokenizerConfig(**data)
        cls = tokenizer_class(config.kind)
        return cls.from_directory(directory, config)
    except UserError:
        raise
    except Exception as e:  # a damaged file: json, safetensors and tokenizers each raise their own kind
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"the tokenizer in {directory} is damaged ({reason[:120]}); retrain it") from None


HASHED_FILES = ("config.json", "model.safetensors", "tokenizer.json")  # what decides the tokens; not metrics, pictures


def directory_hash(directory: str | Path) -> str:
    """sha256 over a tokenizer directory's config and weights: what the token store records."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).iterdir()):
        if path.name in HASHED_FILES:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def file_hashes(directory: str | Path) -> dict[str, str]:
    """{file name: plain sha256 of its bytes} for the files `directory_hash` covers: what `sha256sum` prints."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(directory).iterdir()) if path.name in HASHED_FILES}
