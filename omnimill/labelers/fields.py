"""Field kinds: what one field of a teacher is, so that tokenizers and auditors need not guess from names.

Every field of a teacher declares one kind (`Field.kind`). The per-sample array of each kind (the store
adds the leading N axis; K items are padded to a declared maximum, their number in a `count` field):

  image           (H, W, 3) uint8       a picture on the view's grid (the canonical view itself)
  continuous      (H, W[, C]) float     a dense map of real values (depth, disparity); with
                                        `relative`, values share no scale across samples (relative
                                        depth): tokenizers standardise each sample on its own
  unit_vectors    (H, W, 3) float       dense unit vectors (surface normals)
  classes         (H, W) or (K,) int    class ids: dense per pixel, or one per item; names in the
                                        teacher's provenance config (id2label, class_names)
  binary          (H, W) bool           a dense yes/no map (edges)
  instances       (H, W) int            instance id per pixel, 0 = none
  instance_masks  (K, m, m) bool        each item's own mask inside its box (the `boxes` field beside it),
                                        resampled to m x m: instances that overlap all keep their pixels
  embedding       (D,) or (K, D) float  one vector per sample, or per item
  embedding_grid  (g, g, D) float       patch features on a g x g grid over the view
  boxes           (K, 4) float32        x0, y0, x1, y1 in view pixels per item
  keypoints       (P, J, 2) float32     x, y in view pixels per person and joint
  scores          (K,) or (P, J) float  confidence per item (or joint), about 0..1
  palette         (K, 3) uint8          RGB colours
  text            () or (K,) str        text: one per sample, or K per sample
  spectrogram     (K, M, F) float       log-mel of each of a clip's K audio segments (M bands, F frames),
                                        lined up with its audio_spans
  count           () int                how many of the padded rows are real
  scalar          () or (K,) any        numbers, booleans or words: one per sample, or per item

`Field.time` says the array has a leading axis of the clip's T frames, (T, ...) before the shapes above,
aligned with its frame_times: set by a teacher that sees whole clips (`Teacher.sees = "clips"`) and gives a
value per frame. A frame teacher (every image teacher) never sets it: on a clip store the engine stores its
fields as (N, T, ...) itself. A plug-in teacher may bring a kind of its own: `define_kind(name, doc)` before
its fields are declared; it then supplies the serializer and renderer that read it.

Stores written before kinds existed have none in their provenance: `guess_kind` gives what omnimill used
to infer from the dtype, shape and name, so that they still tokenize and render as they did.
"""

from __future__ import annotations

import numpy as np

KINDS: dict[str, str] = {
    "image": "(H, W, 3) uint8 picture on the view's grid",
    "continuous": "(H, W[, C]) float dense map of real values; `relative`: no scale shared across samples",
    "unit_vectors": "(H, W, 3) float dense unit vectors (normals)",
    "classes": "(H, W) or (K,) int class ids, dense or per item",
    "binary": "(H, W) bool dense yes/no map",
    "instances": "(H, W) int instance id per pixel, 0 = none",
    "instance_masks": "(K, m, m) bool each item's mask inside its box, resampled to m x m",
    "embedding": "(D,) or (K, D) float vector per sample or per item",
    "embedding_grid": "(g, g, D) float patch features over the view",
    "boxes": "(K, 4) float32 x0, y0, x1, y1 in view pixels",
    "keypoints": "(P, J, 2) float32 x, y in view pixels",
    "scores": "(K,) or (P, J) float confidence per item, about 0..1",
    "palette": "(K, 3) uint8 RGB colours",
    "text": "() or (K,) str",
    "spectrogram": "(K, M, F) float log-mel of each of K audio segments: M mel bands x F frames",
    "count": "() int real rows of the padded fields",
    "scalar": "() or (K,) number, bool or word",
}
BUILTIN_KINDS = tuple(KINDS)
RELATIVE_NAMES = ("depth", "disparity")  # old stores: these were standardised per sample, by name


def define_kind(name: str, doc: str) -> str:
    """Make a plug-in's own kind known (idempotent); returns the name, for `Field(..., kind=...)`."""
    if not name.isidentifier():
        raise ValueError(f"a field kind is an identifier, not {name!r}")
    if name in BUILTIN_KINDS and KINDS[name] != doc:
        raise ValueError(f"{name!r} is one of omnimill's field kinds; pick another name for yours")
    KINDS[name] = doc
    return name


def check_kind(kind: str) -> None:
    """ValueError for a kind nobody defined: a typo fails where the field is declared."""
    if kind and kind not in KINDS:
        raise ValueError(f"unknown field kind {kind!r}; omnimill's are {', '.join(BUILTIN_KINDS)} "
                         "(a plug-in defines its own with omnimill.labelers.fields.define_kind)")


def kind_of(name: str, spec: dict) -> str:
    """A stored field's kind: the one its provenance records, else the guess for stores made before kinds."""
    return spec.get("kind") or guess_kind(name, spec.get("dtype", "float32"), tuple(spec.get("shape", ())))


def relative_of(name: str, spec: dict) -> bool:
    """Whether a stored field's values share no scale across samples (declared, else by the old name rule)."""
    if spec.get("kind"):
        return bool(spec.get("relative", False))
    return name in RELATIVE_NAMES


def guess_kind(name: str, dtype: str, shape: tuple) -> str:
    """The kind omnimill inferred before fields declared one: from dtype and shape, normals by name."""
    code = "U" if dtype == "str" else np.dtype(dtype).kind
    if code == "b":
        return "binary" if len(shape) == 2 else "scalar"
    if dtype == "uint8" and len(shape) == 3 and shape[-1] == 3:
        return "image"
    if code in "iu":
        return "classes" if len(shape) == 2 else "scalar"
    if code == "f":
        if "normal" in name and shape[-1:] == (3,):
            return "unit_vectors"
        return "embedding" if len(shape) == 1 else "continuous" if len(shape) >= 2 else "scalar"
    return "text" if code in "OUST" else "scalar"
