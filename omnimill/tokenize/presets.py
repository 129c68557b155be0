"""Tokenizer presets: named sets of training options, picked by the kind of the field being tokenized.

`omnimill tokenizer train ... --preset 4m` gives 4M-21's tokenizer shapes (Bachmann et al., 2024; the
configs of apple/ml-4m, cfgs/default/tokenization/), so that the tokens fit a 4M model as they are:

  row            tokenizer  field kinds                         input  tokens        vocabulary
  rgb            spatial    image                               224    14 x 14        16384
  semseg         spatial    classes, instances                  224    14 x 14         4096
  maps           spatial    continuous, unit_vectors, binary    224    14 x 14         8192
  feature grids  spatial    embedding_grid (DINOv2, ImageBind)  grid   16 x 16         8192
  globals        vector     embedding (D,)                      -      16              8192

The quantizer is `fsq-exact` (quantizer.py): FSQ levels whose product is the vocabulary exactly, since 4M
embeds ids below it (the paper's levels for 4096 give 4375 codes). A preset only fills in what the user did
not give: explicit options win. What it set is recorded in the tokenizer's config.json (options.preset).
Sequence modalities have no 4m preset: 4M reads captions, boxes and metadata as raw text and tokenizes
them with its own WordPiece.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from omnimill.errors import UserError
from omnimill.files import write_atomic
from omnimill.labelers.fields import kind_of
from omnimill.tokenize.quantizer import levels_for

@dataclass(frozen=True)
class Row:
    name: str  # what the row is for, shown in the table and recorded
    tokenizer: str  # spatial | vector
    field_kinds: tuple[str, ...]
    settings: dict  # TrainOptions overrides; input_size None: the feature grid's own side (see settings_for)

    def describe(self) -> str:
        s = self.settings
        if self.tokenizer == "vector":
            shape = f"{s['n_tokens']} tokens"
        else:
            shape = f"{s['grid']} x {s['grid']} tokens from {s.get('input_size') or 'the grid'}"
        return f"{shape}, vocab {s['vocab']} (FSQ levels {levels_for(s['quantizer'], s['vocab'])})"


def _spatial(name, kinds, vocab, grid=14, input_size=224):
    return Row(name, "spatial", kinds, {"input_size": input_size, "grid": grid, "vocab": vocab,
                                        "quantizer": "fsq-exact"})


PRESETS: dict[str, list[Row]] = {
    "4m": [
        _spatial("rgb", ("image",), 16384),
        _spatial("semseg", ("classes", "instances"), 4096),
        _spatial("maps", ("continuous", "unit_vectors", "binary"), 8192),
        _spatial("feature grids", ("embedding_grid",), 8192, grid=16, input_size=None),
        Row("globals", "vector", ("embedding",), {"n_tokens": 16, "vocab": 8192, "quantizer": "fsq-exact"}),
    ],
}


def table() -> str:
    """Every preset as text: `omnimill tokenizer presets`."""
    lines = []
    for name, rows in PRESETS.items():
        lines.append(f"--preset {name}")
        for row in rows:
            lines.append(f"  {row.name:14s} {row.tokenizer:8s} {', '.join(row.field_kinds):34s} {row.describe()}")
    return "\n".join(lines)


def row_for(preset: str, tokenizer: str, field_kind: str) -> Row:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; the presets are {', '.join(PRESETS)} "
                        "(`omnimill tokenizer presets` shows them)")
    if tokenizer == "sequence":
        raise UserError(f"the {preset} preset has no sequence tokenizer: 4M-21 reads captions, boxes and metadata "
                        "as raw text and tokenizes them itself; train a sequence tokenizer without --preset")
    for row in PRESETS[preset]:
        if row.tokenizer == tokenizer and field_kind in row.field_kinds:
            return row
    fitting = [f"{r.name} ({r.tokenizer}: {', '.join(r.field_kinds)})" for r in PRESETS[preset]]
    raise UserError(f"the {preset} preset has no {tokenizer} tokenizer for a field of kind {field_kind!r}; "
                    f"it has: {'; '.join(fitting)}")


def settings_for(row: Row, sample_shape: tuple) -> dict:
    """The row's settings for one field; a feature grid keeps its own side (16 for DINOv2-B/14 at 224),
    a larger one is fed at the next power of two above it so the encoder halves it down to the grid."""
    settings = dict(row.settings)
    if row.tokenizer == "spatial" and settings["input_size"] is None:
        side, grid = int(sample_shape[0]), settings["grid"]
        settings["input_size"] = grid * 2 ** max(0, math.ceil(math.log2(side / grid)))
    return settings


def preset_overrides(preset: str, store, field: str, tokenizer: str, explicit: dict) -> tuple[dict, dict]:
    """(TrainOptions overrides, the record for config.json) for `field` of `store` under `preset`.

    `explicit`: options the user gave; they win over the preset, and the record says which they overrode."""
    from omnimill.tokenize.data import open_field

    source = open_field(store, field)
    if len(source.fields) != 1:
        raise UserError(f"--preset reads one field: give --field TEACHER/FIELD "
                        f"(one of {', '.join(f'{source.teacher}/{f}' for f in source.fields)})")
    name = source.fields[0]
    spec = source.specs[name]
    field_kind = kind_of(name, spec)
    row = row_for(preset, tokenizer, field_kind)
    wanted = settings_for(row, tuple(spec["shape"]))
    applied = {k: v for k, v in wanted.items() if k not in explicit}
    settings = {**applied, **explicit}
    record = {"name": preset, "row": row.name, "field_kind": field_kind, "set": applied,
              "overridden": {k: explicit[k] for k in wanted if k in explicit},
              "levels": levels_for(settings["quantizer"], settings["vocab"])}  # None for vq
    return settings, record


def record_preset(directory: str | Path, record: dict) -> None:
    """Write what the preset set into the trained tokenizer's config.json (options.preset)."""
    path = Path(directory) / "config.json"
    config = json.loads(path.read_text())
    config["options"]["preset"] = record
    write_atomic(path, json.dumps(config, indent=2))
