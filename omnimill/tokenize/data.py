"""Read a modality's labels out of a label store for tokenizer training, evaluation and tokenizing.

A field is named `teacher/field` (one array of a teacher group), `teacher` (every field of the group:
sequence tokenizers of structures such as detection or palette) or a top-level array (`caption`,
the corpus's own alt-text). Only samples the teacher labelled (`ok`) are used.

Train / held-out split: a sample is held out when sha256(seed:key) falls in the first `holdout`
fraction of the hash space (store.base.held_out, the trainer's loader splits the same way), so the
split is stable across runs, machines and corpus growth.
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

    def path(self, field: str) -> str:
        """Where a field lies in the label store: teacher/field, or a top-level array."""
        return f"{self.teacher}/{field}" if self.teacher else field

    def ok(self) -> np.ndarray:
        if not self.teacher:
            return np.ones(self.store.n, bool)
        return self.store.read(self.path("ok"))

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Values of `indices` (sorted), one array per field."""
        indices = np.asarray(indices, np.int64)
        rows = indices if len(indices) else slice(0, 0)
        return {f: self.store.read(self.path(f), rows) for f in self.fields}


def open_field(store: str | LabelStore, field: str) -> FieldSource:
    labels = store if isinstance(store, LabelStore) else LabelStore.open(store)
    labels.require_images("tokenizing")
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
    """(train indices, held-out indices) among the samples the teacher labelled."""
    ok = source.ok()
    mask = held_out(source.store.keys(), holdout, seed)
    return np.flatnonzero(ok & ~mask), np.flatnonzero(ok & mask)


def check_source(config, source: FieldSource) -> None:
    """The store's field must look like what the tokenizer was trained on (shape and dtype)."""
    for field in config.fields:
        trained = config.source.get("fields", {}).get(field)
        found = source.specs.get(field)
        if found is None:
            raise UserError(f"{source.store.uri} has no field {field} for the {config.modality} tokenizer")
        if trained and (list(trained["shape"]) != list(found["shape"]) or trained["dtype"] != found["dtype"]):
            raise UserError(f"{source.name} in {source.store.uri} has shape {found['shape']} {found['dtype']}, "
                            f"but the tokenizer was trained on {trained['shape']} {trained['dtype']}")
