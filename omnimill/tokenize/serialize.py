"""Serializers: one label structure <-> a sequence of pieces, for the sequence tokenizer (sequence.py).

A piece is either a special token (`<box>`, `<c412>`, `<v7>`: one id each) or plain text (`Text`: a class
name, a metadata word, a caption; the text tokenizer turns it into ids). A sample's labels become a list of
**items** (a colour, a box, a person, a caption), each a tuple of quantized integers and texts; an item
becomes pieces, and parsing pieces gives the items back. The tokenizer drops whole items from the end to fit
L tokens (a caption that alone is too long is cut instead) and ends the row with `<eos>`, or `<cut>` when
something was dropped, then `<pad>`s.

A teacher declares its structure (`Teacher.serializer`: one of the names below, or a Serializer subclass of
its own, which a plug-in teacher brings without editing omnimill); `serializer_for` finds it.

    structure  teacher          one item                                                 items in order of
    palette    palette          <color> <v r> <v g> <v b> <v w>                            pixel share (stored)
    metadata   metadata         <name> <v q>   (numbers, bools)   or   <name> text  (words) declared fields
    detection  detection        <box> <c x0> <c y0> <c x1> <c y1> class [<v score>]       score (or area)
    sam        sam              <box> <c x0> <c y0> <c x1> <c y1> [<v score>]             area (or score)
    sam_instances  sam          <box> <c x0> <c y0> <c x1> <c y1> <m t1> ... <m t16>       area
                                (the instance's mask in its box, 64 x 64, as the 16 tokens of a trained
                                mask tokenizer: option mask_tokenizer = DIR; 4M-21's SAM instances)
    pose       pose             <person> <c x0> <c y0> <c x1> <c y1>, then per keypoint   detection score
                                <c x> <c y>, or <kp_none> (low score, or outside the crop)  (stored)
    caption    captioner, "" (alt-text)   text, then <sep> text for every further caption  stored
               or any one () str field of a teacher that declares no structure: a clip's `asr/text`,
               `video_captioner/caption`, `audio_captioner/caption`, `omni_caption/caption`
    transcript asr (whole teacher)  <seg> <t start> <t end> text                          time (stored)
               (any teacher without a declared structure whose fields hold segments (K, 2) seconds,
               segment_texts (K,) and count)

Quantization (q is the token's number):
- coordinates: moved into the crop's frame by `crop_boxes` / `crop_points` (0..1 of the crop's side; a
  flipped crop mirrors x, and pose swaps left and right keypoints), q = round(x * (coord_bins - 1)), so both
  edges are exact; 1000 bins as in 4M. Decoded coordinates are q / (coord_bins - 1), 0..1 of the crop.
- colour channels: q = c * color_bins // 256, decoded to the bin's middle; color_bins = 256 is exact.
- shares and scores (0..1): q = round(x * (bins - 1)).
- metadata numbers: the same over a declared [min, max], linearly or in log space; ints come back rounded.
- instance masks: cut to what is left of their box in the crop (mask.crop_instances) and encoded by the
  mask tokenizer; they come back as that tokenizer decodes them, so decode(encode(x)) == quantize(x) still holds.
- times (transcript): clip seconds, q = round(t / time_step), time_step 0.1 s, clipped to
  0..max_seconds (60 s, the longest clip the clip index makes by default): tokens <t0>..<t600>; decoded
  q * time_step, so a time comes back within 0.05 s (a later one as max_seconds).
- text: NFC, whitespace runs collapsed to one space, ends stripped; no lower-casing. The default byte-level
  BPE gives back exactly that; another text tokenizer gives back what its decoder makes of it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from omnimill.errors import UserError
from omnimill.labelers.schema import COCO_KEYPOINTS, KEYPOINT_THRESHOLD  # noqa: F401  (COCO_KEYPOINTS: re-exported)
from omnimill.tokenize.crops import crop_boxes, crop_points

COMMON = ("<pad>", "<eos>", "<cut>")  # every sequence tokenizer's first tokens: <pad> is id 0 when trained

COORD_BINS = 1000  # coordinate tokens <c0>..<c999> over a crop's side, as 4M
COLOR_BINS = 32  # levels per RGB channel (8 values each); 256 keeps colours exact
WEIGHT_BINS = 32  # levels of a palette colour's pixel share, 0..1
SCORE_BINS = 10  # levels of a detection score, when scores are serialized
NUMBER_BINS = 32  # levels of a metadata number

# Metadata fields of the `metadata` teacher: scale and range. log for sizes and sharpness, which span
# orders of magnitude; a spec in options["metadata"][name] overrides any key.
METADATA = {
    "brightness": {"scale": "linear", "min": 0.0, "max": 1.0},
    "contrast": {"scale": "linear", "min": 0.0, "max": 0.5},
    "saturation": {"scale": "linear", "min": 0.0, "max": 1.0},
    "colorfulness": {"scale": "linear", "min": 0.0, "max": 200.0},
    "entropy": {"scale": "linear", "min": 0.0, "max": 8.0},
    "sharpness": {"scale": "log", "min": 1.0, "max": 1e5},  # Laplacian variance: ~10 blurry .. ~1e4 crisp
    "orig_width": {"scale": "log", "min": 16, "max": 16384},  # 32 bins: ~1.25x per bin
    "orig_height": {"scale": "log", "min": 16, "max": 16384},
    "aspect_ratio": {"scale": "log", "min": 0.25, "max": 4.0},
    "file_bytes": {"scale": "log", "min": 1e3, "max": 1e8},
    "exif_rotated": {"scale": "bool"},
    "format": {"scale": "word"},
    "mode": {"scale": "word"},
}



class Text(str):
    """A piece of plain text, as opposed to a special token."""


def normalize_text(text) -> Text:
    """The one text normalisation: NFC, whitespace runs -> one space, ends stripped. Case is kept."""
    return Text(" ".join(unicodedata.normalize("NFC", str(text)).split()))


def coord(q: int) -> str:
    return f"<c{q}>"


def value(q: int) -> str:
    return f"<v{q}>"


def number(piece, prefix: str, limit: int) -> int:
    """`<c12>` -> 12 for prefix `<c`; ValueError for any other piece or a number >= limit."""
    if isinstance(piece, Text) or not (piece.startswith(prefix) and piece.endswith(">")):
        raise ValueError(piece)
    q = int(piece[len(prefix):-1])
    if not 0 <= q < limit:
        raise ValueError(piece)
    return q


def to_bins(x, bins: int) -> np.ndarray:
    """0..1 -> 0..bins-1, rounding to the nearest level; 0 and 1 are exact. NaN counts as 0."""
    return np.rint(np.clip(np.nan_to_num(np.asarray(x, np.float64)), 0, 1) * (bins - 1)).astype(np.int64)


def from_bins(q, bins: int) -> np.ndarray:
    return np.asarray(q, np.float64) / (bins - 1)


def split(pieces: list, starts: set) -> list[list]:
    """Pieces -> chunks, each beginning with one of the `starts` tokens; pieces before the first are dropped."""
    chunks = []
    for piece in pieces:
        if not isinstance(piece, Text) and piece in starts:
            chunks.append([piece])
        elif chunks:
            chunks[-1].append(piece)
    return chunks


def parse_chunks(pieces: list, starts: set, parse_one: Callable) -> list[tuple]:
    items = []
    for chunk in split(pieces, starts):
        try:
            items.append(parse_one(chunk))
        except (ValueError, IndexError, KeyError):
            pass  # a malformed item (a model's generated sequence can hold one) is skipped, not fatal
    return items


class Serializer:
    """One structure. Options live in `self.options` (saved in the tokenizer's config.json).

    A `cuttable` serializer's items are single texts, `(Text,)`, whose pieces are `[Text]` for the first item:
    the tokenizer may cut that text to fit L.
    """

    name: ClassVar[str]
    default_fields: ClassVar[tuple[str, ...]] = ()
    default_tokens: ClassVar[int] = 64  # L when neither the config nor the options give one
    cuttable: ClassVar[bool] = False
    uses_text: ClassVar[bool] = False  # whether the text tokenizer is needed at all
    training_samples: ClassVar[int | None] = None  # samples `configure` needs: None = the whole training split

    def __init__(self, fields, options: dict, roundtrip: Callable[[str], str] | None = None):
        self.fields = list(fields)
        self.options = dict(options)
        self.roundtrip = roundtrip or (lambda s: s)  # text -> what the text tokenizer gives back

    # --------------------------------------------------------------- what the values must look like
    def needs(self) -> dict[str, tuple]:
        """field -> per-sample shape; letters are sizes that must agree between fields."""
        raise NotImplementedError

    def describe(self) -> str:
        return ", ".join(f"{f} {('B', *s)}".replace("'", "") for f, s in self.needs().items())

    def check(self, values: dict) -> int:
        """Raise UserError unless `values` hold every needed field in the right shape; return B."""
        needs = self.needs()
        missing = [f for f in needs if f not in values]
        if missing:
            raise UserError(f"{self.name} tokenizer: values lack {', '.join(missing)}; it reads {self.describe()} "
                            f"and got {', '.join(sorted(values)) or 'nothing'}")
        n, sizes = None, {}
        for f, shape in needs.items():
            got = np.shape(values[f])
            ok = len(got) == 1 + len(shape) and (n is None or got[0] == n)
            for want, size in zip(shape, got[1:]):
                ok &= sizes.setdefault(want, size) == size if isinstance(want, str) else want == size
            if not ok:
                raise UserError(f"{self.name} tokenizer: {f} has shape {got}; it reads {self.describe()}")
            n = got[0]
        return int(n)

    # --------------------------------------------------------------- the structure's own parts
    def configure(self, values: dict, source: dict) -> None:
        """At training: fill in every option (defaults, sizes, names) so that decoding needs nothing else."""

    def specials(self) -> list[str]:
        """Special tokens beyond COMMON, in id order."""
        raise NotImplementedError

    def texts(self, values: dict):
        """Training text for the text tokenizer."""
        return iter(())

    def items(self, sample: dict, crop) -> list[tuple]:
        """One sample's values (per-sample arrays) -> quantized items, in sequence order."""
        raise NotImplementedError

    def tokens(self, item: tuple, first: bool) -> list:
        raise NotImplementedError

    def parse(self, pieces: list) -> list[tuple]:
        raise NotImplementedError

    def arrays(self, rows: list[list[tuple]]) -> dict[str, np.ndarray]:
        """Items of each sample -> arrays in the store's padded/count form, dequantized."""
        raise NotImplementedError

    @property
    def max_items(self) -> int:
        return int(self.options["max_items"])


# ------------------------------------------------------------------------------------------ palette


class Palette(Serializer):
    name = "palette"
    default_fields = ("colors", "weights", "count")

    def needs(self):
        return {"colors": ("K", 3), "weights": ("K",), "count": ()}

    def configure(self, values, source):
        o = self.options
        o["color_bins"] = int(o.get("color_bins", COLOR_BINS))
        o["weight_bins"] = int(o.get("weight_bins", WEIGHT_BINS))
        o["max_items"] = int(o.get("max_items", np.shape(values["colors"])[1]))
        if not (2 <= o["color_bins"] <= 256 and o["weight_bins"] >= 2):
            raise UserError("palette tokenizer: color_bins must be 2..256 and weight_bins >= 2")

    def specials(self):
        return ["<color>"] + [value(q) for q in range(max(self.options["color_bins"], self.options["weight_bins"]))]

    def items(self, sample, crop):  # a palette describes the whole view: crops leave it alone
        cb, wb = self.options["color_bins"], self.options["weight_bins"]
        n = min(int(sample["count"]), self.max_items)
        rgb = np.asarray(sample["colors"][:n], np.int64) * cb // 256
        share = to_bins(sample["weights"][:n], wb)
        return [(*map(int, rgb[k]), int(share[k])) for k in range(n)]

    def tokens(self, item, first):
        return ["<color>", *map(value, item)]

    def parse(self, pieces):
        cb, wb = self.options["color_bins"], self.options["weight_bins"]

        def one(chunk):
            if len(chunk) != 5:
                raise ValueError(chunk)
            return tuple(number(p, "<v", limit) for p, limit in zip(chunk[1:], (cb, cb, cb, wb)))

        return parse_chunks(pieces, {"<color>"}, one)

    def arrays(self, rows):
        cb, wb, k = self.options["color_bins"], self.options["weight_bins"], self.max_items
        colors, weights = np.zeros((len(rows), k, 3), np.uint8), np.zeros((len(rows), k), np.float32)
        count = np.zeros(len(rows), np.int32)
        for i, row in enumerate(rows):
            row = row[:k]
            count[i] = len(row)
            for j, (r, g, b, w) in enumerate(row):
                colors[i, j] = [(q * 256 + 128) // cb for q in (r, g, b)]  # the middle of the bin
                weights[i, j] = from_bins(w, wb)
        return {"colors": colors, "weights": weights, "count": count}


# ------------------------------------------------------------------------------------------ metadata


class Metadata(Serializer):
    name = "metadata"
    default_fields = tuple(METADATA)

    def needs(self):
        return {f: () for f in self.fields}

    @property
    def specs(self) -> dict:
        return self.options["metadata"]

    @property
    def uses_text(self):
        return any(self.specs[f]["scale"] == "word" for f in self.fields)

    def configure(self, values, source):
        given = self.options.get("metadata", {})
        specs = {}
        for f in self.fields:
            dtype = np.asarray(values[f]).dtype
            kind = "str" if dtype.kind in "OUST" else "bool" if dtype.kind == "b" else dtype.name
            spec = {**(METADATA.get(f) or _infer(f, values[f], kind)), **given.get(f, {}), "dtype": kind}
            if spec["scale"] in ("linear", "log"):
                spec["bins"] = int(spec.get("bins", NUMBER_BINS))
                lo, hi = float(spec["min"]), float(spec["max"])
                if not (hi > lo and spec["bins"] >= 2 and (spec["scale"] == "linear" or lo > 0)):
                    raise UserError(f"metadata tokenizer: {f} needs min < max, bins >= 2 (and min > 0 for log); "
                                    f"got {spec}")
            elif spec["scale"] == "bool":
                spec["bins"] = 2
            elif spec["scale"] != "word":
                raise UserError(f"metadata tokenizer: {f} has scale {spec['scale']!r}; use linear, log, bool or word")
            specs[f] = spec
        self.options["metadata"] = specs
        self.options["max_items"] = len(self.fields)

    def specials(self):
        bins = max([s.get("bins", 0) for s in self.specs.values()] + [0])
        return [f"<{f}>" for f in self.fields] + [value(q) for q in range(bins)]

    def texts(self, values):
        for f in self.fields:
            if self.specs[f]["scale"] == "word":
                yield from (normalize_text(v) for v in np.asarray(values[f]).ravel())

    def items(self, sample, crop):  # global values: crops leave them alone
        out = []
        for f in self.fields:
            spec, v = self.specs[f], sample[f]
            if spec["scale"] == "word":
                out.append((f, normalize_text(v)))
            elif spec["scale"] == "bool":
                out.append((f, int(bool(v))))
            else:
                out.append((f, _number_to_bin(float(v), spec)))
        return out

    def tokens(self, item, first):
        f, q = item
        return [f"<{f}>", q] if isinstance(q, Text) else [f"<{f}>", value(q)]

    def parse(self, pieces):
        names = {f"<{f}>": f for f in self.fields}

        def one(chunk):
            f = names[chunk[0]]
            spec = self.specs[f]
            if spec["scale"] == "word":
                return f, chunk[1] if len(chunk) > 1 and isinstance(chunk[1], Text) else Text("")
            return f, number(chunk[1], "<v", spec["bins"])

        return parse_chunks(pieces, set(names), one)

    def arrays(self, rows):
        out = {}
        for f in self.fields:
            spec = self.specs[f]
            if spec["scale"] == "word":
                out[f] = np.full(len(rows), "", dtype=object)
            elif spec["scale"] == "bool":
                out[f] = np.zeros(len(rows), bool)
            elif np.dtype(spec["dtype"]).kind == "f":
                out[f] = np.full(len(rows), np.nan, spec["dtype"])  # NaN: not in the sequence (cut)
            else:
                out[f] = np.full(len(rows), -1, spec["dtype"])
        for i, row in enumerate(rows):
            for f, q in reversed(row):  # the first mention of a field wins
                spec = self.specs[f]
                if spec["scale"] in ("word", "bool"):
                    out[f][i] = str(q) if spec["scale"] == "word" else bool(q)
                else:
                    x = _bin_to_number(q, spec)
                    out[f][i] = x if np.dtype(spec["dtype"]).kind == "f" else round(x)
        return out


def _infer(name: str, values, kind: str) -> dict:
    """A spec for a field METADATA does not know: words, bools, or linear over the training range."""
    if kind in ("str", "bool"):
        return {"scale": "word" if kind == "str" else "bool"}
    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)]
    lo, hi = (float(x.min()), float(x.max())) if len(x) else (0.0, 1.0)
    return {"scale": "linear", "min": lo, "max": hi if hi > lo else lo + 1.0}


