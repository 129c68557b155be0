"""What a sample kind is: the one seam between a corpus and the engine.

A `SampleKind` says, for one kind of sample (a still image, a clip, a document):
  extensions      which files a folder or tar listing picks up as samples
  key             the stable key of a sample from its path without extension
  fetch           its raw bytes, through a ByteReader, from the store's per-sample metadata
  decode          raw bytes -> what teachers see (raises SampleError for a bad sample)
  batch_fields    decoded samples -> the arguments of `omnimill.labelers.base.Batch` besides `keys`
  sample_arrays   the per-sample arrays it adds at the top of the label store (image: crop_box)
  sample_values   one decoded sample's values for those arrays
  value_problems  what `verify` finds wrong in a labelled sample's stored values (clip: its times)
  index_columns   per-sample columns of the corpus index it keeps beside keys/source/... (clip: start, end)
  frame_axes      the axes a teacher's per-frame output gains per sample: () for an image, (T,) for a clip;
                  `batch_fields` gives frames_per_sample frames per sample, and teachers see only frames
  settings        what the kind was built with (clip: frames), kept in the store so workers rebuild it
  index           list a corpus into the kind's samples (the rows of a CorpusIndex)

The engine asks the kind and never names images. Kinds are registered in `omnimill.corpus.kinds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


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
    index_columns: ClassVar[tuple[SampleArray, ...]] = ()  # from CorpusIndex.extras, shape (); "str" as text
    index_options: ClassVar[dict] = {}  # keyword options `index` takes and their defaults (clip: clips, ...);
    #                                     a store records the ones it was listed with (corpus.listing)
    frame_axes: tuple[int, ...] = ()

    @property
    def frames_per_sample(self) -> int:
        """How many frames (teacher batch rows) one sample gives: 1 for an image, T for a clip."""
        return int(np.prod(self.frame_axes, dtype=np.int64))

    def settings(self) -> dict:
        """What this kind object was built with beyond its class (JSON); {} for a kind without settings."""
        return {}

    def configured(self, settings: dict) -> "SampleKind":
        """The kind built with `settings` (as `settings()` gave them); this object when there are none."""
        return self

    def index(self, uri: str, storage_options: dict | None = None, **options):
        """The corpus listed into this kind's samples (a CorpusIndex); `options` are `index_options`."""
        from omnimill.corpus.listing import index_corpus  # not at import: listing imports the registry

        return index_corpus(uri, storage_options, self)

    def key(self, path_without_ext: str) -> str:
        return make_key(path_without_ext)

    def fetch(self, reader, sample: dict) -> bytes:
        """Raw bytes of one sample; `sample` holds the store's per-sample metadata (source, offset, size, ...)."""
        return reader.read(str(sample["source"]), int(sample["offset"]), int(sample["size"]))

    def decode(self, data: bytes, sample: dict, settings: DecodeSettings) -> Any:
        raise NotImplementedError

    def batch_fields(self, decoded: list) -> dict:
        """The `Batch` constructor's arguments besides `keys`, for these decoded samples in order: views and
        infos of `frames_per_sample` frames per sample, sample after sample. (The engine builds the Batch:
        corpus/ does not import labelers/, which imports corpus/.)"""
        raise NotImplementedError

    def sample_values(self, decoded) -> dict[str, Any]:
        """{array name: this sample's value} for every array in `sample_arrays`."""
        return {}

    def value_problems(self, values: dict[str, Any]) -> list[tuple[str, str]]:
        """What is wrong with one labelled sample's stored `sample_arrays` values, as (array, problem) pairs
        (verify asks; [] = fine; `label --repair` labels the sample's unit again, which rewrites them)."""
        return []

    def __repr__(self) -> str:
        return f"<sample kind {self.name}>"
