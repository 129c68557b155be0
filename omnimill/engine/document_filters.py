"""`omnimill documents filter`: judge every document of a complete document store (store/documents.py).

Per document, kept or the reason it is not (the first check it fails), for each check asked: images per
document (min/max), text length (min characters), image size (min side: local images' headers, URL images'
from a fetched store, looked up by URL, or any image's from a label store's metadata teacher), the corpus's
image-text similarity (MMC4's matched_sim: CLIP with the matched sentence; every image must reach it),
exact duplicate images across documents (sha256 of local bytes, and of the fetched bytes when a fetched
store is given: a document holding an image an EARLIER document holds is dropped), and the two below. A
check that cannot be evaluated for an image (no size, no matched_sim, no CLIP embedding, no neighbouring
text) drops its document and says so. Written as the part `filter_<name>` with its settings and the identity
(uuid, checkpoint, index) of every store it read, under the store's lock, with a run record.

Image-text similarity with CLIP (`clip_labels` + `min_clip_sim`, OBELICS/MMC4 practice):

    label store (keys IMAGE_KEY), clip teacher ──clip/embedding────────────────────────────┐
    segments ──nearest text before / after each image (images between skipped)             │
        ──cut to the text tower's context (77 tokens for CLIP): the text before keeps its  │
          END, the text after its START, the words next to the image                       │
        ──text tower of the SAME checkpoint, rebuilt from the store's provenance            │
          (labelers/rebuild.py), TEXT_BATCH distinct texts a call ──────────────────────▶ cosine
    score = the better of the two cosines; a document is dropped when ANY of its images scores below T
    ("clip_sim: DOC/img_01 0.123 < 0.2"). T belongs to a checkpoint: MMC4 kept images at 0.15 with ViT-L/14
    and a matched sentence; SigLIP's cosines sit lower.

Every image must pass, as with the corpus's matched_sim: verdicts are per document, and a kept document
goes whole into packing, so an off-topic image in it would be trained on (MMC4 and OBELICS drop such an
image from its document instead; a per-image verdict is not in the store). An image the label store lacks
or failed to label drops its document ("no clip embedding"), as does an image with no text on either side
(a document without text: nothing to compare). The label store must hold images of this document store
only (its keys IMAGE_KEYs of it) and the built-in clip teacher (CLIP or SigLIP); its uuid and the checkpoint
(path, sha256) are in the filter's settings.

Near-duplicate images across documents (`near_dups`: an `omnimill audit index` of the documents' image
label store; its groups from audit.dups.find_duplicates, which the command module computes and hands in as
`NearDuplicates`): as with the exact dedup, a document holding an image grouped with an image of an EARLIER
document is dropped: every document of a group but its earliest; the reason names the image, the earliest
document's image closest to it and their cosine ("near_duplicate: d7/img_00 ~ d2/img_01 cosine 0.981";
groups are transitive, so a member reached through a chain may be below the threshold). A group within one
document drops nothing. Every grouped image counts as held whatever its document's verdict. The index's
label store must hold images of this document store only; the index dir, its creation time and
fingerprint, the label store's uuid and the threshold are in the settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from omnimill.errors import UserError
from omnimill.store.documents import DocumentStore

CLIP = "clip"  # the label store's teacher whose image embedding the neighbouring text is compared with
TEXT_BATCH = 256  # neighbouring texts per call of the text tower
DOCS_PER_PASS = 1024  # documents whose texts and image embeddings are held at once
# settings added with the CLIP and near-duplicate checks: left out of the record when not asked, so that a
# filter run before them, run again with the same options, still has the same settings
NEWER = ("clip_labels", "min_clip_sim", "near_dups", "near_threshold")


@dataclass
class FilterSettings:
    min_images: int | None = None
    max_images: int | None = None
    min_chars: int | None = None
    min_side: int | None = None  # pixels, of every image of the document
    min_sim: float | None = None  # the corpus's image-text similarity of every image (MMC4's matched_sim)
    dedup: bool = False  # exact duplicate images across documents (sha256)
    fetched: str | None = None  # a fetched store: the sizes and sha256 of the URL images
    labels: str | None = None  # a label store with the metadata teacher, keyed by IMAGE_KEY: image sizes
    clip_labels: str | None = None  # a label store with the clip teacher, keyed by IMAGE_KEY
    min_clip_sim: float | None = None  # CLIP cosine of every image with its neighbouring text
    near_dups: str | None = None  # an `omnimill audit index` dir of the documents' image label store
    near_threshold: float | None = None  # the cosine at which two images are near-duplicates

    def asked(self) -> bool:
        helpers = ("fetched", "labels", "clip_labels", "near_threshold")
        # `is`, not `in (None, False)`: 0 == False, and a threshold of 0 is asked
        return any(v is not None and v is not False for k, v in vars(self).items() if k not in helpers)


@dataclass
class NearDuplicates:
    """What the auditor found over an index of the documents' images (audit.dups.find_duplicates): its groups
    of IMAGE_KEYs (two or more each) and the index's info.json (store, field, created, fingerprint)."""
    groups: list[list[str]]
    info: dict = field(default_factory=dict)


