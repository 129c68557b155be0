"""The token store: every modality of every sample as rows of tokens, for N aligned crops.

    tokens.zarr/              attrs: format, omnimill version, uuid, source {store uri, uuid, created, n,
                                     view_size}, n_crops, crop_seed, unit_size
      keys    (N,) str        the label store's keys, same order (alignment is by index, checked by key)
      crops   (N, n_crops, 5) int32   (top, left, h, w, flip) in canonical-view pixels; crop 0 = whole view
                              keys and crops are written once at creation: sharded (layout.py)
      <modality>/             attrs: tokenizer {path, sha256, kind, vocab_size, tokens_per_sample (= L), pad_id,
                                     teacher, fields, teacher_id (the label store's labels_id)};
                                     time {steps, of} when the modality has a time axis (absent: none)
        tokens  (N, n_crops, L)  uint16 when vocab_size <= 65536, else int32
        ok      (N,) bool     tokenized (the teacher labelled the sample and the tokenizer accepted it)
      _runs/<modality>/units (n_units,) str   commit marker per unit, as in the label store; it names the
                                     label unit's marker it was made from (`label_marker`, a sha256)
      _runs/<modality>/summary, _runs/_keys, _runs/_lock, _runs/_history   as in the label store (base.py)

A modality with a time axis (a clip's frames, its audio segments) keeps its tokens time-major in the same
(N, n_crops, L) array: L = steps x per_step, step 0's tokens first, and its group's `time` attribute says
`{"steps": T, "of": "frames" | "audio_segments"}`. Step i sits at relative time (i + 0.5) / steps of the clip
(frames and audio segments both at the middles of equal parts of it), so every time axis of a clip shares one
grid. Crops are the clip's: one spatial crop for all its frames. Per-clip values (embeddings, captions,
transcripts) have no time axis.

Units are the label store's units (same unit_size), one chunk per unit, written last-marker-first rule.
Modality names are flat (`rgb_image`, `dinov2_patches`, `palette`, `caption`): no dots or slashes,
so they can become WebDataset extensions as they are.
"""

from __future__ import annotations

import os

import numpy as np
import zarr

from omnimill import __version__
from omnimill.errors import UserError
from omnimill.store import layout
from omnimill.store.labels import LabelStore
from omnimill.store.base import RUNS, UnitPlan, UnitStore, create_array, is_url, local_path, same_or_inside

FORMAT = "omnimill.tokens/1"

__all__ = ["FORMAT", "RUNS", "TokenStore", "UnitPlan", "modality_name"]


def modality_name(teacher: str, fields: list[str], sep: str = "_") -> str:
    """The one naming rule for what a tokenizer reads: rgb + [image] -> rgb_image; palette + [colors, weights,
    count] -> palette (the whole teacher); "" + [caption] -> caption (a top-level array of the label store).

    sep="/" gives the same name as a label-store field (`rgb/image`, what `--field` takes); the default "_"
    the flat token-store modality, which becomes a WebDataset extension as it is."""
    if not teacher:
        return fields[0]
    return f"{teacher}{sep}{fields[0]}" if len(fields) == 1 else teacher