def _number_to_bin(v: float, spec: dict) -> int:
    lo, hi = float(spec["min"]), float(spec["max"])
    v = min(max(lo if math.isnan(v) else v, lo), hi)
    if spec["scale"] == "log":
        v, lo, hi = math.log(v), math.log(lo), math.log(hi)
    return int(to_bins((v - lo) / (hi - lo), spec["bins"]))


def _bin_to_number(q: int, spec: dict) -> float:
    lo, hi, t = float(spec["min"]), float(spec["max"]), q / (spec["bins"] - 1)
    if spec["scale"] == "log":
        return math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))
    return lo + t * (hi - lo)


# ------------------------------------------------------------------------------------------ boxes


class Detection(Serializer):
    """Boxes with a class each: a class-name text (from id2label) or a class-id token `<cls{id}>`."""

    name = "detection"
    default_fields = ("boxes", "classes", "scores", "count")
    classes = True
    default_order = "score"

    @property
    def order(self) -> str:
        return self.options.get("order", self.default_order)

    @property
    def scores(self) -> bool:
        return bool(self.options.get("scores", False))

    @property
    def words(self) -> bool:
        return self.classes and self.options.get("class_tokens") == "words"

    @property
    def uses_text(self):
        return self.words

    def needs(self):
        n = {"boxes": ("K", 4)}
        if self.classes:
            n["classes"] = ("K",)
        if self.order == "score" or self.scores:
            n["scores"] = ("K",)
        return {**n, "count": ()}

    def configure(self, values, source):
        o = self.options
        if self.order not in ("score", "area"):
            raise UserError(f"{self.name} tokenizer: order must be score or area, not {self.order!r}")
        o.update(order=self.order, scores=self.scores, coord_bins=int(o.get("coord_bins", COORD_BINS)))
        o["max_items"] = int(o.get("max_items", np.shape(values["boxes"])[1]))
        if self.scores:
            o["score_bins"] = int(o.get("score_bins", SCORE_BINS))
        if not self.classes:
            return
        names = find_id2label(o, source)
        o["class_tokens"] = o.get("class_tokens") or ("words" if names else "ids")
        if o["class_tokens"] == "words":
            if not names:
                raise UserError(f"{self.name} tokenizer: class_tokens 'words' needs the classes' names: pass "
                                "id2label in the options (or the teacher's provenance as source), or use 'ids'")
            o["id2label"] = {str(i): n for i, n in sorted(names.items())}
        elif o["class_tokens"] == "ids":
            seen = np.asarray(values["classes"])
            o["num_classes"] = int(o.get("num_classes") or max([*names, int(seen.max(initial=-1))]) + 1)
        else:
            raise UserError(f"{self.name} tokenizer: class_tokens must be words or ids, not {o['class_tokens']!r}")

    @cached_property
    def names(self) -> dict[int, Text]:
        return {int(i): normalize_text(n) for i, n in self.options["id2label"].items()}

    @cached_property
    def class_of(self) -> dict[str, int]:
        """Decoded class text -> id: names as the text tokenizer gives them back."""
        out = {}
        for i, n in sorted(self.names.items()):
            out.setdefault(self.roundtrip(n), i)
        return out

    def specials(self):
        o = self.options
        out = ["<box>"] + [coord(q) for q in range(o["coord_bins"])]
        if self.scores:
            out += [value(q) for q in range(o["score_bins"])]
        if self.classes and not self.words:
            out += [f"<cls{i}>" for i in range(o["num_classes"])]
        return out

    def texts(self, values):
        if not self.words:
            return
        yield from self.names.values()  # every name once, then as often as it was detected
        count = np.asarray(values["count"])
        for classes, n in zip(np.asarray(values["classes"]), count):
            yield from (self.names[int(c)] for c in classes[:n] if int(c) in self.names)

    def items(self, sample, crop):
        n = min(int(sample["count"]), len(sample["boxes"]))
        boxes, keep = crop_boxes(np.asarray(sample["boxes"][:n], np.float32), crop)
        idx = np.flatnonzero(keep)
        if self.order == "area":  # area inside the crop: what is left of each box after cropping
            area = (boxes[idx, 2] - boxes[idx, 0]) * (boxes[idx, 3] - boxes[idx, 1])
            idx = idx[np.argsort(-area, kind="stable")]
        else:
            idx = idx[np.argsort(-np.asarray(sample["scores"][:n], np.float64)[idx], kind="stable")]
        idx = idx[:self.max_items]
        m = len(idx)
        q = to_bins(boxes[idx], self.options["coord_bins"])
        classes = [self._class(int(c)) for c in np.asarray(sample["classes"])[idx]] if self.classes else [-1] * m
        scores = to_bins(np.asarray(sample["scores"])[idx], self.options["score_bins"]) if self.scores else [0] * m
        return [(*map(int, q[j]), classes[j], int(scores[j])) for j in range(m)]

    def _class(self, c: int) -> int:
        known = c in self.names if self.words else 0 <= c < self.options["num_classes"]
        if not known:
            raise UserError(f"{self.name} tokenizer: class id {c} has no token (the tokenizer knows "
                            f"{len(self.names) if self.words else self.options['num_classes']} classes); retrain it")
        return c

    def tokens(self, item, first):
        *box, c, s = item
        out = ["<box>", *map(coord, box)]
        if self.classes:
            out.append(self.names[c] if self.words else f"<cls{c}>")
        if self.scores:
            out.append(value(s))
        return out

    def parse(self, pieces):
        o = self.options

        def one(chunk):
            if len(chunk) < 5:
                raise ValueError(chunk)
            box = [number(p, "<c", o["coord_bins"]) for p in chunk[1:5]]
            rest, c, s = chunk[5:], -1, 0
            if self.classes and rest and (isinstance(rest[0], Text) or rest[0].startswith("<cls")):
                c = self.class_of.get(rest[0], -1) if self.words else number(rest[0], "<cls", o["num_classes"])
                rest = rest[1:]
            if self.scores and rest:
                s = number(rest[0], "<v", o["score_bins"])
            return (*box, c, s)

        return parse_chunks(pieces, {"<box>"}, one)

    def arrays(self, rows):
        b, k, o = len(rows), self.max_items, self.options
        out = {"boxes": np.zeros((b, k, 4), np.float32), "count": np.zeros(b, np.int32)}
        if self.classes:
            out["classes"] = np.full((b, k), -1, np.int32)
        if self.scores:
            out["scores"] = np.zeros((b, k), np.float32)
        for i, row in enumerate(rows):
            row = row[:k]
            out["count"][i] = len(row)
            for j, (*box, c, s) in enumerate(row):
                out["boxes"][i, j] = from_bins(box, o["coord_bins"])
                if self.classes:
                    out["classes"][i, j] = c
                if self.scores:
                    out["scores"][i, j] = from_bins(s, o["score_bins"])
        return out