def filter_documents(store_uri: str, name: str, settings: FilterSettings, force: bool = False,
                     storage_options: dict | None = None, near: NearDuplicates | None = None,
                     device: str = "auto") -> dict:
    """Judge every document of a complete document store; write the verdicts as the part `filter_<name>`.
    `near`: the auditor's groups when `settings.near_dups` is asked; `device`: where the CLIP text tower runs.
    Returns {n, kept, dropped_by: {check: documents}}."""
    if not settings.asked():
        raise UserError("no filter asked: give --min-images, --max-images, --min-chars, --min-side, --min-sim, "
                        "--min-clip-sim, --dedup or --near-dups")
    if (settings.clip_labels is None) != (settings.min_clip_sim is None):
        raise UserError("--min-clip-sim and --clip-labels go together: the threshold, and the label store (clip "
                        "teacher, keyed DOC_KEY/img_NN) whose image embeddings it applies to")
    if settings.near_dups and near is None:
        raise UserError("--near-dups: hand in the auditor's groups (audit.dups.find_duplicates of the index), "
                        "as `omnimill documents filter` does")
    store = DocumentStore.open(store_uri, "r+", storage_options)
    images = store.images()  # refuses an incomplete store
    fetched = _fetched_facts(settings.fetched, storage_options) if settings.fetched else {}
    sizes = _label_sizes(settings.labels, storage_options) if settings.labels else {}
    if settings.min_side and any(i["kind"] == "url" for i in images) and not (fetched or sizes):
        raise UserError("the store has URL images: give --fetched FETCHED_STORE (from `omnimill fetch` of its "
                        "image_urls.jsonl) or --labels LABEL_STORE (its metadata teacher) for their sizes")
    sims = _matched_sims(store) if settings.min_sim is not None else {}
    record = {k: v for k, v in vars(settings).items() if v is not None or k not in NEWER}
    clip_sims, near_facts = {}, {}
    if settings.near_dups:  # before the text tower loads: a wrong index is refused at once
        near_facts, record["near_index"] = near_duplicates(store, images, near, storage_options)
    if settings.clip_labels:
        scores, record["clip"] = clip_similarities(store, images, settings.clip_labels, device, storage_options)
        clip_sims = {key: {"clip_sim": score} for key, score in scores.items()}
    by_doc: dict[int, list[dict]] = {}
    for image in images:  # what is known of each image: local header or fetched store, then the label store's size
        facts = fetched.get(image["source"], {}) if image["kind"] == "url" else image
        known = {k: facts[k] for k in ("sha256", "width", "height") if k in facts}
        by_doc.setdefault(image["doc"], []).append({**image, **known, **sizes.get(image["key"], {}),
                                                    **sims.get(image["key"], {}), **clip_sims.get(image["key"], {}),
                                                    **near_facts.get(image["key"], {})})
    ok, n_images, chars = store.column("ok"), store.column("n_images"), store.column("n_text_chars")
    first_holder: dict[str, str] = {}  # sha256 -> IMAGE_KEY of its first document
    kept, reasons, dropped_by = [], [], {}
    for row in range(store.n):
        reason = _judge(settings, bool(ok[row]), int(n_images[row]), int(chars[row]), by_doc.get(row, []),
                        first_holder)
        kept.append(not reason)
        reasons.append(reason)
        if reason:
            check = reason.split(":", 1)[0]
            dropped_by[check] = dropped_by.get(check, 0) + 1
    if settings.fetched:
        record["fetched_uuid"] = _fetched_uuid(settings.fetched, storage_options)
    if settings.labels:
        from omnimill.store.labels import LabelStore

        record["labels_uuid"] = LabelStore.open(settings.labels, "r", storage_options).uuid
    token = store.acquire_lock(False, "filtered")
    try:
        store.write_filter(name, record, kept, reasons, force)
        store.append_run({"filter": name, "settings": record, "n": store.n, "kept": sum(kept), "dropped_by": dropped_by})
    finally:
        store.release_lock(token)
    return {"n": store.n, "kept": sum(kept), "dropped_by": dropped_by}


