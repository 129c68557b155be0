"""What a sample kind is: the one seam between a corpus and the engine.

A `SampleKind` says, for one kind of sample (a still image, a clip, a document):
  extensions      which files a folder or tar listing picks up as samples
  key             the stable key of a sample from its path without extension
  fetch           its raw bytes, through a ByteReader, from the store's per-sample metadata
  decode          raw bytes -> what teachers see (raises SampleError for a bad sample)
  batch_fields    decoded samples -> the arguments of `omnimill.labelers.base.Batch` besides `keys`
  sample_arrays   the per-sample arrays it adds at the top of the label store (image: crop_box)
  sample_values   one decoded sample's values for those arrays

The engine asks the kind and never names images. Kinds are registered in `omnimill.corpus.kinds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


def make_key(path_without_ext: str) -> str:
    """Stable key: the path without extension, "/"-separated, dots as `_` (WebDataset splits keys at dots)."""
    return path_without_ext.strip("/").replace(".", "_") or "_"


@dataclass(frozen=True)
class SampleArray:
    """A per-sample array a kind writes at the top of the label store: (N, *shape), one chunk per unit."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    doc: str = ""


@dataclass(frozen=True)
class DecodeSettings:
    """What a decode may depend on, fixed per store (view_size) or per run (max_pixels)."""

    view_size: int
    max_pixels: int


class SampleKind:
    """Base class of a sample kind. Subclasses set `name`, `noun`, `plural`, `extensions` and implement `decode`,
    `batch_fields`; a kind with per-sample arrays also sets `sample_arrays` and `sample_values`."""

    name: ClassVar[str]  # how stores and options name the kind: "image"
    noun: ClassVar[str]  # for messages: "expected image files"
    plural: ClassVar[str]  # "no images found"
    extensions: ClassVar[frozenset[str]]  # lower case, without the dot
    sample_arrays: ClassVar[tuple[SampleArray, ...]] = ()

    def key(self, path_without_ext: str) -> str:
        return make_key(path_without_ext)

    def fetch(self, reader, sample: dict) -> bytes:
        """Raw bytes of one sample; `sample` holds the store's per-sample metadata (source, offset, size, ...)."""
        return reader.read(str(sample["source"]), int(sample["offset"]), int(sample["size"]))

    def decode(self, data: bytes, sample: dict, settings: DecodeSettings) -> Any:
        raise NotImplementedError

    def batch_fields(self, decoded: list) -> dict:
        """The `Batch` constructor's arguments besides `keys`, for these decoded samples in order. (The
        engine builds the Batch: corpus/ does not import labelers/, which imports corpus/.)"""
        raise NotImplementedError

    def sample_values(self, decoded) -> dict[str, Any]:
        """{array name: this sample's value} for every array in `sample_arrays`."""
        return {}

    def __repr__(self) -> str:
        return f"<sample kind {self.name}>"