class SamBoxes(Detection):
    """SAM instances as boxes (the instance map itself is a spatial tokenizer's job); largest first."""

    name = "sam"
    default_fields = ("boxes", "scores", "count")
    classes = False
    default_order = "area"


class SamInstances(Serializer):
    """SAM instances with their masks, as 4M-21: per instance its box, then its mask's tokens; largest first.

    The masks (the `masks64` field: each instance's mask in its box, m x m) are tokenized by a trained mask
    tokenizer (tokenize/mask.py), named by the option mask_tokenizer (its directory; its sha256 is recorded,
    and a changed tokenizer is refused, since these tokens mean what its codebook means).
    """

    name = "sam_instances"
    default_fields = ("boxes", "masks64", "count")
    default_tokens = 256  # 4 + 16 + 1 = 21 tokens an instance: 12 instances
    training_samples = 64  # configure reads shapes only: no need to hold K masks of every training sample

    def needs(self):
        return {"boxes": ("K", 4), "masks64": ("K", "M", "M"), "count": ()}

    def configure(self, values, source):
        from omnimill.tokenize.base import directory_hash

        o = self.options
        if not o.get("mask_tokenizer"):
            raise UserError("sam_instances tokenizer: give the option mask_tokenizer = DIR, a mask tokenizer trained "
                            "with `omnimill tokenizer train STORE --field sam/masks64 --kind mask`")
        o["mask_tokenizer"] = str(Path(o["mask_tokenizer"]).resolve())
        o["mask_tokenizer_sha256"] = directory_hash(o["mask_tokenizer"])
        tok = self.mask_tokenizer
        side = np.shape(values["masks64"])[-1]
        if tok.mask_size != side:
            raise UserError(f"sam_instances tokenizer: the masks are {side} x {side} but the mask tokenizer in "
                            f"{o['mask_tokenizer']} takes {tok.mask_size} x {tok.mask_size}")
        o.update(coord_bins=int(o.get("coord_bins", COORD_BINS)), mask_size=side, mask_vocab=tok.vocab_size,
                 mask_tokens=tok.tokens_per_instance)
        o["max_items"] = int(o.get("max_items", np.shape(values["boxes"])[1]))

    @cached_property
    def mask_tokenizer(self):
        from omnimill.tokenize.base import directory_hash
        from omnimill.tokenize.mask import load_mask_tokenizer

        o = self.options
        tok = load_mask_tokenizer(o["mask_tokenizer"])
        if o.get("mask_tokenizer_sha256") and directory_hash(o["mask_tokenizer"]) != o["mask_tokenizer_sha256"]:
            raise UserError(f"the mask tokenizer in {o['mask_tokenizer']} changed since this sam_instances tokenizer "
                            "was trained; its tokens would mean other masks: retrain this one")
        return tok

    def specials(self):
        o = self.options
        return ["<box>"] + [coord(q) for q in range(o["coord_bins"])] + [f"<m{q}>" for q in range(o["mask_vocab"])]

    def items(self, sample, crop):
        from omnimill.tokenize.mask import crop_instances

        n = min(int(sample["count"]), len(sample["boxes"]))
        boxes, masks, keep = crop_instances(sample["boxes"][:n], sample["masks64"][:n], crop)
        idx = np.flatnonzero(keep)
        area = (boxes[idx, 2] - boxes[idx, 0]) * (boxes[idx, 3] - boxes[idx, 1])  # what is left in the crop
        idx = idx[np.argsort(-area, kind="stable")][:self.max_items]
        q = to_bins(boxes[idx], self.options["coord_bins"])
        tokens = self.mask_tokenizer.encode_masks(masks[idx])
        return [(*map(int, q[j]), tuple(map(int, tokens[j]))) for j in range(len(idx))]

    def tokens(self, item, first):
        *box, mask = item
        return ["<box>", *map(coord, box), *(f"<m{t}>" for t in mask)]

    def parse(self, pieces):
        o = self.options

        def one(chunk):
            if len(chunk) != 5 + o["mask_tokens"]:
                raise ValueError(chunk)
            box = [number(p, "<c", o["coord_bins"]) for p in chunk[1:5]]
            return (*box, tuple(number(p, "<m", o["mask_vocab"]) for p in chunk[5:]))

        return parse_chunks(pieces, {"<box>"}, one)

    def arrays(self, rows):
        b, k, o = len(rows), self.max_items, self.options
        m = o["mask_size"]
        out = {"boxes": np.zeros((b, k, 4), np.float32), "masks64": np.zeros((b, k, m, m), bool),
               "count": np.zeros(b, np.int32)}
        where, tokens = [], []
        for i, row in enumerate(rows):
            row = row[:k]
            out["count"][i] = len(row)
            for j, (*box, mask) in enumerate(row):
                out["boxes"][i, j] = from_bins(box, o["coord_bins"])
                where.append((i, j))
                tokens.append(mask)
        if tokens:  # every instance of the batch through the decoder at once
            decoded = self.mask_tokenizer.decode_masks(np.array(tokens, np.int64))
            rows_, cols = zip(*where)
            out["masks64"][list(rows_), list(cols)] = decoded
        return out