def _judge(s: FilterSettings, ok: bool, n_images: int, chars: int, images: list[dict], first_holder: dict) -> str:
    """The first check the document fails, in words ("" when it passes). Every image's hash is noted as held
    whatever the verdict, so which document counts as the first holder does not depend on other checks."""
    duplicate = ""
    if s.dedup:
        for image in images:
            digest = image.get("sha256")
            if digest and first_holder.setdefault(digest, image["key"]).rsplit("/", 1)[0] != image["key"].rsplit("/", 1)[0]:
                duplicate = duplicate or f"duplicate: {image['key']} is {first_holder[digest]}"
    if not ok:
        return "malformed"
    if s.min_images is not None and n_images < s.min_images:
        return f"min_images: {n_images} < {s.min_images}"
    if s.max_images is not None and n_images > s.max_images:
        return f"max_images: {n_images} > {s.max_images}"
    if s.min_chars is not None and chars < s.min_chars:
        return f"min_chars: {chars} < {s.min_chars}"
    if s.min_side is not None:
        for image in images:
            if "width" not in image:
                return f"min_side: {image['key']} has no size ({image.get('error') or 'not fetched'})"
            side = min(image["width"], image["height"])
            if side < s.min_side:
                return f"min_side: {image['key']} is {image['width']}x{image['height']}, side {side} < {s.min_side}"
    if s.min_sim is not None:
        for image in images:
            if "matched_sim" not in image:
                return f"min_sim: {image['key']} has no matched_sim in the corpus"
            if image["matched_sim"] < s.min_sim:
                return f"min_sim: {image['key']} matched_sim {image['matched_sim']:.3f} < {s.min_sim}"
    if s.min_clip_sim is not None:
        for image in images:
            score = image.get("clip_sim", "no clip score")
            if isinstance(score, str):  # why there is none
                return f"clip_sim: {image['key']} has {score}"
            if score < s.min_clip_sim:
                return f"clip_sim: {image['key']} {score:.3f} < {s.min_clip_sim}"
    near = next((image["near_duplicate"] for image in images if "near_duplicate" in image), "") if s.near_dups else ""
    return duplicate or near


# ---------------------------------------------------------------------------- image-text similarity (CLIP)
def clip_similarities(store: DocumentStore, images: list[dict], uri: str, device: str = "auto",
                      storage_options: dict | None = None) -> tuple[dict[str, float | str], dict]:
    """IMAGE_KEY -> the better cosine of the image's clip embedding with its two neighbouring texts, or why
    there is none, for every image of the parsed documents; and what was compared (the label store's uuid, the
    checkpoint's spec, path and sha256). `images`: the store's image table (`store.images()`)."""
    from omnimill.labelers.rebuild import rebuild_teacher
    from omnimill.store.labels import LabelStore

    labels = LabelStore.open(uri, "r", storage_options)
    rows = image_rows(labels, images, store.uri, "--clip-labels")
    _require_clip(labels)
    teacher = rebuild_teacher(labels, CLIP, device, instead="drop --clip-labels")
    labelled = labels.ok(CLIP)
    scores: dict[str, float | str] = {}
    for start in range(0, store.n, DOCS_PER_PASS):
        span = slice(start, min(start + DOCS_PER_PASS, store.n))
        neighbours = {}
        for text, ok in zip(store.column("segments", span), store.column("ok", span)):
            if ok:
                neighbours.update(neighbour_texts(json.loads(str(text) or "[]")))
        scores.update(_score(teacher, labels, rows, labelled, neighbours))
    provenance = labels.provenance(CLIP)
    return scores, {"labels_uuid": labels.uuid, "spec": provenance.get("spec"),
                    "checkpoint": provenance.get("checkpoint_path") or provenance.get("checkpoint"),
                    "checkpoint_sha256": provenance.get("checkpoint_sha256")}


