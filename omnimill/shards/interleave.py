"""Interleaved documents as packed token sequences (MM1-style), and the shard set that holds them.

A document is an ordered list of segments, each {"text": str} or {"image": IMAGE_KEY, "alt": str | None,
"meta": dict}, IMAGE_KEY = f"{DOC_KEY}/img_{i:02d}". `interleave` turns one into ids, `Packer`/`pack` cut
documents into sequences of `seq_len` tokens, `write_interleaved` writes them as WebDataset tars and
`read_shard`/`verify_interleaved` read and check them back; `InterleavedDataset` streams them with exact
resume. `pack_store` (paths in, for a CLI verb) and `pack_documents` do it all in one stream (or
`pack_part` + `finish_parts`, a part per unit of a job), from `stored_documents` (a document store's kept
documents) with image tokens from a token store (`StoreImageTokens`) or placeholders.

One id space per shard set (`Vocab`):

    [0, v_text)                   text ids (the sequence tokenizer's text vocabulary)
    [v_text, v_text + v_image)    image ids: an image tokenizer's tokens + v_text ("tokens" mode);
                                  v_image = 0 in "placeholders" mode
    BOI = v_text + v_image, EOI = +1, PAD = +2, IMG_SLOT = +3, EOD = +4;  vocab = v_text + v_image + 5

    a document:   text ids ... BOI <g*g image ids> EOI [caption ids] ... text ids ... BOI ... EOI ... EOD
                  placeholders: BOI IMG_SLOT x slots EOI (MM1: 144 slots for its own vision encoder)

An image the caller has no tokens for (not labelled, fetch failed) is dropped from the document and counted
(`tally["images_without_tokens"]`); an empty text segment adds nothing. An image segment's meta is never put
in the sequence.

Captions (VeCap-style, `Captions`, rule `captions` none | alt | synthetic | both, default none): right after
an image's EOI comes its caption as text ids, then the document goes on. none: no caption (the alt text stays
out); alt: the segment's alt text; synthetic: the `captioner` teacher's caption (captions[0]) of IMAGE_KEY in
an image label store (`StoreCaptions`); both: alt, a newline, synthetic. Every caption ends with a newline,
so the document's next text does not run on from it. An image without the chosen caption
gets none; under both, an image with only one of them gets that one. Each sequence's json records the source
each of its images got ("alt" | "synthetic" | "both" | "none"); the manifest records the rule, the
separator and the label store (uri, uuid, teacher, labels_id), and stats["captions"] the images per source.
A dropped image (no tokens, too long) takes its caption with it.

Packing rules (`Packer`), greedy, documents in order, one sequence open at a time:
  1. A document is a run of blocks: each image is one block (BOI .. EOI, never split), the text between
     images is one block (text ids, and the document's EOD at its end).
  2. A text block that fits in what is left of the sequence goes in whole. One that does not fit fills
     the rest of the sequence (cut at a token boundary) and continues at the start of the next one: text
     is the only thing ever cut, so sequences are full except where an image forced a close (rules 3, 4)
     and the last one.
  3. An image block that does not fit in what is left closes the sequence (PAD to the end) and opens the
     next one. An image block longer than seq_len can never fit: it is dropped and recorded
     (`Packer.dropped`; `pack_documents` drops it before packing, with its caption, in
     stats["images_too_long"]), and its document goes on without it.
  4. At most `max_images` images per sequence: the next image closes a sequence that holds max_images.
  5. A sequence holds the end of one document and the start of the next when both fit; each document's
     DOC_KEY is listed in `docs` of every sequence it has tokens in, in order.
  Padding share = PAD tokens / all tokens of the written sequences (the last sequence is padded too).

Held-out split, by document (`pack_documents`, `pack_part`: `holdout` F, default 0.05, and `seed` S): before
packing, a document goes to "heldout" when store.base.held_out(DOC_KEY, F, S) says so, else to "train" (the
same rule as every other omnimill split, so one corpus splits the same way everywhere). Each split has its
own Packer and its own shards: no sequence, and no shard, mixes the two, and a document cut across
sequences is wholly in one split. `InterleavedDataset(split=...)` reads one split's shards.

The shard set (format omnimill.interleaved/1), a folder OUT:

    OUT/manifest.json   {"format", "seq_len", "max_images", "image_mode": "tokens" | "placeholders", "slots",
                         "image_tokens" (ids between BOI and EOI of every image: the token store's tokens per
                         image in tokens mode, slots in placeholder mode; null in tokens mode when the packer
                         was not told), "v_text", "v_image", "specials": {BOI, EOI, PAD, IMG_SLOT, EOD}, "vocab",
                         "text_tokenizer", "image_tokenizer",
                         "holdout": {"fraction": F, "seed": S, "by": "document",
                                     "n": {"train": sequences, "heldout": sequences}},
                         "captions": {"rule", "separator", and for synthetic / both: "labels", "labels_uuid",
                                      "teacher", "labels_id"},
                         "shards": [{"url", "n", "sha256", "split"}], "n",
                         "padding_share", "stats" (from pack_documents: what was packed and dropped)}
                         written last: a folder without one is unfinished. The shards are listed by split,
                         train then heldout, each in packing order.
    OUT/shard-000000.tar  per sequence, in order:
                            <key>.tokens   seq_len x int32, raw little-endian bytes
                            <key>.json     {"images": [IMAGE_KEY...], "docs": [DOC_KEY...], "n_content": int,
                                            "split": "train" | "heldout",
                                            "captions": {IMAGE_KEY: source} (not under rule none)}

A set written before splits by document (or by `write_interleaved`, from `pack`) has no "holdout", no
shard "split" and no sequence "split": it reads as before with split=None, and its readers split by
sequence key themselves (train/causal.py's PackedLoader did). A set written before "image_tokens" has none:
its readers measure the first image (train/causal.tokens_per_image).

A set may also be packed in parts (`pack_part`, one per unit of a parallel or resumable job, then
`finish_parts`): each part packs its documents on its own (one padded sequence per split at its end) into
part-PPPPPP-KKKKKK.tar with keys pPPPPPPs#########; the manifest lists the parts' shards by split, in part
order within a split. engine/pack.py's job also leaves OUT/part-PPPPPP.json (a part's row, its marker:
`write_part_row`) and OUT/pack.json (the job's settings: `write_job`); readers ignore both.

Keys are `s` + the sequence number (9 digits): no dots, so WebDataset's split at the first dot gives back
`tokens` and `json`. Tars are written as shards/wds.py writes them (GNU format, mtime 0, uid/gid 0): the
same documents pack to byte-identical shards. `url` is the shard's name relative to OUT.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import fsspec
import numpy as np
import torch

from omnimill.errors import UserError
from omnimill.paths import refuse_overlap
from omnimill.shards.manifest import MANIFEST, join
from omnimill.shards.wds import SHARD_NAME, atomic_write

FORMAT = "omnimill.interleaved/1"
SEQ_LEN = 4096  # MM1's sequence length
MAX_IMAGES = 16  # MM1: at most 16 images per sequence
MM1_SLOTS = 144  # MM1: image tokens per image after its vision-language connector
SAMPLES_PER_SHARD = 1000  # 1000 x 4096 x 4 bytes = 16 MB per shard
SPECIALS = ("BOI", "EOI", "PAD", "IMG_SLOT", "EOD")  # in id order after the image ids
IMAGE_MODES = ("tokens", "placeholders")
TOKENS, META = "tokens", "json"  # member extensions
KEY = re.compile(r"(p\d{6})?s\d{9}")  # s<number>, or p<part>s<number> (pack_part)
PART_NAME = "part-{:06d}-{:06d}.tar"  # part, shard within the part
CAPTION_RULES = ("none", "alt", "synthetic", "both")  # which caption follows an image (Captions)
CAPTION_SOURCES = ("alt", "synthetic", "both", "none")  # what each image got, recorded per sequence
CAPTION_SEPARATOR = "\n"  # between alt text and synthetic caption under "both", and after every caption (so
#                           the document's next text does not run on from it: "a tabby cat\nChelsea likes ...")
SPLITS = ("train", "heldout")  # a packed set's splits, by document (store.base.held_out on DOC_KEY)
HOLDOUT = 0.05  # share of documents held out, by default
PART_ROW = "part-{:06d}.json"  # a part's row (what pack_part returns), written after its shards: its marker
JOB = "pack.json"  # a packing job's settings (engine/pack.py), written before its first part
# what force may remove, and manifest.json: shards, parts' shards and rows, the job's settings, their temp files
OURS = re.compile(r"\.?((shard-\d{6,}|part-\d{6,}-\d{6,})\.tar|(part-\d{6,}|pack)\.json)(\.tmp)?")


# ---------------------------------------------------------------------------------------------- ids
@dataclass(frozen=True)
class Vocab:
    """The shard set's id space: text ids, then image ids, then the five specials."""

    v_text: int
    v_image: int = 0  # 0: placeholder mode (no image ids)

    def __post_init__(self):
        if self.v_text < 1 or self.v_image < 0:
            raise UserError(f"vocab: v_text must be >= 1 and v_image >= 0, not {self.v_text}, {self.v_image}")

    @property
    def specials(self) -> dict[str, int]:
        base = self.v_text + self.v_image
        return {name: base + i for i, name in enumerate(SPECIALS)}

    @property
    def size(self) -> int:
        return self.v_text + self.v_image + len(SPECIALS)

    BOI = property(lambda self: self.v_text + self.v_image)
    EOI = property(lambda self: self.v_text + self.v_image + 1)
    PAD = property(lambda self: self.v_text + self.v_image + 2)
    IMG_SLOT = property(lambda self: self.v_text + self.v_image + 3)
    EOD = property(lambda self: self.v_text + self.v_image + 4)