def find_id2label(options: dict, source: dict) -> dict[int, str]:
    """Class names: options["id2label"], else source["id2label"], else the teacher provenance's config."""
    for where in (options, source, source.get("config", {}), source.get("provenance", {}).get("config", {})):
        if isinstance(where, dict) and where.get("id2label"):
            return {int(i): str(n) for i, n in where["id2label"].items()}
    return {}


# ------------------------------------------------------------------------------------------ pose


class Pose(Serializer):
    name = "pose"
    default_fields = ("keypoints", "keypoint_scores", "boxes", "count")
    default_tokens = 128  # a person takes 5 + 17..34 tokens: 128 holds 3 people, 64 only one

    def needs(self):
        return {"keypoints": ("P", "J", 2), "keypoint_scores": ("P", "J"), "boxes": ("P", 4), "count": ()}

    def configure(self, values, source):
        o = self.options
        o["coord_bins"] = int(o.get("coord_bins", COORD_BINS))
        o["keypoint_threshold"] = float(o.get("keypoint_threshold", KEYPOINT_THRESHOLD))
        o["max_items"] = int(o.get("max_items", np.shape(values["keypoints"])[1]))
        config = source.get("config", source.get("provenance", {}).get("config", {}))
        names = o.get("keypoints") or source.get("keypoints") or config.get("keypoints") or COCO_KEYPOINTS
        if len(names) != np.shape(values["keypoints"])[2]:
            raise UserError(f"pose tokenizer: {np.shape(values['keypoints'])[2]} keypoints per person but "
                            f"{len(names)} names; pass their names (left_*/right_* pairs) as option keypoints")
        o["keypoints"] = list(names)

    @cached_property
    def flip_order(self) -> np.ndarray:
        """Keypoint j of a mirrored person is keypoint flip_order[j] of the original: left <-> right."""
        names = self.options["keypoints"]
        swap = {"left": "right", "right": "left"}
        mirrored = [re.sub(r"left|right", lambda m: swap[m.group()], n) for n in names]
        return np.array([names.index(m) if m in names else j for j, m in enumerate(mirrored)])

    def specials(self):
        return ["<person>", "<kp_none>"] + [coord(q) for q in range(self.options["coord_bins"])]

    def items(self, sample, crop):
        bins = self.options["coord_bins"]
        n = min(int(sample["count"]), len(sample["boxes"]))
        boxes, keep = crop_boxes(np.asarray(sample["boxes"][:n], np.float32), crop)
        xy, inside = crop_points(np.asarray(sample["keypoints"][:n], np.float32), crop)
        visible = inside & (np.asarray(sample["keypoint_scores"][:n]) >= self.options["keypoint_threshold"])
        if int(crop[4]):  # mirrored: the left wrist now sits where the right one was
            xy, visible = xy[:, self.flip_order], visible[:, self.flip_order]
        qbox, qxy = to_bins(boxes, bins), to_bins(xy, bins)
        return [(*map(int, qbox[p]), tuple((int(qxy[p, j, 0]), int(qxy[p, j, 1])) if visible[p, j] else None
                                             for j in range(xy.shape[1])))
                for p in np.flatnonzero(keep)[:self.max_items]]

    def tokens(self, item, first):
        *box, keypoints = item
        out = ["<person>", *map(coord, box)]
        for kp in keypoints:
            out += ["<kp_none>"] if kp is None else [coord(kp[0]), coord(kp[1])]
        return out

    def parse(self, pieces):
        bins, j = self.options["coord_bins"], len(self.options["keypoints"])

        def one(chunk):
            box = [number(p, "<c", bins) for p in chunk[1:5]]
            keypoints, at = [], 5
            while len(keypoints) < j:
                if chunk[at] == "<kp_none>" and not isinstance(chunk[at], Text):
                    keypoints.append(None)
                    at += 1
                else:
                    keypoints.append((number(chunk[at], "<c", bins), number(chunk[at + 1], "<c", bins)))
                    at += 2
            if len(box) != 4 or at != len(chunk):
                raise ValueError(chunk)
            return (*box, tuple(keypoints))

        return parse_chunks(pieces, {"<person>"}, one)

    def arrays(self, rows):
        b, p, j, bins = len(rows), self.max_items, len(self.options["keypoints"]), self.options["coord_bins"]
        out = {"keypoints": np.zeros((b, p, j, 2), np.float32), "keypoint_scores": np.zeros((b, p, j), np.float32),
               "boxes": np.zeros((b, p, 4), np.float32), "count": np.zeros(b, np.int32)}
        for i, row in enumerate(rows):
            row = row[:p]
            out["count"][i] = len(row)
            for k, (*box, keypoints) in enumerate(row):
                out["boxes"][i, k] = from_bins(box, bins)
                for m, kp in enumerate(keypoints):
                    if kp is not None:  # scores come back as visibility: 1 in the sequence, 0 not
                        out["keypoints"][i, k, m] = from_bins(kp, bins)
                        out["keypoint_scores"][i, k, m] = 1.0
        return out