def neighbour_texts(segments: list[dict]) -> dict[str, tuple[str | None, str | None]]:
    """IMAGE_KEY -> (the nearest text before the image, the nearest text after it), None where there is none;
    images between are skipped, and so are blank texts."""
    found: dict[str, list] = {}
    before = None
    for seg in segments:
        if "image" in seg:
            found[seg["image"]] = [before, None]
        elif str(seg.get("text") or "").strip():
            before = seg["text"]
    after = None
    for seg in reversed(segments):
        if "image" in seg:
            found[seg["image"]][1] = after
        elif str(seg.get("text") or "").strip():
            after = seg["text"]
    return {key: (b, a) for key, (b, a) in found.items()}


def embed_texts(teacher, texts: list[str], keep: str) -> dict[str, np.ndarray]:
    """Each distinct text -> its unit vector from the teacher's text tower, TEXT_BATCH texts a call. A text
    longer than the tower's context is cut by its tokenizer: keep="end" keeps the last tokens (the text before
    an image ends next to it), keep="start" the first (the text after it starts there)."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return {}
    tokenizer = teacher.tokenizer
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left" if keep == "end" else "right"
    try:
        vectors = [teacher.embed_text(unique[i:i + TEXT_BATCH]) for i in range(0, len(unique), TEXT_BATCH)]
    finally:
        tokenizer.truncation_side = side
    return dict(zip(unique, unit_rows(np.concatenate(vectors))))


def _score(teacher, labels, rows: dict[str, int], labelled: np.ndarray,
           neighbours: dict[str, tuple[str | None, str | None]]) -> dict[str, float | str]:
    """One pass of documents' images: cosines, or why there is none."""
    out: dict[str, float | str] = {}
    ready = []
    for key, (before, after) in neighbours.items():
        if key not in rows or not labelled[rows[key]]:
            out[key] = "no clip embedding (not labelled, or its labelling failed)"
        elif before is None and after is None:
            out[key] = "no neighbouring text"
        else:
            ready.append(key)
    if not ready:
        return out
    images = unit_rows(labels.read(f"{CLIP}/embedding", [rows[key] for key in ready]))
    before = embed_texts(teacher, [neighbours[key][0] for key in ready if neighbours[key][0] is not None], "end")
    after = embed_texts(teacher, [neighbours[key][1] for key in ready if neighbours[key][1] is not None], "start")
    for key, image in zip(ready, images):
        b, a = neighbours[key]
        texts = [before[b]] if b is not None else []
        texts += [after[a]] if a is not None else []
        out[key] = max(float(image @ text) for text in texts) if image.any() else "no clip embedding (a zero vector)"
    return out


def _require_clip(labels) -> None:
    """The label store holds omnimill's clip teacher (CLIP or SigLIP): its image embedding and text tower."""
    from omnimill.labelers.registry import BUILTIN

    if CLIP not in labels.teachers():
        raise UserError(f"--clip-labels {labels.uri} has no clip teacher (it has "
                        f"{', '.join(labels.teachers()) or 'none'}); label the documents' images with --teacher clip")
    spec = str(labels.provenance(CLIP).get("spec") or CLIP).partition("=")[0]
    if spec not in (CLIP, BUILTIN[CLIP]):
        raise UserError(f"--clip-labels {labels.uri}: its clip labels were made by {spec!r}, not omnimill's clip "
                        "teacher; label the images with --teacher clip")


