"""ml-4m's modality names ("domains"), what omnimill writes under each, and the shapes ml-4m expects.

apple/ml-4m reads a sample as tar members `<key>.<domain>.<ext>` and looks each domain up in its
MODALITY_INFO; pre-tokenized domains must have the token count its embeddings were built for. The map
(one row per domain; `--modality` takes either column):

    ml-4m domain           member                  from omnimill                                  L    vocab
    rgb@224                rgb.jpg                 the canonical view (label store rgb/image, or     -      -
                                                   decoded from the corpus through the sample kind)
    crop_settings          crop_settings.npy       the token store's crops (n_crops, 5)              -      -
    tok_rgb@224            tok_rgb@224.npy         tokens of rgb/image                             196  16384
    tok_depth@224          tok_depth@224.npy       tokens of depth/depth or depth/disparity        196   8192
    tok_normal@224         tok_normal@224.npy      tokens of normals/normals                       196   8192
    tok_semseg@224         tok_semseg@224.npy      tokens of semseg/classes                        196   4096
    tok_clip@224           tok_clip@224.npy        tokens of clip/patches                          196   8192
    tok_canny_edge@224     tok_canny_edge@224.npy  tokens of canny/edges                           196   8192
    tok_sam_edge@224       tok_sam_edge@224.npy    tokens of sam/edges                             196   8192
    tok_dinov2@224         tok_dinov2@224.npy      tokens of dinov2/patches                        256   8192
    tok_dinov2_global      tok_dinov2_global.npy   tokens of dinov2/cls                             16   8192
    tok_imagebind@224      tok_imagebind@224.npy   tokens of imagebind/patches                     256   8192
    tok_imagebind_global   tok_imagebind_global.npy tokens of imagebind/embedding                   16   8192
    caption                caption.txt             captioner/captions[0], else the corpus caption    raw (ml-4m's WordPiece)
    det                    det.json                detection/{boxes, classes, scores, count}          raw
    metadata               metadata.json           metadata/* (+ caption, detection, sam counts)      raw
    color_palette          color_palette.json      palette/{colors, count}                            raw

Token domains are matched by the tokenizer's teacher group and field (what `omnimill tokenizer train
--field` read); sequence tokenizers of omnimill are not exported as tokens (ml-4m tokenizes sequences
itself). L is per crop; the arrays are (n_crops, L). Vocabulary: ml-4m's embedding tables have the
sizes above, so a tokenizer with more codes would index past them (refused); one with fewer fits (noted).
"""

from __future__ import annotations

import re

import numpy as np

# (teacher group, field) -> ml-4m domain; field None: any single field of that teacher
TOKEN_DOMAINS: dict[tuple[str, str | None], str] = {
    ("rgb", "image"): "tok_rgb@224",
    ("depth", None): "tok_depth@224",
    ("normals", "normals"): "tok_normal@224",
    ("semseg", "classes"): "tok_semseg@224",
    ("clip", "patches"): "tok_clip@224",
    ("canny", "edges"): "tok_canny_edge@224",
    ("sam", "edges"): "tok_sam_edge@224",
    ("dinov2", "patches"): "tok_dinov2@224",
    ("dinov2", "cls"): "tok_dinov2_global",
    ("imagebind", "patches"): "tok_imagebind@224",
    ("imagebind", "embedding"): "tok_imagebind_global",
}

# domain -> (tokens per crop, vocabulary) as ml-4m's MODALITY_INFO builds its embeddings (224 input)
EXPECTED: dict[str, tuple[int, int]] = {
    "tok_rgb@224": (196, 16384), "tok_depth@224": (196, 8192), "tok_normal@224": (196, 8192),
    "tok_semseg@224": (196, 4096), "tok_clip@224": (196, 8192), "tok_canny_edge@224": (196, 8192),
    "tok_sam_edge@224": (196, 8192), "tok_dinov2@224": (256, 8192), "tok_imagebind@224": (256, 8192),
    "tok_dinov2_global": (16, 8192), "tok_imagebind_global": (16, 8192),
}

VIEW = "rgb@224"  # ml-4m's main_augment_domain: its detection transform needs the image size
RAW = ("caption", "det", "metadata", "color_palette")  # sequence domains, written raw from the label store
MEMBER = {VIEW: "rgb.jpg", "crop_settings": "crop_settings.npy", "caption": "caption.txt", "det": "det.json",
          "metadata": "metadata.json", "color_palette": "color_palette.json"}
PALETTE_SIZES = range(1, 8)  # ml-4m's colour-palette transform draws k in 1..7 per sample


def member(domain: str) -> str:
    """The tar member extension of a domain (after `<key>.`)."""
    return MEMBER.get(domain, f"{domain}.npy")