# ------------------------------------------------------------------------------------------ captions


class Captions(Serializer):
    """The store's alt-text `caption` (B,) str, or the caption teacher's `captions` (B, K) str + `count`."""

    name = "caption"
    default_fields = ("captions", "count")
    cuttable = True
    uses_text = True

    @property
    def text_field(self) -> str:
        return next(f for f in self.fields if f != "count")

    @property
    def multi(self) -> bool:
        return "count" in self.fields

    def needs(self):
        return {self.text_field: ("K",), "count": ()} if self.multi else {self.text_field: ()}

    def configure(self, values, source):
        self.options["max_items"] = int(np.shape(values[self.text_field])[1]) if self.multi else 1

    def specials(self):
        return ["<sep>"]

    def _texts(self, sample) -> list:
        texts = sample[self.text_field]
        texts = texts[:int(sample["count"])] if self.multi else [texts]
        return [t for t in map(normalize_text, texts) if t]

    def texts(self, values):
        for i in range(len(values[self.text_field])):
            yield from self._texts({f: values[f][i] for f in self.needs()})

    def items(self, sample, crop):  # words such as "left" are not mirrored with a flipped crop
        return [(t,) for t in self._texts(sample)[:self.max_items]]

    def tokens(self, item, first):
        return [item[0]] if first else ["<sep>", item[0]]

    def parse(self, pieces):
        texts = [""]
        for piece in pieces:
            if isinstance(piece, Text):
                texts[-1] += piece
            elif piece == "<sep>":
                texts.append("")
        return [(Text(t),) for t in texts if t]

    def arrays(self, rows):
        texts = [[t for (t,) in row if t][:self.max_items] for row in rows]
        if not self.multi:
            out = np.empty(len(rows), dtype=object)
            out[:] = [str(t[0]) if t else "" for t in texts]
            return {self.text_field: out}
        out = np.full((len(rows), self.max_items), "", dtype=object)
        for i, row in enumerate(texts):
            out[i, :len(row)] = [str(t) for t in row]
        return {self.text_field: out, "count": np.array([len(t) for t in texts], np.int32)}