def text_encoder(tokenizer) -> Callable[[str], list[int]]:
    """text -> ids with omnimill's sequence tokenizer (its `.text`, an HF `tokenizers.Tokenizer`) or an HF
    tokenizer itself: plain text ids, no special tokens added. (shards/ may not import tokenize/: duck-typed.)"""
    text = getattr(tokenizer, "text", tokenizer)
    if not hasattr(text, "encode"):
        raise UserError(f"{type(tokenizer).__name__} is not a text tokenizer (no encode)")
    return lambda s: text.encode(s, add_special_tokens=False).ids if s else []


def interleave(document: list[dict], encode_text: Callable[[str], list[int]], vocab: Vocab,
               image_tokens=None, slots: int | None = None, tally: Counter | None = None,
               captions: Captions | None = None, chosen: dict[str, str] | None = None,
               max_block: int | None = None, too_long: list[str] | None = None,
               per_image: int | None = None) -> tuple[np.ndarray, list[str]]:
    """One document -> (ids int32, the IMAGE_KEYs of the images kept, in order). Exactly one of
    `image_tokens` (anything with `.get(IMAGE_KEY)` -> its g*g tokens in [0, v_image) or None: a dict, or
    `StoreImageTokens` over a token store; "tokens" mode) and `slots` (placeholder mode) is given. An image
    with no tokens is dropped and counted in `tally["images_without_tokens"]`; with `max_block` (the
    sequence length), an image whose block (BOI .. EOI) is longer is dropped and its key added to
    `too_long`. With `captions`, each kept image's caption (`Captions.choose`) follows its EOI as text, and
    `chosen[IMAGE_KEY]` records its source; a dropped image takes its caption with it. With `per_image` (the
    manifest's image_tokens), an image with another number of tokens is a UserError."""
    if (image_tokens is None) == (slots is None):
        raise UserError("interleave: give image_tokens (tokens mode) or slots (placeholder mode), not both or neither")
    if slots is not None and slots < 1:
        raise UserError(f"interleave: slots must be >= 1, not {slots}")
    tally = tally if tally is not None else Counter()
    pieces, images = [], []
    for segment in document:
        if "text" in segment:
            pieces.append(text_ids(segment["text"], encode_text, vocab))
            continue
        key = segment["image"]
        if slots is not None:
            body = np.full(slots, vocab.IMG_SLOT, np.int32)
        else:
            tokens = image_tokens.get(key)
            if tokens is None:
                tally["images_without_tokens"] += 1
                continue
            tokens = np.asarray(tokens).reshape(-1)
            if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab.v_image):
                raise UserError(f"{key}: image tokens outside [0, {vocab.v_image})")
            if per_image is not None and tokens.size != per_image:
                raise UserError(f"{key}: {tokens.size} image tokens, not the set's {per_image} per image")
            body = tokens.astype(np.int32) + vocab.v_text
        if max_block is not None and len(body) + 2 > max_block:
            if too_long is not None:
                too_long.append(key)
            continue
        pieces.append(np.concatenate([[vocab.BOI], body, [vocab.EOI]]).astype(np.int32))
        images.append(key)
        if captions is not None:
            source, caption = captions.choose(segment)
            pieces.append(text_ids(caption, encode_text, vocab))
            if chosen is not None:
                chosen[key] = source
    tally["images"] += len(images)
    pieces.append(np.array([vocab.EOD], np.int32))
    return np.concatenate(pieces), images


def text_ids(text: str, encode_text: Callable[[str], list[int]], vocab: Vocab) -> np.ndarray:
    ids = encode_text(text)
    if len(ids) and (min(ids) < 0 or max(ids) >= vocab.v_text):
        raise UserError(f"text ids outside [0, {vocab.v_text}): the tokenizer is not the one of v_text")
    return np.asarray(ids, np.int32)