# ---------------------------------------------------------------------------- near-duplicates (the auditor's)
def near_duplicates(store: DocumentStore, images: list[dict], near: NearDuplicates,
                    storage_options: dict | None = None) -> tuple[dict[str, dict], dict]:
    """IMAGE_KEY -> {near_duplicate: reason} for each image grouped with an image of an earlier document (the
    group's earliest document's image closest to it named, with their cosine); and the index's identity."""
    from omnimill.store.labels import LabelStore

    info = near.info
    labels = LabelStore.open(info["store"], "r", storage_options)
    rows = image_rows(labels, images, store.uri, "--near-dups")
    doc_of = {image["key"]: image["doc"] for image in images}
    facts = {}
    for group in near.groups:
        docs = np.array([doc_of[key] for key in group])
        first = np.flatnonzero(docs == docs.min())  # the group's earliest document's images: they stay
        later = np.flatnonzero(docs > docs.min())
        if not len(later):
            continue  # a group within one document drops nothing
        # each later image against the first document's few: g x m cosines, not g x g (a logo on every
        # page of a site makes one group of thousands)
        vectors = unit_rows(labels.read(info["field"], [rows[group[i]] for i in np.r_[first, later]]))
        cosine = vectors[len(first):] @ vectors[:len(first)].T
        for i, best, score in zip(later, cosine.argmax(1), cosine.max(1)):
            facts[group[i]] = {"near_duplicate": f"near_duplicate: {group[i]} ~ {group[first[best]]} "
                                                 f"cosine {score:.3f}"}
    return facts, {"created": info.get("created"), "field": info["field"], "store": info["store"],
                   "labels_uuid": labels.uuid, "fingerprint": info.get("fingerprint")}


# ---------------------------------------------------------------------------- shared
def image_rows(labels, images: list[dict], where: str, option: str) -> dict[str, int]:
    """IMAGE_KEY -> row of a label store of the images of the document store `where` (its image table
    `images`); refused if it holds another key."""
    ours = {image["key"] for image in images}
    keys = [str(key) for key in labels.keys()]
    stranger = next((key for key in keys if key not in ours), None)
    if stranger is not None:
        raise UserError(f"{option}: {labels.uri} is not a label store of the images of {where} (it holds "
                        f"{stranger!r}); label the document store's images (keys DOC_KEY/img_NN)")
    return {key: row for row, key in enumerate(keys)}


def unit_rows(x) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero): their dot products are cosines."""
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _matched_sims(store: DocumentStore) -> dict[str, dict]:
    """IMAGE_KEY -> {matched_sim} where the corpus gave one (MMC4: CLIP ViT-L/14 similarity of the image with
    its matched sentence; its authors kept images at 0.15 and above)."""
    out = {}
    for text in store.column("segments"):
        for seg in json.loads(str(text) or "[]"):
            sim = seg.get("meta", {}).get("matched_sim") if "image" in seg else None
            if isinstance(sim, (int, float)):
                out[seg["image"]] = {"matched_sim": float(sim)}
    return out


def _fetched_facts(uri: str, storage_options: dict | None) -> dict[str, dict]:
    """URL -> {sha256, width, height} of each good image of a fetched store (by URL: the fetch keeps one key
    per URL, the first document's)."""
    from omnimill.store.fetched import FetchedStore

    store = FetchedStore.open(uri, "r", storage_options)
    urls, good = store.read("url"), store.column("ok")
    sha, width, height = store.column("sha256"), store.column("width"), store.column("height")
    return {str(urls[i]): {"sha256": str(sha[i]), "width": int(width[i]), "height": int(height[i])}
            for i in range(store.n) if good[i]}


def _label_sizes(uri: str, storage_options: dict | None) -> dict[str, dict]:
    """IMAGE_KEY -> {width, height} from a label store's metadata teacher (orig_width, orig_height: the file's
    upright size), for the images it labelled."""
    from omnimill.store.labels import LabelStore

    store = LabelStore.open(uri, "r", storage_options)
    if "metadata" not in store.parts():
        raise UserError(f"{uri} has no metadata teacher; label it with `--teacher metadata` for image sizes")
    keys, ok = store.keys(), store.read("metadata/ok")
    width, height = store.read("metadata/orig_width"), store.read("metadata/orig_height")
    return {str(keys[i]): {"width": int(width[i]), "height": int(height[i])} for i in range(len(keys)) if ok[i]}


def _fetched_uuid(uri: str, storage_options: dict | None) -> str:
    from omnimill.store.fetched import FetchedStore

    return FetchedStore.open(uri, "r", storage_options).uuid