# ------------------------------------------------------------------------------------------ transcripts

TIME_STEP = 0.1  # seconds per time token of a transcript
MAX_SECONDS = 60.0  # last time token: corpus/clip.py's DEFAULT_MAX_SECONDS, the longest clip it makes


class Transcript(Serializer):
    """Speech with times (asr): segments (K, 2) (start, end) clip seconds, segment_texts (K,) str, count.

    An item is one segment, `<seg> <t start> <t end> text`, in stored (time) order; a clip without speech is
    an empty sequence. Times are not moved by crops (they are not in the picture)."""

    name = "transcript"
    default_fields = ("segments", "segment_texts", "count")
    uses_text = True

    def needs(self):
        return {"segments": ("K", 2), "segment_texts": ("K",), "count": ()}

    def configure(self, values, source):
        self.options["max_items"] = int(np.shape(values["segments"])[1])
        self.options.setdefault("time_step", TIME_STEP)
        self.options.setdefault("max_seconds", MAX_SECONDS)

    @property
    def time_bins(self) -> int:
        return int(round(float(self.options["max_seconds"]) / float(self.options["time_step"]))) + 1

    def specials(self):
        return ["<seg>", *(f"<t{q}>" for q in range(self.time_bins))]

    def _segments(self, sample):
        n = min(int(sample["count"]), len(sample["segments"]))
        return [(a, b, normalize_text(t)) for (a, b), t in zip(sample["segments"][:n], sample["segment_texts"][:n])]

    def texts(self, values):
        for i in range(len(values["segments"])):
            sample = {f: values[f][i] for f in self.needs()}
            yield from (t for *_, t in self._segments(sample) if t)

    def _time(self, seconds) -> int:
        q = int(round(float(np.nan_to_num(seconds)) / float(self.options["time_step"])))
        return min(max(q, 0), self.time_bins - 1)

    def items(self, sample, crop):
        return [(self._time(a), self._time(b), t) for a, b, t in self._segments(sample)[:self.max_items]]

    def tokens(self, item, first):
        start, end, text = item
        return ["<seg>", f"<t{start}>", f"<t{end}>", *([text] if text else [])]

    def parse(self, pieces):
        def one(chunk):
            start, end = (number(p, "<t", self.time_bins) for p in chunk[1:3])
            text = "".join(p for p in chunk[3:] if isinstance(p, Text))
            return start, end, Text(text)

        return parse_chunks(pieces, {"<seg>"}, one)

    def arrays(self, rows):
        k, step = self.max_items, float(self.options["time_step"])
        segments = np.zeros((len(rows), k, 2), np.float32)
        texts = np.full((len(rows), k), "", dtype=object)
        count = np.zeros(len(rows), np.int32)
        for i, row in enumerate(rows):
            row = row[:k]
            count[i] = len(row)
            for j, (start, end, text) in enumerate(row):
                segments[i, j] = (start * step, end * step)
                texts[i, j] = str(text)
        return {"segments": segments, "segment_texts": texts, "count": count}