# ---------------------------------------------------------------------------------------------- captions
class Captions:
    """Which caption follows each image in a packed sequence (VeCap-style: alt-text, synthetic, or both).

    rule "none": no caption (an image's alt text stays out of the sequence); "alt": the image segment's alt
    text; "synthetic": the captioner's caption of the image (`synthetic.get(IMAGE_KEY)`: `StoreCaptions`
    over a label store, or a dict); "both": alt + CAPTION_SEPARATOR + synthetic; every caption ends with
    CAPTION_SEPARATOR (the document's text after it starts a new line). Fallbacks, per image: an
    image without the chosen caption gets none ("alt" without alt text, "synthetic" without a synthetic
    caption); "both" with only one of them gets that one. `choose` says which source was used: "alt",
    "synthetic", "both" or "none"."""

    def __init__(self, rule: str = "none", synthetic=None):
        if rule not in CAPTION_RULES:
            raise UserError(f"captions is one of {', '.join(CAPTION_RULES)}, not {rule!r}")
        if (synthetic is not None) != (rule in ("synthetic", "both")):
            raise UserError(f"captions {rule}: " + ("give --caption-labels LABEL_STORE, the documents' images "
                                                    "labelled with the captioner teacher"
                                                    if synthetic is None else
                                                    "--caption-labels are read only with --captions synthetic "
                                                    "or both"))
        self.rule, self.synthetic = rule, synthetic

    def choose(self, segment: dict) -> tuple[str, str]:
        """(source, text) of an image segment's caption under the rule; text "" when source is "none"."""
        alt = (segment.get("alt") or "").strip() if self.rule in ("alt", "both") else ""
        synthetic = (self.synthetic.get(segment["image"]) or "").strip() if self.synthetic is not None else ""
        if alt and synthetic:
            return "both", alt + CAPTION_SEPARATOR + synthetic + CAPTION_SEPARATOR
        if alt:
            return "alt", alt + CAPTION_SEPARATOR
        if synthetic:
            return "synthetic", synthetic + CAPTION_SEPARATOR
        return "none", ""

    def record(self) -> dict:
        """The manifest's "captions": the rule, the separator, and where synthetic captions came from."""
        source = getattr(self.synthetic, "record", None)
        return {"rule": self.rule, "separator": CAPTION_SEPARATOR, **(source() if source else {})}


