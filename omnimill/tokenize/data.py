"""Read a modality's labels out of a label store for tokenizer training, evaluation and tokenizing.

A field is named `teacher/field` (one array of a teacher group), `teacher` (every field of the group:
sequence tokenizers of structures such as detection or palette) or a top-level array (`caption`,
the corpus's own alt-text). Only samples the teacher labelled (`ok`) are used.

Clip stores: a teacher that sees frames stores (N, T, ...) (the sample kind's frame axes), and a tokenizer of
such a field sees one frame at a time, as it would see an image: `FieldSource.read` gives the frames of the
clips asked for, frame after frame, (n * T, ...), and `sample_keys` the key of each frame's clip (so a clip's
frames share its crop). Tokenizing a clip's frames gives T rows of tokens, joined time-major (frame 0's
first) into one row of T x L; the token store records `{"steps": T, "of": "frames"}` (`time_axis`). A teacher
that sees whole clips stores (N, ...) and is read like an image store's field; a tokenizer of such a field may
itself declare a time axis (the audio tokenizer: K audio segments), through `time_layout(field_shape)`.

Train / held-out split: a sample is held out when sha256(seed:key) falls in the first `holdout`
fraction of the hash space (store.base.held_out, the trainer's loader splits the same way), so the
split is stable across runs, machines and corpus growth. In a clip store the split is by clip: every frame
of a held-out clip is held out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnimill.errors import UserError
from omnimill.store.base import held_out
from omnimill.store.labels import LabelStore
from omnimill.store.tokens import modality_name

TOP_LEVEL = ("caption",)


@dataclass
class FieldSource:
    store: LabelStore
    teacher: str  # "" for top-level arrays
    fields: list[str]
    specs: dict  # field -> {"shape": [...], "dtype": str, "dense": bool}
    provenance: dict

    @property
    def name(self) -> str:
        return modality_name(self.teacher, self.fields, "/")

    @property
    def frame_axes(self) -> tuple[int, ...]:
        """The axes the store adds to each field per sample: a clip's (T,) for a teacher that sees frames, else ()."""
        if not self.teacher or self.provenance.get("sees", "frames") != "frames":
            return ()
        return tuple(self.store.kind.frame_axes)

    @property
    def frames(self) -> int:
        """Frames per stored sample that `read` gives one by one: T for a clip's per-frame field, else 1."""
        return int(np.prod(self.frame_axes, dtype=np.int64))

    def path(self, field: str) -> str:
        """Where a field lies in the label store: teacher/field, or a top-level array."""
        return f"{self.teacher}/{field}" if self.teacher else field

    def ok(self) -> np.ndarray:
        if not self.teacher:
            return np.ones(self.store.n, bool)
        return self.store.read(self.path("ok"))

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Values of `indices` (sorted), one array per field; per frame for a clip's per-frame field:
        (len(indices) * T, ...), the frames of each clip in time order."""
        indices = np.asarray(indices, np.int64)
        rows = indices if len(indices) else slice(0, 0)
        return self.as_frames({f: self.store.read(self.path(f), rows) for f in self.fields})

    def as_frames(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Stored values (n, *frame_axes, ...) -> (n * frames, ...): what a tokenizer of the field sees."""
        k = len(self.frame_axes)
        if not k:
            return values
        return {f: v.reshape(-1, *v.shape[1 + k:]) for f, v in values.items()}

    def sample_keys(self, indices: np.ndarray) -> np.ndarray:
        """The key of every sample `read(indices)` gives: a clip's key once per frame (its frames share its crops)."""
        keys = self.store.keys()[np.asarray(indices, np.int64)]
        return np.repeat(keys, self.frames)


def open_field(store: str | LabelStore, field: str) -> FieldSource:
    labels = store if isinstance(store, LabelStore) else LabelStore.open(store)
    if field in TOP_LEVEL:
        return FieldSource(labels, "", [field], {field: {"shape": [], "dtype": "str", "dense": False}}, {})
    teacher, _, name = field.partition("/")
    if teacher not in labels.teachers():
        raise UserError(f"{labels.uri} has no teacher {teacher!r} (it has {', '.join(labels.teachers()) or 'none'}); "
                        f"label it first with `omnimill label ... --teacher {teacher}`")
    provenance = labels.provenance(teacher)
    specs = provenance.get("fields", {})
    if name and name not in specs:
        raise UserError(f"teacher {teacher} in {labels.uri} has no field {name!r}; "
                        f"its fields are {', '.join(specs)}")
    fields = [name] if name else list(specs)
    return FieldSource(labels, teacher, fields, {f: specs[f] for f in fields}, provenance)


def split(source: FieldSource, holdout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) among the samples the teacher labelled (clips, in a clip store)."""
    ok = source.ok()
    mask = held_out(source.store.keys(), holdout, seed)
    return np.flatnonzero(ok & ~mask), np.flatnonzero(ok & mask)


def check_source(config, source: FieldSource) -> None:
    """The store's field must look like what the tokenizer was trained on (shape and dtype; per frame for a
    clip's per-frame field, so a tokenizer trained on images tokenizes frames of the same view size)."""
    for field in config.fields:
        trained = config.source.get("fields", {}).get(field)
        found = source.specs.get(field)
        if found is None:
            raise UserError(f"{source.store.uri} has no field {field} for the {config.modality} tokenizer")
        if trained and (list(trained["shape"]) != list(found["shape"]) or trained["dtype"] != found["dtype"]):
            raise UserError(f"{source.name} in {source.store.uri} has shape {found['shape']} {found['dtype']}, "
                            f"but the tokenizer was trained on {trained['shape']} {trained['dtype']}")


# ------------------------------------------------------------------------------------------ time axis
def time_axis(tokenizer, source: FieldSource) -> dict | None:
    """The time axis of the source's tokens, as the token store records it: {"steps": T, "of": "frames"} for a
    clip's per-frame field, what the tokenizer declares for a field it reads whole (`time_layout(shape)`: the
    audio tokenizer's {"steps": K, "of": "audio_segments"}), else None (no time axis)."""
    if source.frame_axes:
        return {"steps": source.frames, "of": "frames"}
    layout = getattr(tokenizer, "time_layout", None)
    if callable(layout):
        shape = tuple(source.specs[source.fields[0]]["shape"]) if len(source.fields) == 1 else ()
        declared = layout(shape)
        if declared:
            return {"steps": int(declared["steps"]), "of": str(declared["of"])}
    return None


def row_length(tokenizer, source: FieldSource) -> int:
    """Tokens per sample in the token store: per frame times T for a per-frame field, else the tokenizer's own
    (a tokenizer that declares a time axis gives the whole time-major row itself)."""
    return tokenizer.tokens_per_sample * source.frames


def encode_samples(tokenizer, source: FieldSource, values: dict[str, np.ndarray], crops: np.ndarray) -> np.ndarray:
    """(B, row_length) tokens of B stored samples (values as the store holds them, (B, *frame_axes, ...)) through
    crops (B, 5): each frame of a clip through its clip's crop, rows joined time-major (frame 0's tokens first)."""
    from omnimill.tokenize.crops import frame_crops

    crops = np.asarray(crops)
    tokens = tokenizer.encode(source.as_frames(values), frame_crops(crops, source.frames))
    tokens = np.asarray(tokens).reshape(len(crops), -1)  # (B*T, L) or a declared (B, steps, per_step) -> (B, T*L)
    if tokens.shape[1] != row_length(tokenizer, source):
        raise ValueError(f"the {tokenizer.config.modality} tokenizer gave {tokens.shape[1]} tokens per sample, "
                         f"not {row_length(tokenizer, source)}")
    return tokens