class TokenStore(UnitStore):
    FORMAT = FORMAT
    WHAT = "token store"
    TOP = ("keys", "crops")
    MAKE = "make one with `omnimill tokenize LABELS {uri} ...`"

    def __init__(self, group: zarr.Group, uri: str, storage_options: dict | None = None):
        super().__init__(group, uri, storage_options)
        self.n_crops = int(group.attrs["n_crops"])
        self.source = dict(group.attrs["source"])

    @classmethod
    def create(cls, uri: str, labels: LabelStore, crops: np.ndarray, seed: int,
               storage_options: dict | None = None) -> "TokenStore":
        if same_or_inside(uri, labels.uri) or same_or_inside(uri, labels.corpus["uri"]):
            raise UserError(f"{uri} is (inside) the label store or its corpus; give a new path for the token store")
        group = cls.new_group(uri, storage_options)
        n, n_crops = labels.n, crops.shape[1]
        keys = labels.keys().astype(object)
        create_array(group, "keys", (n,), dtype="str", **layout.once(labels.unit_size))[:] = keys
        crops_layout = layout.once(labels.unit_size, (n_crops, 5))
        create_array(group, "crops", (n, n_crops, 5), dtype="int32", **crops_layout)[:] = crops
        cls.index_keys(group, keys, labels.unit_size)
        cls.commit_create(group, {
            "format": FORMAT, "omnimill_version": __version__, "uuid": group.attrs["uuid"], "n": n,
            "n_crops": n_crops, "crop_seed": seed, "unit_size": labels.unit_size,
            "source": {"store": labels.uri if is_url(labels.uri) else os.path.abspath(local_path(labels.uri)),
                       "uuid": labels.uuid, "created": labels.created,
                       "n": labels.n, "view_size": labels.view_size, "corpus": labels.corpus},
        })
        return cls(group, uri, storage_options)

    def made_from(self, labels: LabelStore) -> bool:
        """By identity, not by path: `/abs/labels.zarr`, `./labels.zarr` and `labels.zarr/` are one store."""
        if "uuid" in self.source:
            return self.source["uuid"] == labels.uuid
        return self.source.get("created") == labels.created  # token stores before uuids

    def modalities(self) -> list[str]:
        return self.parts()

    def tokenizer_info(self, modality: str) -> dict:
        return dict(self.group[modality].attrs["tokenizer"])

    def time_axis(self, modality: str) -> dict | None:
        """{"steps": T, "of": "frames" | "audio_segments"} of a modality whose rows are time-major; None: no time axis."""
        time = self.attrs(modality).get("time")
        return dict(time) if time else None

    def prepare_modality(self, modality: str, info: dict, force: bool = False, time: dict | None = None) -> None:
        """Create the modality's arrays (with its time axis, if it has one), or check that existing tokens came
        from the same tokenizer and the same labels (a teacher relabelled with --force has a new identity: never
        mixed)."""
        complete = modality in self.modalities() and modality in self.group and "tokenizer" in self.group[modality].attrs
        if complete and not force:
            old = self.tokenizer_info(modality)
            if old.get("sha256") != info.get("sha256"):
                raise UserError(f"{modality} in {self.uri} was tokenized by another tokenizer ({old.get('path')}, "
                                f"sha256 {old.get('sha256', '')[:12]}); pass --force to retokenize it")
            if old.get("teacher_id", info.get("teacher_id")) != info.get("teacher_id"):
                raise UserError(f"teacher {info['teacher']} was relabelled since {modality} was tokenized into "
                                f"{self.uri}; pass --force to retokenize {modality} from the new labels")
            if "teacher_id" not in old:
                self.group[modality].attrs["tokenizer"] = {**old, "teacher_id": info.get("teacher_id")}
            return
        dtype = "uint16" if info["vocab_size"] <= 65536 else "int32"
        group = self.new_part(modality)
        length = info["tokens_per_sample"]
        create_array(group, "tokens", (self.n, self.n_crops, length), (self.unit_size, self.n_crops, length), dtype)
        create_array(group, "ok", (self.n,), (self.unit_size,), "bool")
        group.attrs["tokenizer"] = info
        if time:
            group.attrs["time"] = {"steps": int(time["steps"]), "of": str(time["of"])}
        self.commit_part(modality)

    def declared(self, part: str) -> dict[str, tuple]:
        return {"tokens": (self.n_crops, self.tokenizer_info(part)["tokens_per_sample"]), "ok": ()}

    def write_unit(self, modality: str, unit: UnitPlan, tokens: np.ndarray, ok: np.ndarray, marker: dict) -> None:
        array = self.writable(f"{modality}/tokens")
        array[unit.start:unit.stop] = tokens.astype(array.dtype)
        self.writable(f"{modality}/ok")[unit.start:unit.stop] = ok
        self.write_marker(modality, unit.unit, marker)

    def status(self) -> dict:
        modalities = {}
        for name in self.modalities():
            done = self.tally(name, max_errors=0)  # the summary and the markers it does not hold (summary.py)
            modalities[name] = {"units_done": done["units_done"], "units_total": self.n_units,
                                "samples_ok": done["ok"], "samples_skipped": done["skipped"],
                                "tokenizer": self.tokenizer_info(name),
                                **({"time": self.time_axis(name)} if self.time_axis(name) else {})}
        return {"store": self.uri, "uuid": self.uuid, "source": self.source, "n": self.n, "n_crops": self.n_crops,
                "n_units": self.n_units, "modalities": modalities, "lock": self.lock(), "runs": self.history()}