def token_domain(info: dict) -> str | None:
    """The ml-4m domain of a token-store modality (its tokenizer record), or None if ml-4m has none."""
    fields = info.get("fields") or []
    if info.get("kind") == "sequence" or len(fields) != 1:
        return None
    teacher = str(info.get("teacher") or "")
    return TOKEN_DOMAINS.get((teacher, fields[0])) or TOKEN_DOMAINS.get((teacher, None))


def shape_problem(domain: str, modality: str, info: dict) -> str | None:
    """What is wrong with a modality's token shape for ml-4m (None: nothing)."""
    length, vocab = int(info["tokens_per_sample"]), int(info["vocab_size"])
    want_length, want_vocab = EXPECTED[domain]
    if length == want_length and vocab <= want_vocab and int(info.get("pad_id", -1)) < 0:
        return None
    field = f"{info.get('teacher')}/{info.get('fields', ['?'])[0]}"
    side = int(round(want_length ** 0.5))
    return (f"{domain} (token-store modality {modality}) has {length} tokens per crop and vocabulary {vocab}; "
            f"ml-4m expects {want_length} ({side} x {side}) and at most {want_vocab}: retrain it with "
            f"`omnimill tokenizer train LABELS --field {field} --kind {info.get('kind', 'spatial')} --out DIR "
            f"--preset 4m` and tokenize again")


# ---------------------------------------------------------------- raw sequence domains


def caption_text(generated: str, corpus: str) -> str:
    """The captioner's first (beam-search) caption where there is one, else the corpus's own caption."""
    return (generated or "").strip() or (corpus or "").strip()


def det_json(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray, count: int, view_size: int,
             id2label: dict) -> dict:
    """ml-4m's detection structure: boxes as (x0, y0, x1, y1) in 0..1 of the view (albumentations' format;
    its transform crops them with the crop settings), best score first; empty boxes are dropped."""
    instances = []
    for box, cls, score in zip(boxes[:count], classes[:count], scores[:count]):
        x0, y0, x1, y1 = (float(np.clip(v / view_size, 0.0, 1.0)) for v in box)
        if x1 > x0 and y1 > y0:
            instances.append({"boxes": [x0, y0, x1, y1], "class_name": str(id2label.get(str(int(cls)), int(cls))),
                              "score": float(score)})
    return {"instances": instances}


def palette_json(colors: np.ndarray, count: int) -> list[dict]:
    """ml-4m's colour-palette structure: [{"1": [[r, g, b]], ..., "7": [7 colours]}], RGB 0..255.

    omnimill's palette teacher gives one palette of up to 7 colours, most frequent first; the k-colour
    palette is its k most frequent colours (cycled when the view has fewer than k)."""
    real = [[int(c) for c in color] for color in colors[:count]]
    return [{str(k): [real[j % len(real)] for j in range(k)] for k in PALETTE_SIZES}]


def caption_stats(caption: str) -> dict:
    """caption_n_chars / _words / _sentences, as ml-4m's metadata names them."""
    sentences = [s for s in re.split(r"[.!?]+", caption) if s.strip()]
    return {"caption_n_chars": len(caption), "caption_n_words": len(caption.split()),
            "caption_n_sentences": len(sentences)}


def metadata_json(stats: dict, caption: str | None = None, detections: dict | None = None,
                  sam_count: int | None = None) -> dict:
    """Only keys ml-4m's MetadataTransform knows (it raises on others), in its scales: image sizes in pixels
    (it bins them by 32), brightness / saturation 0..255, contrast 0..127 (std of 0..255 luma), colorfulness
    on 0..255 RGB (Hasler & Süsstrunk, as omnimill computes it), entropy in bits; counts as integers.
    omnimill's sharpness, aspect ratio and file facts have no ml-4m name and are left out."""
    out = {"original_width": int(stats["orig_width"]), "original_height": int(stats["orig_height"]),
           "brightness": float(stats["brightness"]) * 255, "contrast": float(stats["contrast"]) * 255,
           "saturation": float(stats["saturation"]) * 255, "colorfulness": float(stats["colorfulness"]),
           "entropy": float(stats["entropy"])}
    if caption:
        out.update(caption_stats(caption))
    if detections is not None:
        classes = np.asarray(detections["classes"][:int(detections["count"])])
        out["n_coco_instances"] = int(len(classes))
        out["coco_instance_diversity"] = int(len(set(classes.tolist())))
        if detections.get("person_class", -1) >= 0:
            out["n_humans"] = int((classes == detections["person_class"]).sum())
    if sam_count is not None:
        out["n_sam_instances"] = int(sam_count)
    return out