class _UnitRows:
    """A store read by key, a unit at a time: `_row(key)` is the key's value from `_read_unit(rows)` -> (ok,
    values) of its whole unit, or None (no such key, or not ok). The last unit is kept: a document's images
    sit next to each other in a store (keys DOC_KEY/img_00, img_01, ...), so they cost one read."""

    store = None
    _unit = _ok = _values = None

    def _row(self, key: str):
        try:
            row = self.store.index_of(key)
        except UserError:
            return None
        unit = self.store.unit(row // self.store.unit_size)
        if unit != self._unit:
            self._ok, self._values = self._read_unit(slice(unit.start, unit.stop))
            self._unit = unit
        i = row - unit.start
        return self._values[i] if self._ok[i] else None

    def _read_unit(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class StoreCaptions(_UnitRows):
    """IMAGE_KEY -> its synthetic caption in a label store (the `captioner` teacher's `captions[0]`, its
    beam-search caption), the `synthetic` of `Captions`: `get(key)` is None for a key the store lacks, did
    not label, or gave no caption. Read a unit at a time, as StoreImageTokens reads tokens."""

    def __init__(self, labels_uri: str, teacher: str = "captioner", storage_options: dict | None = None):
        from omnimill.store.labels import LabelStore

        self.store = LabelStore.open(labels_uri, storage_options=storage_options)
        if teacher not in self.store.teachers():
            raise UserError(f"{labels_uri} has no teacher {teacher}; label its images with `--teacher captioner` "
                            f"(it has {', '.join(self.store.teachers()) or 'none'})")
        shape, _ = self.store.array_info(f"{teacher}/captions") if self.store.has(f"{teacher}/captions") else ((), None)
        if len(shape) != 2:
            raise UserError(f"{labels_uri}: teacher {teacher} has no per-image captions (N, K) array; it is not "
                            "the captioner of an image or document store")
        self.uri, self.teacher = labels_uri, teacher

    def get(self, key: str) -> str | None:
        caption = self._row(key)
        return (str(caption) or None) if caption is not None else None

    def _read_unit(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        return self.store.ok(self.teacher, rows), self.store.read(f"{self.teacher}/captions", rows)[:, 0]

    def record(self) -> dict:
        return {"labels": str(self.uri), "labels_uuid": self.store.uuid, "teacher": self.teacher,
                "labels_id": self.store.teacher_id(self.teacher)}


class StoreImageTokens(_UnitRows):
    """IMAGE_KEY -> its tokens in one modality of a token store (crop 0, the whole view), the `image_tokens`
    of `interleave`: `get(key)` is None for a key the store lacks or did not tokenize. `v_image` is the
    image tokenizer's vocabulary, `length` its tokens per image (g*g). A key is found through the store's
    sorted key index; its tokens are read with the rest of its unit (one chunk: unit_size rows, crop 0) and
    the last unit is kept, so a document's images, which sit next to each other in the store (keys
    DOC_KEY/img_00, img_01, ...), cost one read."""

    def __init__(self, tokens_uri: str, modality: str, storage_options: dict | None = None):
        from omnimill.store.tokens import TokenStore

        self.store = TokenStore.open(tokens_uri, storage_options=storage_options)
        if modality not in self.store.modalities():
            raise UserError(f"{tokens_uri} has no modality {modality}; it has {', '.join(self.store.modalities())}")
        info = self.store.tokenizer_info(modality)
        if self.store.time_axis(modality):
            raise UserError(f"{modality} has a time axis (a clip's); interleaved documents take image tokens")
        self.modality, self.v_image, self.tokenizer = modality, int(info["vocab_size"]), info.get("path")
        self.length = int(info["tokens_per_sample"])

    def get(self, key: str) -> np.ndarray | None:
        return self._row(key)

    def _read_unit(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        return self.store.read(f"{self.modality}/ok", rows), self.store.read(f"{self.modality}/tokens", rows)[:, 0]


def stored_documents(uri: str, filter_name: str | None = None, storage_options: dict | None = None,
                     units: Iterable[int] | None = None) -> Iterator[tuple[str, list[dict]]]:
    """(DOC_KEY, segments) of a document store (store/documents.py), in store order, a unit at a time (those
    of `units`, default all): the documents that parsed (ok) and, with `filter_name`, that the filter kept;
    `pack_documents`' input."""
    from omnimill.store.documents import FILTER, DocumentStore

    store = DocumentStore.open(uri, storage_options=storage_options)
    if not store.complete():
        raise UserError(f"{uri} is not fully ingested; run `omnimill documents ingest` on it again first")
    if filter_name is not None and filter_name not in store.filters():
        raise UserError(f"{uri} has no filter {filter_name!r}; it has {', '.join(store.filters()) or 'none'}")
    for u in range(store.n_units) if units is None else units:
        unit = store.unit(u)
        rows = slice(unit.start, unit.stop)
        keep = store.column("ok", rows) & (store.column("kept", rows, part=FILTER + filter_name)
                                           if filter_name is not None else True)
        keys, segments = store.read("keys", rows), store.column("segments", rows)
        for i in np.flatnonzero(keep):
            yield str(keys[i]), json.loads(str(segments[i]) or "[]")

# ---------------------------------------------------------------------------------------------- packing
@dataclass
class PackedSequence:
    """One packed sample: `tokens` (seq_len,) int32, PAD after the first n_content. `split` ("train" |
    "heldout") and `captions` ({IMAGE_KEY: caption source}) are set by `pack_documents` / `pack_part` and
    written to the sequence's json when set."""

    tokens: np.ndarray
    images: list[str]
    docs: list[str]
    n_content: int
    split: str | None = None
    captions: dict[str, str] | None = None

    def meta(self) -> dict:
        """The sequence's `<key>.json`."""
        return {"images": self.images, "docs": self.docs, "n_content": int(self.n_content),
                **({"split": self.split} if self.split is not None else {}),
                **({"captions": self.captions} if self.captions is not None else {})}


def blocks(ids: np.ndarray, vocab: Vocab) -> Iterator[tuple[bool, np.ndarray]]:
    """A document's ids as (is_image, block): each BOI..EOI run one image block, the text between them one
    text block."""
    ids = np.asarray(ids)
    boi, eoi = np.flatnonzero(ids == vocab.BOI), np.flatnonzero(ids == vocab.EOI)
    if len(boi) != len(eoi) or (len(boi) and (np.any(eoi < boi) or np.any(boi[1:] < eoi[:-1]))):
        raise UserError("document ids have unmatched BOI/EOI markers")
    start = 0
    for b, e in zip(boi.tolist(), eoi.tolist()):
        if b > start:
            yield False, ids[start:b]
        yield True, ids[b:e + 1]
        start = e + 1
    if start < len(ids):
        yield False, ids[start:]


class Packer:
    """Greedy packing of documents into sequences (rules in the module docstring). `add` returns the
    sequences it finished; `close` the last, partly filled one. `dropped` lists the (DOC_KEY, IMAGE_KEY)
    of images longer than seq_len; `padding` and `content` count tokens of the finished sequences."""

    def __init__(self, vocab: Vocab, seq_len: int = SEQ_LEN, max_images: int = MAX_IMAGES):
        if seq_len < 2 or max_images < 1:
            raise UserError(f"pack: seq_len must be >= 2 and max_images >= 1, not {seq_len}, {max_images}")
        self.vocab, self.seq_len, self.max_images = vocab, seq_len, max_images
        self.dropped: list[tuple[str, str]] = []
        self.content = self.padding = self.sequences = self.documents = 0
        self._open()

    def _open(self) -> None:
        self._parts: list[np.ndarray] = []
        self._used, self._images, self._docs = 0, [], []

    def _note_doc(self, doc_key: str) -> None:
        if not self._docs or self._docs[-1] != doc_key:
            self._docs.append(doc_key)

    def _finish(self) -> PackedSequence | None:
        if self._used == 0:
            return None
        tokens = np.full(self.seq_len, self.vocab.PAD, np.int32)
        tokens[:self._used] = np.concatenate(self._parts)
        done = PackedSequence(tokens, self._images, self._docs, self._used)
        self.content += self._used
        self.padding += self.seq_len - self._used
        self.sequences += 1
        self._open()
        return done

    def add(self, doc_key: str, ids: np.ndarray, images: list[str]) -> list[PackedSequence]:
        out, image = [], 0
        self.documents += 1
        for is_image, block in blocks(ids, self.vocab):
            if is_image:
                key = images[image]
                image += 1
                if len(block) > self.seq_len:
                    self.dropped.append((doc_key, key))
                    continue
                if len(block) > self.seq_len - self._used or len(self._images) >= self.max_images:
                    out.append(self._finish())
                self._parts.append(block)
                self._used += len(block)
                self._images.append(key)
                self._note_doc(doc_key)
                continue
            while len(block):  # text: fill what is left, go on in the next sequence
                room = self.seq_len - self._used
                if room == 0:
                    out.append(self._finish())
                    continue
                self._parts.append(block[:room])
                self._used += min(room, len(block))
                self._note_doc(doc_key)
                block = block[room:]
        if image != len(images):
            raise UserError(f"document {doc_key}: {len(images)} image keys for {image} image blocks")
        return [s for s in out if s is not None]

    def close(self) -> list[PackedSequence]:
        last = self._finish()
        return [last] if last is not None else []

    @property
    def padding_share(self) -> float:
        total = self.content + self.padding
        return self.padding / total if total else 0.0


@dataclass
class Packed:
    sequences: list[PackedSequence]
    dropped: list[tuple[str, str]] = field(default_factory=list)
    padding_share: float = 0.0


def pack(docs: Iterable[tuple[str, np.ndarray, list[str]]], vocab: Vocab, seq_len: int = SEQ_LEN,
         max_images: int = MAX_IMAGES) -> Packed:
    """(DOC_KEY, ids, IMAGE_KEYs) per document -> packed sequences, the images dropped, the padding share."""
    packer = Packer(vocab, seq_len, max_images)
    sequences = []
    for doc_key, ids, images in docs:
        sequences += packer.add(doc_key, ids, images)
    sequences += packer.close()
    return Packed(sequences, packer.dropped, packer.padding_share)


# ---------------------------------------------------------------------------------------------- the shard set
def sequence_key(number: int, part: int | None = None) -> str:
    return f"s{number:09d}" if part is None else f"p{part:06d}s{number:09d}"


def shard_bytes(first: int, sequences: list[PackedSequence], part: int | None = None) -> bytes:
    """A tar of sequences numbered from `first`: per sequence <key>.tokens then <key>.json (wds.py's way:
    GNU format, mtime 0, no owners), byte-identical for the same sequences."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for number, seq in enumerate(sequences, first):
            for ext, data in ((TOKENS, seq.tokens.astype("<i4").tobytes()), (META, json.dumps(seq.meta()).encode())):
                info = tarfile.TarInfo(f"{sequence_key(number, part)}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def header(vocab: Vocab, seq_len: int, max_images: int, image_mode: str, slots: int | None,
           text_tokenizer: str, image_tokenizer: str | None, image_tokens: int | None = None) -> dict:
    """The manifest's fields that describe the id space and packing (all but shards, n, padding_share).
    `image_tokens`: tokens per image in tokens mode (StoreImageTokens.length); placeholder mode's is `slots`."""
    if image_mode not in IMAGE_MODES:
        raise UserError(f"image_mode must be one of {IMAGE_MODES}, not {image_mode!r}")
    if (image_mode == "placeholders") != (vocab.v_image == 0):
        raise UserError("placeholder mode has no image ids (v_image = 0); tokens mode needs v_image > 0")
    if image_mode == "placeholders":
        if image_tokens is not None and image_tokens != slots:
            raise UserError(f"placeholder mode has slots ({slots}) tokens per image, not {image_tokens}")
        image_tokens = slots
    if image_tokens is not None and image_tokens < 1:
        raise UserError(f"image_tokens must be >= 1, not {image_tokens}")
    return {"format": FORMAT, "seq_len": int(seq_len), "max_images": int(max_images), "image_mode": image_mode,
            "slots": int(slots) if image_mode == "placeholders" else None,
            "image_tokens": int(image_tokens) if image_tokens is not None else None, "v_text": vocab.v_text,
            "v_image": vocab.v_image, "specials": vocab.specials, "vocab": vocab.size,
            "text_tokenizer": str(text_tokenizer), "image_tokenizer": str(image_tokenizer) if image_tokenizer else None}


class InterleavedWriter:
    """Sequences in, numbered shards of `samples_per_shard` out; `close(padding_share)` writes the manifest
    (last) and returns it. OUT must be empty or hold an earlier interleaved set (then `force` replaces
    it: `prepare_set`). With `part` it writes part `part` of a set packed in parts (`pack_part`): shards
    part-PPPPPP-KKKKKK.tar, keys pPPPPPPs#########, into an OUT prepared by whoever planned the parts, and
    `shards` is all it leaves (`finish_parts` writes the manifest).

    A shard holds sequences of one split only (a sequence's `split`; None for a set without splits): each
    split fills its own shard, and the shard's row says its split. Shards and keys are numbered in the order
    shards fill; `shards` lists them grouped by split (SPLITS order), so a split's sequences read in packing
    order, and a document cut across sequences is in consecutive ones."""

    def __init__(self, out: str, head: dict, samples_per_shard: int = SAMPLES_PER_SHARD, force: bool = False,
                 storage_options: dict | None = None, part: int | None = None):
        if samples_per_shard < 1:
            raise UserError(f"samples_per_shard must be >= 1, not {samples_per_shard}")
        self.out, self.head, self.per_shard, self.options = out, head, samples_per_shard, storage_options or {}
        self.part = part
        self._written: list[dict] = []  # shard rows in the order they were written
        self._pending: dict[str | None, list[PackedSequence]] = {}
        self.n = 0
        if part is None:
            prepare_set(out, force, self.options)

    @property
    def shards(self) -> list[dict]:
        """The rows of the shards written, grouped by split: no split, then SPLITS in order."""
        rank = {None: -1, **{split: i for i, split in enumerate(SPLITS)}}
        return sorted(self._written, key=lambda row: rank[row.get("split")])  # sorted is stable

    def add(self, seq: PackedSequence) -> None:
        if len(seq.tokens) != self.head["seq_len"]:
            raise UserError(f"a sequence of {len(seq.tokens)} tokens in a set of seq_len {self.head['seq_len']}")
        if seq.split not in (None, *SPLITS):
            raise UserError(f"a sequence's split is one of {SPLITS}, not {seq.split!r}")
        pending = self._pending.setdefault(seq.split, [])
        pending.append(seq)
        if len(pending) == self.per_shard:
            self._write(seq.split)

    def flush(self) -> None:
        """Write every split's partly filled shard."""
        for split in (None, *SPLITS):
            self._write(split)

    def _write(self, split: str | None) -> None:
        pending = self._pending.pop(split, [])
        if not pending:
            return
        data = shard_bytes(self.n, pending, self.part)
        number = len(self._written)
        name = SHARD_NAME.format(number) if self.part is None else PART_NAME.format(self.part, number)
        atomic_write(join(self.out, name), data, self.options)
        self._written.append({"url": name, "n": len(pending), "sha256": hashlib.sha256(data).hexdigest(),
                              **({"split": split} if split is not None else {})})
        self.n += len(pending)

    def close(self, padding_share: float, stats: dict | None = None, extra: dict | None = None) -> dict:
        """Write the last shards and the manifest; `stats` (what was packed and dropped) goes in as "stats",
        `extra` (the "holdout" and "captions" records) as it is."""
        self.flush()
        manifest = {**self.head, **(extra or {}), "shards": self.shards, "n": self.n,
                    "padding_share": round(float(padding_share), 6), **({"stats": stats} if stats is not None else {})}
        atomic_write(join(self.out, MANIFEST), json.dumps(manifest, indent=1).encode(), self.options)
        return manifest


def prepare_set(out: str, force: bool = False, storage_options: dict | None = None) -> None:
    """Make OUT ready for a new set: created when absent; an empty folder as it is; a folder holding an
    interleaved set (or a packing job's parts) only with `force`, which removes that set's shards, parts'
    rows, job settings and manifest (no other file)."""
    options = storage_options or {}
    fs, root = fsspec.core.url_to_fs(out, **options)
    names = {p.rstrip("/").rsplit("/", 1)[-1]: p for p in fs.ls(root, detail=False)} if fs.isdir(root) else {}
    if not names:
        fs.makedirs(root, exist_ok=True)
        return
    if not force:
        resume = " (a packing job's parts: rerun with the same --workers flags to resume them)" if JOB in names else ""
        raise UserError(f"{out} is not empty{resume}; choose another folder or pass --force to replace an "
                        "interleaved set")
    if not (read_manifest(out, options) if MANIFEST in names else read_job(out, options) if JOB in names else None):
        raise UserError(f"{out} holds no interleaved set (no {MANIFEST} of {FORMAT}); choose another folder")
    for name, path in names.items():
        if name == MANIFEST or OURS.fullmatch(name):
            fs.rm(path)


def write_interleaved(out: str, sequences: Iterable[PackedSequence], head: dict, padding_share: float,
                      samples_per_shard: int = SAMPLES_PER_SHARD, force: bool = False,
                      storage_options: dict | None = None) -> dict:
    """Sequences -> a shard set in OUT; returns its manifest."""
    writer = InterleavedWriter(out, head, samples_per_shard, force, storage_options)
    for seq in sequences:
        writer.add(seq)
    return writer.close(padding_share)


def pack_documents(documents: Iterable[tuple[str, list[dict]]], out: str, encode_text: Callable[[str], list[int]],
                   head: dict, image_tokens=None, samples_per_shard: int = SAMPLES_PER_SHARD, force: bool = False,
                   storage_options: dict | None = None, holdout: float = HOLDOUT, seed: int = 0,
                   captions: Captions | None = None) -> dict:
    """(DOC_KEY, segments) per document -> `interleave` -> `Packer` -> a shard set in OUT, streaming (one open
    sequence per split and one shard per split in memory). `head` (`header`) gives the id space, seq_len,
    max_images and the image mode: "tokens" reads `image_tokens`, "placeholders" puts head["slots"] IMG_SLOTs
    per image. Documents are split by DOC_KEY before packing (`holdout`, `seed`: store.base.held_out) and
    each split is packed on its own. `captions` (default: rule "none") puts a caption after each image. The
    manifest's "stats" records {"documents", "images" (kept), "images_without_tokens", "images_too_long":
    [IMAGE_KEY], "content_tokens", "padding_tokens", "documents_by_split", "captions": {source: images}};
    returns the manifest."""
    split, captions = holdout_record(holdout, seed), captions or Captions()
    writer = InterleavedWriter(out, head, samples_per_shard, force, storage_options)
    stats, n = _pack_into(writer, documents, encode_text, head, image_tokens, split, captions)
    return writer.close(stats["padding_tokens"] / max(stats["padding_tokens"] + stats["content_tokens"], 1), stats,
                        {"holdout": {**split, "n": n}, "captions": captions.record()})


def pack_store(documents_uri: str, out: str, text_tokenizer, text_tokenizer_path: str, tokens_uri: str | None = None,
               image_modality: str = "rgb_image", slots: int | None = None, filter_name: str | None = None,
               seq_len: int = SEQ_LEN, max_images: int = MAX_IMAGES, samples_per_shard: int = SAMPLES_PER_SHARD,
               force: bool = False, storage_options: dict | None = None, holdout: float = HOLDOUT,
               seed: int = 0, captions: str = "none", caption_labels: str | None = None) -> dict:
    """A document store -> a packed set in OUT, what a CLI verb calls with paths: its documents (those
    `filter_name` kept) through `text_tokenizer` (loaded by the caller: omnimill's sequence tokenizer, or an
    HF tokenizer; v_text is its vocabulary with added tokens) and either the image modality of the token
    store `tokens_uri` ("tokens" mode) or `slots` placeholders per image, `holdout` of the documents (by
    DOC_KEY and `seed`) in the held-out split, and after each image the caption that `captions` (rule)
    chooses, synthetic ones from the captioner of the label store `caption_labels` (keys IMAGE_KEY).
    Returns the manifest."""
    check_inputs(documents_uri, out, tokens_uri, slots, holdout, captions, caption_labels)
    rule = Captions(captions, StoreCaptions(caption_labels, storage_options=storage_options) if caption_labels
                    else None)
    images = StoreImageTokens(tokens_uri, image_modality, storage_options) if tokens_uri else None
    head = tokenizer_header(text_tokenizer, text_tokenizer_path, images, slots, seq_len, max_images)
    return pack_documents(stored_documents(documents_uri, filter_name, storage_options), out,
                          text_encoder(text_tokenizer), head, images, samples_per_shard, force, storage_options,
                          holdout, seed, rule)


def check_inputs(documents_uri: str, out: str, tokens_uri: str | None, slots: int | None, holdout: float,
                 captions: str, caption_labels: str | None) -> None:
    """Refuse, before anything is read or written, what pack_store (or a packing job) cannot do: neither or
    both image modes, a bad holdout or caption rule, caption labels missing or extra, OUT inside an input."""
    if (tokens_uri is None) == (slots is None):
        raise UserError("give a token store of the images (tokens mode) or slots (placeholder mode), one of them")
    holdout_record(holdout, seed=0)
    if captions not in CAPTION_RULES or (caption_labels is not None) != (captions in ("synthetic", "both")):
        Captions(captions, caption_labels)  # raises, saying what is missing or extra
    refuse_overlap(out, {"the document store": documents_uri, **({"the token store": tokens_uri} if tokens_uri else {}),
                         **({"the caption label store": caption_labels} if caption_labels else {})})


def tokenizer_header(text_tokenizer, text_tokenizer_path: str, images: StoreImageTokens | None, slots: int | None,
                     seq_len: int, max_images: int) -> dict:
    """`header` for a loaded text tokenizer (v_text: its vocabulary with added tokens) and the images' token
    store (tokens mode) or `slots` placeholders."""
    text = getattr(text_tokenizer, "text", text_tokenizer)
    v_text = int(getattr(text_tokenizer, "vocab_size", 0) or text.get_vocab_size(with_added_tokens=True))
    vocab = Vocab(v_text, images.v_image if images else 0)
    return header(vocab, seq_len, max_images, "tokens" if images else "placeholders", slots, text_tokenizer_path,
                  images.tokenizer if images else None, images.length if images else None)


def pack_part(documents: Iterable[tuple[str, list[dict]]], out: str, part: int, encode_text: Callable[[str], list[int]],
              head: dict, image_tokens=None, samples_per_shard: int = SAMPLES_PER_SHARD,
              storage_options: dict | None = None, holdout: float = HOLDOUT, seed: int = 0,
              captions: Captions | None = None) -> dict:
    """Part `part` of a set packed in parts (units of a parallel, resumable job): its documents split by
    DOC_KEY and each split packed on its own, each split's last sequence padded, shards part-PPPPPP-KKKKKK.tar
    in OUT (made ready once by `prepare_set`). Returns the part's row {"part", "shards", "stats", "holdout",
    "captions"}; `finish_parts` joins the rows into the manifest. A part written again (a retried unit)
    overwrites its own shards with the same bytes."""
    split, captions = holdout_record(holdout, seed), captions or Captions()
    writer = InterleavedWriter(out, head, samples_per_shard, storage_options=storage_options, part=part)
    stats, n = _pack_into(writer, documents, encode_text, head, image_tokens, split, captions)
    writer.flush()
    return {"part": int(part), "shards": writer.shards, "stats": stats, "holdout": {**split, "n": n},
            "captions": captions.record()}


def finish_parts(out: str, head: dict, rows: list[dict], storage_options: dict | None = None,
                 holdout: float = HOLDOUT, seed: int = 0, captions: Captions | None = None) -> dict:
    """The manifest of a set packed in parts: the parts' shards grouped by split (train, then heldout), in
    part order within a split; stats summed, padding share of them all; written last. Every part must have
    been split with `holdout` and `seed`, and captioned with `captions`. Returns the manifest."""
    split, caption_record = holdout_record(holdout, seed), (captions or Captions()).record()
    rows = sorted(rows, key=lambda row: row["part"])
    if len({row["part"] for row in rows}) != len(rows):
        raise UserError("finish_parts: a part is listed twice")
    for row in rows:
        if {k: row["holdout"][k] for k in split} != split:
            raise UserError(f"finish_parts: part {row['part']} was split with {row['holdout']}, not {split}; "
                            "pack it again")
        if row["captions"] != caption_record:
            raise UserError(f"finish_parts: part {row['part']} was captioned with {row['captions']}, not "
                            f"{caption_record}; pack it again")
    shards = [shard for name in SPLITS for row in rows for shard in row["shards"] if shard.get("split") == name]
    stats = _sum_stats([row["stats"] for row in rows])
    n = {name: sum(row["holdout"]["n"][name] for row in rows) for name in SPLITS}
    total = stats["content_tokens"] + stats["padding_tokens"]
    manifest = {**head, "holdout": {**split, "n": n}, "captions": caption_record, "shards": shards, "n": sum(shard["n"] for shard in shards),
                "padding_share": round(stats["padding_tokens"] / total if total else 0.0, 6), "stats": stats}
    atomic_write(join(out, MANIFEST), json.dumps(manifest, indent=1).encode(), storage_options)
    return manifest


def holdout_record(holdout: float, seed: int) -> dict:
    """The manifest's "holdout" record, without its counts: the split is by document."""
    if not 0 <= holdout < 1:
        raise UserError(f"holdout is the share of documents held out, in [0, 1), not {holdout}")
    return {"fraction": float(holdout), "seed": int(seed), "by": "document"}


def _sum_stats(parts: list[dict]) -> dict:
    """Stats of several packings as one: numbers and lists added, dicts of numbers added key by key."""
    total: dict = {}
    for stats in parts:
        for name, value in stats.items():
            if isinstance(value, dict):
                into = total.setdefault(name, {})
                for k, v in value.items():
                    into[k] = into.get(k, 0) + v
            else:
                total[name] = total[name] + value if name in total else value
    return total


def _pack_into(writer: InterleavedWriter, documents, encode_text, head: dict, image_tokens,
               split: dict, captions: Captions) -> tuple[dict, dict[str, int]]:
    """interleave -> a Packer per split -> writer for each document, the document's split decided by its
    DOC_KEY (`split`: holdout_record), each image's caption by `captions` (recorded per sequence unless the
    rule is "none"). Returns the stats of what was packed and dropped, and the sequences written per split."""
    from omnimill.store.base import held_out

    vocab = vocab_of(head)
    slots = head["slots"] if head["image_mode"] == "placeholders" else None
    if slots is None and image_tokens is None:
        raise UserError("tokens mode needs image_tokens (a token store's image modality: StoreImageTokens)")
    packers = {name: Packer(vocab, head["seq_len"], head["max_images"]) for name in SPLITS}
    tally, n, too_long = Counter(), dict.fromkeys(SPLITS, 0), []
    chosen, sources = {}, Counter({source: 0 for source in CAPTION_SOURCES})  # IMAGE_KEY -> source until written

    def write(sequences: list[PackedSequence], name: str) -> None:
        for seq in sequences:
            seq.split = name
            picked = {key: chosen.pop(key) for key in seq.images}
            sources.update(picked.values())
            seq.captions = picked if captions.rule != "none" else None
            writer.add(seq)
            n[name] += 1

    for doc_key, segments in documents:
        name = SPLITS[int(held_out([doc_key], split["fraction"], split["seed"])[0])]
        ids, images = interleave(segments, encode_text, vocab, image_tokens=None if slots else image_tokens,
                                 slots=slots, tally=tally, captions=captions, chosen=chosen,
                                 max_block=head["seq_len"], too_long=too_long,
                                 per_image=None if slots else head.get("image_tokens"))
        write(packers[name].add(doc_key, ids, images), name)
    for name, packer in packers.items():
        write(packer.close(), name)
    stats = {"documents": sum(p.documents for p in packers.values()), "images": tally["images"],
             "images_without_tokens": tally["images_without_tokens"], "images_too_long": too_long,
             "content_tokens": sum(p.content for p in packers.values()),
             "padding_tokens": sum(p.padding for p in packers.values()),
             "documents_by_split": {name: packer.documents for name, packer in packers.items()},
             "captions": dict(sources)}
    return stats, n


def write_part_row(out: str, row: dict, storage_options: dict | None = None) -> None:
    """A part's marker: its row, written (atomically) once its shards are."""
    atomic_write(join(out, PART_ROW.format(row["part"])), json.dumps(row).encode(), storage_options)


def read_part_row(out: str, part: int, storage_options: dict | None = None) -> dict | None:
    """A part's row, or None while it has no marker."""
    return _read_json(join(out, PART_ROW.format(part)), storage_options)


def write_job(out: str, settings: dict, storage_options: dict | None = None) -> None:
    """A packing job's settings, which a rerun must match to resume: {"format", "job": settings}."""
    atomic_write(join(out, JOB), json.dumps({"format": FORMAT, "job": settings}, indent=1).encode(), storage_options)


def read_job(out: str, storage_options: dict | None = None) -> dict | None:
    """A packing job's settings as written by `write_job`, or None when OUT has none. A job begun before the
    header recorded image_tokens gets it as its rerun computes it (slots, or the token store's tokens per
    image), so the rerun resumes it."""
    data = _read_json(join(out, JOB), storage_options)
    if data is not None and (not isinstance(data, dict) or data.get("format") != FORMAT or "job" not in data):
        raise UserError(f"{out}/{JOB} is not a packing job's settings (format {FORMAT} expected)")
    if data is None:
        return None
    job, head = data["job"], data["job"].get("head")
    if isinstance(head, dict) and "image_tokens" not in head:
        head["image_tokens"] = head.get("slots") if head.get("image_mode") == "placeholders" else \
            StoreImageTokens(job["tokens"], job["image_modality"], storage_options).length
    return job


def _read_json(path: str, storage_options: dict | None) -> dict | None:
    try:
        with fsspec.open(path, "r", **(storage_options or {})) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None


def read_manifest(uri: str, storage_options: dict | None = None) -> dict:
    path = join(uri, MANIFEST)
    try:
        with fsspec.open(path, "r", **(storage_options or {})) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{uri} has no {MANIFEST}: not an interleaved shard set (or an unfinished one)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not an interleaved shard manifest (format {FORMAT} expected)")
    return manifest


def vocab_of(manifest: dict) -> Vocab:
    vocab = Vocab(int(manifest["v_text"]), int(manifest["v_image"]))
    if vocab.specials != manifest["specials"] or vocab.size != manifest["vocab"]:
        raise UserError(f"manifest specials {manifest['specials']} / vocab {manifest['vocab']} do not follow "
                        f"v_text {vocab.v_text} + v_image {vocab.v_image}")
    return vocab


def read_shard(uri: str, manifest: dict, shard: int, storage_options: dict | None = None
               ) -> list[tuple[str, np.ndarray, dict]]:
    """Shard `shard` of the set as [(key, tokens (seq_len,) int32, meta)], after checking its sha256 and
    sample count against the manifest (a damaged or replaced shard raises UserError naming it)."""
    row = manifest["shards"][shard]
    with fsspec.open(join(uri, row["url"]), "rb", **(storage_options or {})) as f:
        data = f.read()
    where = f"{uri}/{row['url']}"
    if hashlib.sha256(data).hexdigest() != row["sha256"]:
        raise UserError(f"{where}: sha256 differs from the manifest (damaged or replaced); re-pack the set")
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            members.setdefault(key, {})[ext] = tar.extractfile(info).read()
    seq_len, out = int(manifest["seq_len"]), []
    for key, parts in members.items():
        if not KEY.fullmatch(key) or set(parts) != {TOKENS, META}:
            raise UserError(f"{where}: member {key} is not <s#########>.tokens + .json")
        tokens = np.frombuffer(parts[TOKENS], "<i4").astype(np.int32)
        if len(tokens) != seq_len:
            raise UserError(f"{where}: {key} holds {len(tokens)} tokens, not seq_len {seq_len}")
        out.append((key, tokens, json.loads(parts[META])))
    if len(out) != row["n"]:
        raise UserError(f"{where}: {len(out)} sequences, the manifest says {row['n']}")
    return out


def verify_interleaved(uri: str, storage_options: dict | None = None) -> dict:
    """Read every shard and check it against the manifest: sha256, counts, ids inside the vocabulary, PAD
    exactly after n_content, BOI/EOI pairs, images per sequence <= max_images and matching the image blocks
    (an image cut off at a sequence end is impossible: blocks are never split), keys unique across the set,
    and, once every shard reads, n and padding_share as the manifest says. A set split by document
    ("holdout" in its manifest) is checked too: each sequence's split is its shard's, no document is in
    both splits, and the sequences per split are the manifest's. With "image_tokens" in the manifest, every
    image block holds that many ids between BOI and EOI. Returns {"n", "shards", "problems": [str]}; the
    first problem of each sequence is listed."""
    manifest = read_manifest(uri, storage_options)
    vocab = vocab_of(manifest)
    split_by_document = "holdout" in manifest
    problems, n, content, seen = [], 0, 0, set()
    per_split, docs = Counter(), {name: set() for name in SPLITS}
    for s, row in enumerate(manifest["shards"]):
        try:
            samples = read_shard(uri, manifest, s, storage_options)
        except UserError as e:
            problems.append(str(e))
            continue
        for key, tokens, meta in samples:
            n += 1
            problem = _sequence_problem(tokens, meta, vocab, int(manifest["max_images"]), manifest.get("image_tokens"))
            if key in seen:
                problem = "the key is also in an earlier shard"
            if split_by_document and not problem:
                if row.get("split") not in SPLITS or meta.get("split") != row["split"]:
                    problem = f"split {meta.get('split')!r} in a shard of split {row.get('split')!r}"
                else:
                    per_split[row["split"]] += 1
                    docs[row["split"]].update(meta["docs"])
            seen.add(key)
            if problem:
                problems.append(f"{row['url']}:{key}: {problem}")
            content += int(meta.get("n_content") or 0)
    if split_by_document and docs["train"] & docs["heldout"]:
        both = sorted(docs["train"] & docs["heldout"])
        problems.append(f"{len(both)} documents in both splits, first {both[0]}")
    if not problems:
        measured = 1 - content / (n * int(manifest["seq_len"])) if n else 0.0
        if n != manifest["n"]:
            problems.append(f"{n} sequences in the shards, the manifest says {manifest['n']}")
        elif abs(measured - manifest["padding_share"]) > 1e-6:
            problems.append(f"padding share {measured:.6f} in the shards, the manifest says "
                            f"{manifest['padding_share']}")
        elif split_by_document and dict(per_split) != {k: v for k, v in manifest["holdout"]["n"].items() if v}:
            problems.append(f"sequences per split {dict(per_split)} in the shards, the manifest says "
                            f"{manifest['holdout']['n']}")
    return {"n": n, "shards": len(manifest["shards"]), "problems": problems}


def _sequence_problem(tokens: np.ndarray, meta: dict, vocab: Vocab, max_images: int,
                      per_image: int | None = None) -> str | None:
    n = meta.get("n_content")
    if not isinstance(n, int) or not 0 < n <= len(tokens):
        return f"n_content {n!r} is not in 1..{len(tokens)}"
    if tokens.min() < 0 or tokens.max() >= vocab.size:
        return f"ids outside [0, {vocab.size})"
    if np.any(tokens[n:] != vocab.PAD) or np.any(tokens[:n] == vocab.PAD):
        return "PAD is not exactly the tokens after n_content"
    images = meta.get("images", [])
    try:
        sizes = [len(block) - 2 for is_image, block in blocks(tokens[:n], vocab) if is_image]  # BOI .. EOI
    except UserError as e:
        return str(e)
    if len(sizes) != len(images) or len(images) > max_images:
        return f"{len(sizes)} image blocks, {len(images)} image keys, max_images {max_images}"
    if per_image is not None and any(size != per_image for size in sizes):
        return f"an image block of {next(z for z in sizes if z != per_image)} tokens, image_tokens {per_image}"
    return None


# ---------------------------------------------------------------------------------------------- streaming
class InterleavedDataset(torch.utils.data.IterableDataset):
    """Packed sequences of a shard set, one at a time: {"key", "tokens" (seq_len,) int64 tensor, "images",
    "docs", "n_content"}. Endless unless `epochs`; resumable exactly with state_dict / load_state_dict.

    Order: each epoch the shards are permuted with (seed, epoch); rank r of world_size takes every
    world_size-th of them; within a shard the sequences are permuted with (seed, epoch, shard). shuffle=False
    keeps the written order of both. So a position is two integers, (epoch, sequences consumed this epoch),
    and resuming recomputes the plan from them (sample counts come from the manifest: no shard is read to
    skip it) and reads only the shard it stopped in. Every shard is checked against its manifest sha256
    when read (`read_shard`).

    `split` ("train" | "heldout") reads only that split's shards, of a set split by document ("holdout" in its
    manifest: each shard holds one split); None reads every shard. A set packed before splits by document is
    refused with a split: its readers split by sequence key themselves.

    Iterate it in the process that checkpoints (as MixtureLoader does, or DataLoader(num_workers=0)): the
    position it keeps is that of the last sequence it handed out, which a DataLoader worker's copy would
    keep out of reach; a worker refuses to run it. Sequences are read as whole shards, one tar read each."""

    def __init__(self, uri: str, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 epochs: int | None = None, storage_options: dict | None = None, split: str | None = None):
        self.uri, self.seed, self.shuffle, self.options = str(uri), seed, shuffle, storage_options
        self.rank, self.world_size, self.epochs, self.split = rank, world_size, epochs, split
        self.manifest = read_manifest(self.uri, storage_options)
        self.vocab = vocab_of(self.manifest)
        if split not in (None, *SPLITS):
            raise UserError(f"split is one of {SPLITS} or None (every sequence), not {split!r}")
        if split is not None and "holdout" not in self.manifest:
            raise UserError(f"{uri} was packed before splits by document (no \"holdout\" in its manifest): read it "
                            "with split=None and split by sequence key, or pack it again")
        self.shards = [i for i, row in enumerate(self.manifest["shards"]) if split in (None, row.get("split"))]
        what = f"{split} sequences" if split else "sequences"
        if not sum(self.manifest["shards"][i]["n"] for i in self.shards):
            raise UserError(f"{uri} holds no {what} (no documents were packed{' in it' if split else ''})")
        if len(self.shards) < world_size:
            raise UserError(f"{uri} has {len(self.shards)} shards of {what}, fewer than world_size {world_size}: "
                            f"pack with a smaller samples_per_shard")
        self.epoch = self.consumed = 0

    def _fingerprint(self) -> list:
        setup = [self.uri, self.manifest["n"], [r["sha256"] for r in self.manifest["shards"]], self.seed,
                 self.shuffle, self.rank, self.world_size]
        return setup if self.split is None else [*setup, self.split]  # positions saved before splits still load

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "config": self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != self._fingerprint():
            raise UserError("the saved position belongs to another interleaved set or setup (uri, shards, seed, "
                            "shuffle, rank, world_size, split); resume with the same ones")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    def plan(self, epoch: int) -> list[int]:
        """The shards (manifest indices) this rank reads in `epoch`, in order: the split's shards permuted."""
        count = len(self.shards)
        order = np.random.default_rng([self.seed, epoch]).permutation(count) if self.shuffle else np.arange(count)
        return [self.shards[i] for i in order[self.rank::self.world_size]]

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            raise UserError("InterleavedDataset keeps its position in the process that iterates it: use "
                            "num_workers=0 (or MixtureLoader)")
        while self.epochs is None or self.epoch < self.epochs:
            skip = self.consumed
            for shard in self.plan(self.epoch):
                n = int(self.manifest["shards"][shard]["n"])
                if skip >= n:
                    skip -= n
                    continue
                samples = read_shard(self.uri, self.manifest, shard, self.options)
                order = (np.random.default_rng([self.seed, self.epoch, shard]).permutation(n) if self.shuffle
                         else np.arange(n))
                for i in order[skip:].tolist():
                    key, tokens, meta = samples[i]
                    self.consumed += 1
                    yield {"key": key, "tokens": torch.from_numpy(tokens.astype(np.int64)), **meta}
                skip = 0
            self.epoch, self.consumed = self.epoch + 1, 0
