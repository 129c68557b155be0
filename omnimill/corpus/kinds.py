"""The registry of sample kinds: `kind_of("image")` is what listing, the label store and the engine ask.

A label store records its kind (attribute `sample_kind`; "image" for stores made before kinds), the
corpus listing picks up the kind's file extensions, and the engine fetches, decodes, batches and
writes per-sample arrays through it (see `omnimill.corpus.sample.SampleKind` for what a kind says).

Registered: image (corpus/image.py), clip (corpus/clip.py: T frames per sample, frame_axes (T,)) and
document (corpus/document_kind.py: the images of a document store, keyed IMAGE_KEY, decoded as images).

Adding a kind (the clip and document issues did exactly this):
  1. Write `omnimill/corpus/<kind>.py` with `class ClipKind(SampleKind)`: set `name = "clip"`, `noun`, `plural`,
     `extensions` (and `sample_arrays` if it writes per-sample arrays at the top of the label store,
     with `sample_values`; `index_columns`, `frame_axes`, `settings`/`configured` and `index` if it needs
     them, see corpus/sample.py); implement `decode` and `batch_fields`. Import heavy decoders (PyAV, ...)
     inside `decode`, so importing the registry stays cheap.
  2. Add one registration line at the bottom of this module:
         from omnimill.corpus.clip import ClipKind; register(ClipKind())  # noqa: E702
Nothing in engine/ or store/ changes. An out-of-tree kind calls `register` itself (and must be
imported on the workers too, like a plug-in teacher).
"""

from __future__ import annotations

from omnimill.corpus.image import ImageKind
from omnimill.corpus.sample import SampleKind
from omnimill.errors import UserError

DEFAULT_KIND = "image"  # what a store without a `sample_kind` attribute holds

_KINDS: dict[str, SampleKind] = {}


def register(kind: SampleKind) -> SampleKind:
    """Make `kind` known by its name; a name is taken once (unregister first to replace it)."""
    if kind.name in _KINDS:
        raise ValueError(f"sample kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _KINDS.pop(name, None)


def known() -> list[str]:
    return sorted(_KINDS)


def kind_of(name: str) -> SampleKind:
    """The registered kind called `name`; UserError naming the known kinds otherwise."""
    try:
        return _KINDS[name]
    except KeyError:
        raise UserError(f"unknown sample kind {name!r}; known kinds: {', '.join(known())}") from None


def all_index_columns() -> tuple[str, ...]:
    """Names of every registered kind's index columns (what an interrupted label store may hold)."""
    return tuple(dict.fromkeys(c.name for k in _KINDS.values() for c in k.index_columns))


def all_sample_arrays() -> tuple[str, ...]:
    """Names of every registered kind's per-sample arrays (what an interrupted label store may hold)."""
    return tuple(dict.fromkeys(a.name for k in _KINDS.values() for a in k.sample_arrays))


# ---------------------------------------------------------------- registrations: one line per kind
register(ImageKind())
from omnimill.corpus.clip import ClipKind; register(ClipKind())  # noqa: E402, E702
from omnimill.corpus.document_kind import DocumentKind; register(DocumentKind())  # noqa: E402, E702
