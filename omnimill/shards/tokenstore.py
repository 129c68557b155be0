"""The token store: every modality of every sample as rows of tokens, for N aligned crops.

    tokens.zarr/              attrs: format, omnimill version, source {store uri, created, n, view_size},
                                     n_crops, crop_seed, unit_size
      keys    (N,) str        the label store's keys, same order (alignment is by index, checked by key)
      crops   (N, n_crops, 5) int32   (top, left, h, w, flip) in canonical-view pixels; crop 0 = whole view
      <modality>/             attrs: tokenizer {path, sha256, kind, vocab_size, tokens_per_sample, pad_id,
                                     teacher, fields}
        tokens  (N, n_crops, L)  uint16 when vocab_size <= 65536, else int32
        ok      (N,) bool     tokenized (the teacher labelled the sample and the tokenizer accepted it)
      _runs/<modality>/units (n_units,) str   commit marker per unit, as in the label store

Units are the label store's units (same unit_size), one chunk per unit, written last-marker-first rule.
Modality names are flat (`rgb_image`, `dinov2_patches`, `palette`, `caption`): no dots or slashes,
so they can become WebDataset extensions as they are.
"""

from __future__ import annotations

import json

import numpy as np
import zarr

from omnimill import __version__
from omnimill.errors import UserError
from omnimill.shards.labelstore import RUNS, LabelStore, UnitPlan, _create, _now, open_group

FORMAT = "omnimill.tokens/1"


def modality_name(teacher: str, fields: list[str]) -> str:
    """rgb + [image] -> rgb_image; palette + [colors, weights, count] -> palette; "" + [caption] -> caption."""
    if not teacher:
        return fields[0]
    return f"{teacher}_{fields[0]}" if len(fields) == 1 else teacher


class TokenStore:
    def __init__(self, group: zarr.Group, uri: str, storage_options: dict | None = None):
        if group.attrs.get("format") != FORMAT:
            raise UserError(f"{uri} is not an omnimill token store (format {group.attrs.get('format')!r})")
        self.group, self.uri, self.storage_options = group, uri, storage_options or {}
        attrs = group.attrs
        self.n, self.n_crops, self.unit_size = int(attrs["n"]), int(attrs["n_crops"]), int(attrs["unit_size"])
        self.source = dict(attrs["source"])

    @staticmethod
    def exists(uri: str, storage_options: dict | None = None) -> bool:
        return LabelStore.exists(uri, storage_options)

    @classmethod
    def open(cls, uri: str, mode: str = "r", storage_options: dict | None = None) -> "TokenStore":
        try:
            return cls(open_group(uri, mode, storage_options), uri, storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise UserError(f"no token store at {uri}; make one with `omnimill tokenize LABELS {uri} ...`") from None

    @classmethod
    def create(cls, uri: str, labels: LabelStore, crops: np.ndarray, seed: int,
               storage_options: dict | None = None) -> "TokenStore":
        group = open_group(uri, "w-", storage_options)
        n, n_crops = labels.n, crops.shape[1]
        _create(group, "keys", (n,), (labels.unit_size,), "str")[:] = labels.keys().astype(object)
        _create(group, "crops", (n, n_crops, 5), (labels.unit_size, n_crops, 5), "int32")[:] = crops
        group.require_group(RUNS)
        group.attrs.update({
            "format": FORMAT, "omnimill_version": __version__, "created": _now(), "n": n, "n_crops": n_crops,
            "crop_seed": seed, "unit_size": labels.unit_size,
            "source": {"store": labels.uri, "created": labels.group.attrs.get("created"), "n": labels.n,
                       "view_size": labels.view_size, "corpus": labels.corpus},
        })
        return cls(group, uri, storage_options)

    @property
    def n_units(self) -> int:
        return -(-self.n // self.unit_size)

    def unit(self, u: int) -> UnitPlan:
        return UnitPlan(u, u * self.unit_size, min(self.n, (u + 1) * self.unit_size))

    def modalities(self) -> list[str]:
        return sorted(name for name, _ in self.group[RUNS].groups())

    def tokenizer_info(self, modality: str) -> dict:
        return dict(self.group[modality].attrs["tokenizer"])

    def prepare_modality(self, modality: str, info: dict, force: bool = False) -> None:
        """Create the modality's arrays, or check that existing tokens came from the same tokenizer."""
        if modality in self.modalities() and not force:
            old = self.tokenizer_info(modality)
            if old.get("sha256") != info.get("sha256"):
                raise UserError(f"{modality} in {self.uri} was tokenized by another tokenizer ({old.get('path')}, "
                                f"sha256 {old.get('sha256', '')[:12]}); pass --force to retokenize it")
            return
        dtype = "uint16" if info["vocab_size"] <= 65536 else "int32"
        group = self.group.create_group(modality, overwrite=True)
        length = info["tokens_per_sample"]
        _create(group, "tokens", (self.n, self.n_crops, length), (self.unit_size, self.n_crops, length), dtype)
        _create(group, "ok", (self.n,), (self.unit_size,), "bool")
        _create(self.group.require_group(RUNS).create_group(modality, overwrite=True), "units",
                (self.n_units,), (1,), "str")
        group.attrs["tokenizer"] = info

    def done_units(self, modality: str) -> np.ndarray:
        if modality not in self.modalities():
            return np.zeros(self.n_units, bool)
        return self.group[f"{RUNS}/{modality}/units"][:] != ""

    def markers(self, modality: str) -> list[dict | None]:
        return [json.loads(m) if m else None for m in self.group[f"{RUNS}/{modality}/units"][:]]

    def write_unit(self, modality: str, unit: UnitPlan, tokens: np.ndarray, ok: np.ndarray, marker: dict) -> None:
        group = self.group[modality]
        group["tokens"][unit.start:unit.stop] = tokens.astype(group["tokens"].dtype)
        group["ok"][unit.start:unit.stop] = ok
        self.group[f"{RUNS}/{modality}/units"][unit.unit] = json.dumps(marker)

    def status(self) -> dict:
        modalities = {}
        for name in self.modalities():
            markers = [m for m in self.markers(name) if m]
            modalities[name] = {"units_done": len(markers), "units_total": self.n_units,
                                "samples_ok": sum(m["ok"] for m in markers),
                                "samples_skipped": sum(m["skipped"] for m in markers),
                                "tokenizer": self.tokenizer_info(name)}
        return {"store": self.uri, "source": self.source, "n": self.n, "n_crops": self.n_crops,
                "modalities": modalities}
