"""`omnimill documents filter`: judge every document of a complete document store (store/documents.py).

Per document, kept or the reason it is not (the first check it fails), for each check asked: images per
document (min/max), text length (min characters), image size (min side: local images' headers, URL images'
from a fetched store, looked up by URL, or any image's from a label store's metadata teacher), the corpus's
image-text similarity (MMC4's matched_sim: CLIP with the matched sentence; every image must reach it),
exact duplicate images across documents (sha256 of local bytes, and of the fetched bytes when a fetched
store is given: a document holding an image an EARLIER document holds is dropped). A check that cannot be
evaluated for an image (no size, no matched_sim) drops its document and says so. Written as the part
`filter_<name>` with its settings and the identity (uuid) of every store it read, under the store's lock,
with a run record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from omnimill.errors import UserError
from omnimill.store.documents import DocumentStore


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

    def asked(self) -> bool:
        return any(v not in (None, False) for k, v in vars(self).items() if k not in ("fetched", "labels"))


def filter_documents(store_uri: str, name: str, settings: FilterSettings, force: bool = False,
                     storage_options: dict | None = None) -> dict:
    """Judge every document of a complete document store; write the verdicts as the part `filter_<name>`.
    Returns {n, kept, dropped_by: {check: documents}}."""
    if not settings.asked():
        raise UserError("no filter asked: give --min-images, --max-images, --min-chars, --min-side, --min-sim or --dedup")
    store = DocumentStore.open(store_uri, "r+", storage_options)
    images = store.images()  # refuses an incomplete store
    fetched = _fetched_facts(settings.fetched, storage_options) if settings.fetched else {}
    sizes = _label_sizes(settings.labels, storage_options) if settings.labels else {}
    if settings.min_side and any(i["kind"] == "url" for i in images) and not (fetched or sizes):
        raise UserError("the store has URL images: give --fetched FETCHED_STORE (from `omnimill fetch` of its "
                        "image_urls.jsonl) or --labels LABEL_STORE (its metadata teacher) for their sizes")
    sims = _matched_sims(store) if settings.min_sim is not None else {}
    by_doc: dict[int, list[dict]] = {}
    for image in images:  # what is known of each image: local header or fetched store, then the label store's size
        facts = fetched.get(image["source"], {}) if image["kind"] == "url" else image
        known = {k: facts[k] for k in ("sha256", "width", "height") if k in facts}
        by_doc.setdefault(image["doc"], []).append({**image, **known, **sizes.get(image["key"], {}),
                                                    **sims.get(image["key"], {})})
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
    record = {k: v for k, v in vars(settings).items()}
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
    return duplicate


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