SERIALIZERS = {s.name: s for s in (Palette, Metadata, Detection, SamBoxes, SamInstances, Pose, Captions, Transcript)}


def structure_of_fields(specs: dict) -> str | None:
    """The structure of fields {name: {shape, dtype, ...}} of a teacher that declares none: segments +
    segment_texts + count are a transcript; a text field of shape () is a caption (the first one); else None."""
    if {"segments", "segment_texts", "count"} <= set(specs):
        return "transcript"
    texts = [f for f, spec in specs.items() if spec.get("dtype") == "str" and not list(spec.get("shape", []))]
    return "caption" if texts else None


def serializer_for(teacher: str, options: dict, provenance: dict | None = None,
                   fields: dict | None = None) -> type[Serializer]:
    """The serializer of a teacher's labels: the one `options["structure"]` names if given; for the store's
    top-level alt-text (teacher ""), captions; else what the teacher's class declares (`Teacher.serializer`),
    the class found from its store provenance (spec) or its name by registry.stored_teacher, which imports
    nothing a store names unless the user trusts it; a class that declares none is read by its fields
    (structure_of_fields: a clip's transcript, a caption), `fields` {name: spec} of those read, else all its
    provenance lists. Without a class, a teacher named like a structure ("caption") gets that structure."""
    from omnimill.labelers.registry import stored_teacher

    spec = options.get("serializer_teacher") or (provenance or {}).get("spec")
    cls = stored_teacher(teacher, {"spec": spec} if spec else None) if teacher or spec else None
    declared = getattr(cls, "serializer", None)
    own = declared if isinstance(declared, type) and issubclass(declared, Serializer) else None
    name = options.get("structure") or ("caption" if teacher == "" else declared if isinstance(declared, str) else
                                        own.name if own else None)
    if name is None and cls is not None:  # a known teacher that declares no structure
        name = structure_of_fields(fields or (provenance or {}).get("fields") or {})
    if name is None and cls is None:
        name = teacher  # no class to ask (a group made by hand): a structure's own name, as before declarations
    if own is not None and name == own.name:
        return own
    if name not in SERIALIZERS:
        found = f" (its teacher {spec} is a plug-in neither installed for omnimill, entry point " \
            "omnimill.teachers, nor imported: a store or tokenizer cannot choose code to import)" \
            if spec and cls is None and ":" in spec else ""
        raise UserError(f"no sequence serializer for teacher {teacher!r}{found}; pick one with the option "
                        f"structure = {' | '.join(SERIALIZERS)}")
    return SERIALIZERS[name]


def structure_for(teacher: str, options: dict, provenance: dict | None = None) -> str:
    """The name of the structure of a teacher's labels (see serializer_for)."""
    return serializer_for(teacher, options, provenance).name


def make_serializer(fields, options: dict, roundtrip=None, kind: type[Serializer] | None = None) -> Serializer:
    """The serializer a trained tokenizer's options describe: a built-in structure, else a plug-in teacher's
    own (`options["serializer_teacher"]` names the teacher), unless `kind` is given (as pickles carry it)."""
    if kind is None:
        kind = SERIALIZERS.get(options["structure"]) or serializer_for(options.get("serializer_teacher", ""), options)
    return kind(fields, options, roundtrip)
