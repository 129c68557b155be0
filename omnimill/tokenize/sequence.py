"""Sequence tokenizer: captions and serialized structures (palette, metadata, boxes, poses) -> L token ids.

As 4M (Mizrahi et al., 2023) and 4M-21 (Bachmann et al., 2024) do for captions, bounding boxes, colour
palettes and metadata: one text tokenizer whose vocabulary also holds special tokens, each a single id:
coordinates `<c0>..<c{coord_bins-1}>`, values `<v0>..`, structure tokens (`<box>`, `<person>`,
`<kp_none>`, `<sep>`, metadata names, ...) and `<pad>`, `<eos>`, `<cut>`. The structure of a teacher's
labels and its grammar are in serialize.py (a teacher declares which, or brings its own serializer); this file
turns pieces into ids and back, and fits them to L.

    ids = [item 1][item 2]...[item n] <eos> <pad> ... <pad>      (B, L) int32, L = tokens_per_sample
          [item 1]...[item k] <cut> <pad> ...                       items k+1..n did not fit in L - 1

Whole items are dropped from the end (never half a box); a caption that alone is too long keeps its first
tokens. `quantize(values, crops)` is the reference: decode(encode(x)) == quantize(x).

The text tokenizer (HF `tokenizers`): byte-level BPE trained on the corpus's text (captions, class names,
metadata words) by default, `text_vocab_size` = 256 bytes + merges (fewer if the text runs out of pairs);
every string encodes and decodes back exactly. `text_model: wordpiece` trains a WordPiece one instead
(BERT pre-tokenization, `<unk>` for unseen characters: spacing and unknown characters are not kept), and
`text_tokenizer: PATH` (a tokenizer.json, or a directory with one) starts from an existing tokenizer, whose
decoder then decides what comes back (a BERT one lower-cases). Structures without text (palette, sam, pose,
numeric metadata, class-id tokens) get a vocabulary of special tokens only.

tokenizer.json holds the whole vocabulary; config.json (base.py) the options that decoding needs.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from omnimill.errors import UserError
from omnimill.tokenize.base import Tokenizer, TokenizerConfig
from omnimill.tokenize.serialize import COMMON, SERIALIZERS, Serializer, Text, make_serializer, serializer_for

TEXT_VOCAB_SIZE = 8192  # text part of the vocabulary: 256 bytes + BPE merges
MIN_FREQUENCY = 2  # a merge must be seen at least twice: one-off strings add no tokens
TEXT_CACHE = 1 << 16  # text -> ids memo: class names and metadata words repeat on every sample
UNK = "<unk>"  # WordPiece's token for characters it never saw (byte-level BPE needs none)


class SequenceTokenizer(Tokenizer):
    kind = "sequence"

    def __init__(self, config: TokenizerConfig, text, serializer: type[Serializer] | None = None):
        super().__init__(config)
        self.text = text  # tokenizers.Tokenizer
        text.no_padding()  # an existing tokenizer.json may pad or truncate on its own; L is ours to apply
        text.no_truncation()
        text.encode_special_tokens = True  # a caption that reads "<box>" is text, not the <box> token
        self.serializer = make_serializer(config.fields, config.options, self._roundtrip, serializer)
        specials = [*COMMON, *self.serializer.specials()]
        self.id_of = {t: text.token_to_id(t) for t in specials}
        missing = [t for t, i in self.id_of.items() if i is None]
        if missing:
            raise UserError(f"tokenizer.json lacks {', '.join(missing[:5])}: it does not belong to this config.json; "
                            "retrain the tokenizer")
        self.token_of = {i: t for t, i in self.id_of.items()}
        self.pad_id, self.eos_id, self.cut_id = (self.id_of[t] for t in COMMON)
        self._text_ids = lru_cache(maxsize=TEXT_CACHE)(self._encode_text)

    def __getstate__(self):  # Dask ships tokenizers to workers: the memo is rebuilt there, not pickled
        own = type(self.serializer)  # a plug-in's serializer travels by reference: the worker imports its module
        return {"config": self.config, "text": self.text, "serializer": None if own in SERIALIZERS.values() else own}

    def __setstate__(self, state):
        self.__init__(state["config"], state["text"], state.get("serializer"))

    # ------------------------------------------------------------------ train / save / load
    @classmethod
    def train(cls, config: TokenizerConfig, values: dict, view_size: int = 384) -> "SequenceTokenizer":
        """Pick the structure, fill in its options from `values` (N, ...) and train the text tokenizer."""
        specs = config.source.get("fields") or {}  # the fields read: asr/text is a caption, asr a transcript
        kind = serializer_for(config.teacher, config.options, _provenance(config),
                              {f: specs[f] for f in config.fields if f in specs})
        options = {**config.options, "structure": kind.name, "view_size": int(view_size)}
        if kind not in SERIALIZERS.values():  # a plug-in teacher's own: loading finds it again through its teacher
            options["serializer_teacher"] = options.get("serializer_teacher") or _provenance(config).get("spec")
        fields = list(config.fields) or (["caption"] if kind.name == "caption" and not config.teacher
                                         else list(kind.default_fields))
        serializer = kind(fields, options)
        missing = [f for f in serializer.needs() if f not in fields]
        if missing:
            raise UserError(f"{kind.name} tokenizer: fields must include {', '.join(missing)}; "
                            f"it reads {serializer.describe()}")
        serializer.check(values)
        serializer.configure(values, config.source)
        specials = [*COMMON, *serializer.specials()]
        if len(set(specials)) != len(specials):
            raise UserError(f"{kind.name} tokenizer: two of its special tokens have the same name; "
                            "rename the metadata field that reads like <pad>, <v0>, <box>, ...")
        texts = serializer.texts(values) if serializer.uses_text else None
        text = _text_tokenizer(serializer.options, specials, texts)
        tokens = int(config.tokens_per_sample or options.get("tokens_per_sample") or kind.default_tokens)
        if tokens < 2:
            raise UserError(f"{kind.name} tokenizer: tokens_per_sample must be at least 2, not {tokens}")
        fields = list(serializer.needs())  # only what the sequence holds: not SAM's instance maps, say
        config = replace(config, kind="sequence", fields=fields, options=serializer.options, tokens_per_sample=tokens,
                         vocab_size=text.get_vocab_size(with_added_tokens=True), pad_id=text.token_to_id("<pad>"))
        return cls(config, text, kind)

    def save_weights(self, directory: Path) -> None:
        (directory / "tokenizer.json").write_text(self.text.to_str(pretty=True))

    @classmethod
    def from_directory(cls, directory: Path, config: TokenizerConfig) -> "SequenceTokenizer":
        from tokenizers import Tokenizer as TextTokenizer

        path = Path(directory) / "tokenizer.json"
        if not path.exists():
            raise UserError(f"{directory} has no tokenizer.json; retrain the tokenizer")
        tok = cls(config, TextTokenizer.from_file(str(path)))
        if tok.text.get_vocab_size(with_added_tokens=True) != config.vocab_size:
            raise UserError(f"{path} holds {tok.text.get_vocab_size(with_added_tokens=True)} tokens but config.json "
                            f"says {config.vocab_size}; retrain the tokenizer")
        return tok

    # ------------------------------------------------------------------ encode / decode
    def encode(self, values: dict[str, np.ndarray], crops: np.ndarray | None = None) -> np.ndarray:
        """values: {field: (B, ...)} as the label store holds them; crops: (B, 5) or None -> (B, L) int32."""
        rows = [self._fit(self.serializer.items(sample, crop))[1] for sample, crop in self._samples(values, crops)]
        out = np.full((len(rows), self.tokens_per_sample), self.pad_id, np.int32)
        for i, ids in enumerate(rows):
            out[i, :len(ids)] = ids
        return out

    def decode(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """(B, L) ids -> {field: arrays in the store's padded/count form}; coordinates 0..1 in the crop's frame.

        Only the serialized fields come back (no scores unless the `scores` option; pose keypoint_scores are
        1 for keypoints in the sequence, 0 for <kp_none>). Malformed items are skipped.
        """
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise UserError(f"decode takes (B, L) token ids, not an array of shape {tokens.shape}")
        return self.serializer.arrays([self.serializer.parse(self._pieces(row)) for row in tokens])

    def quantize(self, values: dict[str, np.ndarray], crops: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """What decode(encode(values, crops)) gives back, computed without tokens: the reference."""
        rows = []
        for sample, crop in self._samples(values, crops):
            items = self._fit(self.serializer.items(sample, crop))[0]
            rows.append([tuple(Text(self._roundtrip(x)) if isinstance(x, Text) else x for x in item) for item in items])
        return self.serializer.arrays(rows)

    def truncated(self, tokens: np.ndarray) -> np.ndarray:
        """(B, L) ids -> (B,) bool: items were dropped (or a caption cut) to fit L."""
        return (np.asarray(tokens) == self.cut_id).any(-1)

    # ------------------------------------------------------------------ internals
    def _samples(self, values, crops):
        n = self.serializer.check(values)
        if crops is None:
            s = int(self.config.options["view_size"])
            crops = np.tile(np.array([0, 0, s, s, 0], np.int32), (n, 1))
        crops = np.asarray(crops)
        if crops.shape != (n, 5):
            raise UserError(f"crops must be (B, 5) = ({n}, 5) (top, left, h, w, flip), not {crops.shape}")
        fields = list(self.serializer.needs())
        for i in range(n):
            yield {f: values[f][i] for f in fields}, crops[i]

    def _fit(self, items: list[tuple]) -> tuple[list[tuple], list[int], bool]:
        """Items -> (items kept, ids ending in <eos> or <cut>, whether something was dropped); len(ids) <= L."""
        budget = self.tokens_per_sample - 1  # the last token says how the sequence ended
        ids = []
        for k, item in enumerate(items):
            more = self._ids(self.serializer.tokens(item, first=k == 0))
            if len(ids) + len(more) > budget:
                if k == 0 and self.serializer.cuttable:  # one text longer than L: keep its beginning
                    head = more[:budget]
                    while head and self._decode_text(head).endswith("\ufffd"):
                        head.pop()  # a character split between byte tokens: drop its first bytes too
                    text = Text(self._decode_text(head))
                    return ([(text,)] if text else []), head + [self.cut_id], True
                return items[:k], ids + [self.cut_id], True
            ids += more
        return items, ids + [self.eos_id], False

    def _ids(self, pieces: list) -> list[int]:
        out = []
        for piece in pieces:
            if isinstance(piece, Text):
                out += self._text_ids(str(piece))
            else:
                out.append(self.id_of[piece])
        return out

    def _pieces(self, row) -> list:
        """Ids -> special tokens and texts (runs of text ids), up to <eos> / <cut>; <pad> and junk ids skipped."""
        pieces, run = [], []
        for t in map(int, row):
            if t in (self.eos_id, self.cut_id):
                break
            if t == self.pad_id or not 0 <= t < self.vocab_size:
                continue
            token = self.token_of.get(t)
            if token is None:
                run.append(t)
                continue
            if run:
                pieces.append(Text(self._decode_text(run)))
                run = []
            pieces.append(token)
        if run:
            pieces.append(Text(self._decode_text(run)))
        return pieces

    def _encode_text(self, text: str) -> tuple[int, ...]:
        return tuple(self.text.encode(text, add_special_tokens=False).ids) if text else ()

    def _decode_text(self, ids) -> str:
        return self.text.decode(list(ids), skip_special_tokens=False) if len(ids) else ""

    def _roundtrip(self, text: str) -> str:
        """What the text tokenizer gives back for `text` (itself, for the default byte-level BPE)."""
        return self._decode_text(self._text_ids(str(text)))


def _provenance(config: TokenizerConfig) -> dict:
    """The teacher's provenance, which names its class (spec): from the config's source when given, else read
    from the label store the source names; {} when neither has it (the teacher's name is all there is)."""
    source = config.source
    if source.get("provenance"):
        return source["provenance"]
    if source.get("teacher_spec"):
        return {"spec": source["teacher_spec"]}
    if not (config.teacher and source.get("store")):
        return {}
    from omnimill.store.labels import LabelStore

    try:
        return LabelStore.open(str(source["store"])).provenance(config.teacher)
    except (UserError, OSError, KeyError, ValueError):
        return {}


def _text_tokenizer(options: dict, specials: list[str], texts):
    """The text tokenizer with `specials` as single-id tokens; trained on `texts` (None: no text, specials only)."""
    from tokenizers import Tokenizer as TextTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if options.get("text_tokenizer"):
        path = Path(options["text_tokenizer"])
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"text_tokenizer: no tokenizer.json at {path}")
        text = TextTokenizer.from_file(str(path))
        text.add_special_tokens(specials)  # appended after its own vocabulary
        options["text_tokenizer"] = str(path)
        return text

    model = options.setdefault("text_model", "bpe")
    size = int(options.setdefault("text_vocab_size", TEXT_VOCAB_SIZE))
    min_frequency = int(options.setdefault("min_frequency", MIN_FREQUENCY))
    if model == "bpe" or texts is None:
        text = TextTokenizer(models.BPE())
        text.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # text starts where the item says
        text.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=size + len(specials), min_frequency=min_frequency,
                                      special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    elif model == "wordpiece":
        text = TextTokenizer(models.WordPiece(unk_token=UNK))
        text.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        text.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=size + len(specials) + 1, min_frequency=min_frequency,
                                            special_tokens=[*specials, UNK], show_progress=False)
    else:
        raise UserError(f"text_model must be bpe or wordpiece, not {model!r}")
    if texts is None:
        text.add_special_tokens(specials)  # ids 0..n-1, in order: <pad> is 0
    else:
        text.train_from_iterator(texts, trainer)  # special tokens first: <pad> is 0
    return text
