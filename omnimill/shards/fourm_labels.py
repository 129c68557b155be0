"""What a 4m export reads from the label store: the canonical views and the raw sequence domains.

The token store names its label store (uri + uuid); `open_labels` opens it and checks that it is that
store (by identity, not by path). Views come from the rgb teacher's `image` where it labelled the sample,
else from the corpus through the store's sample kind (the same decode the labels were made on).
Everything goes through the label store's read API (store/labels.py) and the corpus API (corpus/).
"""

from __future__ import annotations

import numpy as np

from omnimill.corpus.image import DEFAULT_MAX_PIXELS
from omnimill.corpus.listing import ByteReader
from omnimill.corpus.sample import DecodeSettings
from omnimill.errors import SampleError, UserError
from omnimill.shards.fourm_domains import caption_text, det_json, metadata_json, palette_json
from omnimill.store.labels import LabelStore
from omnimill.store.tokens import TokenStore

TEACHER_OF = {"det": "detection", "metadata": "metadata", "color_palette": "palette"}  # raw domain -> teacher


def open_labels(tokens: TokenStore, storage_options: dict | None = None, given: str | None = None) -> LabelStore:
    """The label store the token store was made from (or `given`: it moved, or was recorded relative to
    another folder by an older omnimill), checked by identity."""
    uri = given or tokens.source.get("store")
    if not uri:
        raise UserError(f"{tokens.uri} does not record its label store; give it with --labels PATH")
    try:
        labels = LabelStore.open(uri, "r", storage_options)
    except UserError as e:
        raise UserError(f"{tokens.uri} was made from the label store {uri}, which does not open ({e}); "
                        "give where it is now with --labels PATH") from None
    if not tokens.made_from(labels):
        raise UserError(f"the label store at {uri} is not the one {tokens.uri} was made from (uuid "
                        f"{labels.uuid} vs {tokens.source.get('uuid')}); put that store back or tokenize again")
    if labels.kind.frames_per_sample != 1:  # images, and the images of documents
        raise UserError(f"{uri} holds {labels.sample_kind} samples; ml-4m shards need images (ml-4m has no time "
                        f"axis): export clips with --format wds, which omnimill's loader and trainer read")
    return labels


class LabelReader:
    """Block reads (rows a..b) of views and raw domains from one label store."""

    def __init__(self, labels: LabelStore, raw: list[str], storage_options: dict | None = None):
        self.labels, self.raw = labels, raw
        self.teachers = set(labels.teachers())
        self.view_size = labels.view_size
        self.options = storage_options
        det = labels.provenance("detection").get("config", {}) if "detection" in self.teachers else {}
        self.id2label = dict(det.get("id2label") or {})

    @staticmethod
    def available(labels: LabelStore) -> list[str]:
        """Raw domains this label store can give (caption always: the corpus index holds captions)."""
        teachers = set(labels.teachers())
        return ["caption"] + [d for d, t in TEACHER_OF.items() if t in teachers]

    # ---------------------------------------------------------------- presence (cheap: flags and strings)
    def captions(self, rows: slice) -> list[str]:
        corpus = self.labels.read("caption", rows)
        generated = [""] * len(corpus)
        if "captioner" in self.teachers:
            ok = self.labels.ok("captioner", rows)
            first = self.labels.read("captioner/captions", rows)[:, 0]
            generated = [str(c) if o else "" for c, o in zip(first, ok)]
        return [caption_text(g, str(c)) for g, c in zip(generated, corpus)]

    def present(self, domain: str, rows: slice) -> np.ndarray:
        if domain == "caption":
            return np.array([bool(c) for c in self.captions(rows)], bool)
        ok = self.labels.ok(TEACHER_OF[domain], rows).astype(bool)
        if domain == "color_palette":
            ok &= self.labels.read("palette/count", rows) > 0
        return ok

    # ---------------------------------------------------------------- values
    def values(self, rows: slice) -> dict[str, list]:
        """{raw domain: value per row (None where absent)}: str for caption, JSON-ready structures else."""
        n = rows.stop - rows.start
        out = {}
        captions = self.captions(rows)
        if "caption" in self.raw:
            out["caption"] = [c or None for c in captions]
        detections = None
        if "detection" in self.teachers and ({"det", "metadata"} & set(self.raw)):
            d = self.labels.outputs("detection", rows, ["boxes", "classes", "scores", "count", "person_class"])
            d_ok = self.labels.ok("detection", rows)
            detections = [{k: v[i] for k, v in d.items()} if d_ok[i] else None for i in range(n)]
        if "det" in self.raw:
            out["det"] = [None if d is None else det_json(d["boxes"], d["classes"], d["scores"], int(d["count"]),
                                                           self.view_size, self.id2label) for d in detections]
        if "color_palette" in self.raw:
            p = self.labels.outputs("palette", rows, ["colors", "count"])
            ok = self.present("color_palette", rows)
            out["color_palette"] = [palette_json(p["colors"][i], int(p["count"][i])) if ok[i] else None
                                    for i in range(n)]
        if "metadata" in self.raw:
            names = ["orig_width", "orig_height", "brightness", "contrast", "saturation", "colorfulness", "entropy"]
            m = self.labels.outputs("metadata", rows, names)
            ok = self.labels.ok("metadata", rows)
            sam = None
            if "sam" in self.teachers:
                sam = np.where(self.labels.ok("sam", rows), self.labels.read("sam/count", rows), -1)
            out["metadata"] = [
                metadata_json({k: v[i] for k, v in m.items()}, captions[i] or None,
                              detections[i] if detections else None,
                              None if sam is None or sam[i] < 0 else int(sam[i])) if ok[i] else None
                for i in range(n)]
        return out

    def views(self, rows: slice, keys: list[str], wanted: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 canonical views of the `wanted` rows (zeros elsewhere): the rgb teacher's where it
        labelled the sample, else decoded from the corpus."""
        n, s = rows.stop - rows.start, self.view_size
        views = np.zeros((n, s, s, 3), np.uint8)
        missing = wanted.copy()
        if "rgb" in self.teachers and self.labels.has("rgb/image") and \
                self.labels.array_info("rgb/image")[0][1:] == (s, s, 3):
            labelled = self.labels.ok("rgb", rows).astype(bool) & wanted
            views[labelled] = self.labels.read("rgb/image", rows)[labelled]
            missing &= ~labelled
        if missing.any():
            samples = self.labels.samples(rows.start, rows.stop)
            kind, settings = self.labels.kind, DecodeSettings(s, DEFAULT_MAX_PIXELS)
            with ByteReader(self.options) as reader:
                for i in np.flatnonzero(missing):
                    sample = {k: v[i] for k, v in samples.items()}
                    try:
                        views[i] = kind.decode(kind.fetch(reader, sample), sample, settings).view
                    except (SampleError, OSError) as e:
                        raise UserError(f"cannot read the canonical view of {keys[i]} from {sample['source']} ({e}); "
                                        f"make the corpus readable or label the rgb teacher") from None
        return views
