"""The document part of `make demo` (steps (q)-(z), after the clip part), also runnable alone:
`python scripts/demo_docs.py`. Interleaved image-text documents (MM1's data) from the bundled photos, end to end.

    (q) corpus     ~100 short documents written now from templates about the scikit-image photos of the image
                   part (demo-out/corpus: each photo and its crops), as one OBELICS-style parquet: paragraphs
                   with 1-4 of one photo's pictures between them; about half the pictures are local files, the
                   rest URLs served by an HTTP server this script starts on 127.0.0.1 (one of them 404s); a few
                   documents made to fail the filters (no image, a single line, a picture an earlier one holds,
                   the 404)
    (r) ingest     `omnimill documents ingest` -> the document store (segments, image table, local images' tars)
    (s) fetch      `omnimill fetch` on the store's URL list -> the fetched store (per-image status: the 404 shows)
    (t) label      the documents' images (`--sample-kind document --fetched`) with rgb, metadata and clip (a tiny
                   CLIP on RANDOM weights, built here: no CLIP can be downloaded), then a FAISS index of the clip
                   embeddings (`omnimill audit index`)
    (u) filter     `omnimill documents filter`: at least 1 image, 120 characters, short side >= 64 px, no image
                   an earlier document holds (sha256 of local and fetched bytes), no near-duplicate (the index),
                   CLIP similarity of each image with its neighbouring text; then `documents status`
    (v) tokenize   the images with the image part's rgb tokenizer (demo-out/tokenizers/rgb: 8 x 8 tokens)
    (w) interleave `omnimill shards interleave` (tokens mode, seq_len 512, the image part's caption tokenizer for
                   the text, each image's alt text after it, 20% of the documents held out), `shards verify`
    (x) train      `omnimill train --objective causal` on MM1's mixture (45/45/10): the packed documents, the
                   image part's caption pairs (demo-out/shards, when there) and a text-only set written from the
                   templates (`omnimill shards text`); held-out loss per kind and source beside its unigram
    (y) generate   `omnimill generate RUN --continue DOC_KEY` on a held-out document
    (z) page       `omnimill audit report` of that document -> demo-out/document.html (text, images inline, labels)

Everything goes to demo-out/ (the corpus to demo-out/docs-corpus/). Running it again keeps the corpus, the
committed units of every store, the packed set and the training run. The part needs the image part's photos
(scripts/demo.py makes them; made here when missing) and reuses its rgb and caption tokenizers when they are
there, else trains the same recipes on the documents' images and alt text.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from demo import CORPUS, OUT, PHOTOS, SEED, SHARDS, TOKENIZER_RECIPES, TOKENIZERS, build_corpus, heading, omnimill

DOCS_CORPUS = OUT / "docs-corpus"  # docs.parquet, images/ (the local files), served/ (what the server serves)
PARQUET = DOCS_CORPUS / "docs.parquet"
PORT_FILE = DOCS_CORPUS / "port"  # the URLs in the parquet name this port: a rerun serves on it again
DOCS = OUT / "documents.zarr"
FETCHED = OUT / "fetched.zarr"
DOC_LABELS = OUT / "doc-labels.zarr"
CLIP_CHECKPOINT = OUT / "checkpoints" / "clip-tiny-random"
CLIP_INDEX = OUT / "index-doc-clip"  # the auditor's index of the images' clip embeddings: near-duplicates
MIN_CLIP_SIM, NEAR_THRESHOLD = -0.2, 0.99995  # for a CLIP on random weights: see step (u)
DOC_TOKENIZERS = OUT / "doc-tokenizers"  # only when the image part's tokenizers are missing
DOC_TOKENS = OUT / "doc-tokens.zarr"
PACKED = OUT / "docs-packed"
TEXT_ONLY = DOCS_CORPUS / "text.txt"  # text-only documents (one a line) for MM1's 10% of text batches
TEXT_SHARDS = OUT / "docs-text-shards"
N_TEXT = 200
DOC_RUN = OUT / "docs-run"
DOC_PAGE = OUT / "document.html"
FILTER = "default"
SEQ_LEN = 512  # a document is ~150-400 text tokens + 66 per image (8 x 8 + BOI/EOI): 1-3 documents a sequence
MAX_IMAGES = 8
HOLDOUT = 0.2  # of the documents (split at packing: ~18) and of the pairs and text (by the trainer)
# After each image's EOI its alt text (the photo's caption) as text, as MM1 / VeCap put captions beside images;
# `--captions synthetic` would take the captioner teacher's instead (a BLIP: too slow on this CPU, random here).
N_DOCS = 96  # written from templates; + the documents made to fail a filter
MISSING = "missing.jpg"  # the one URL the server answers with 404
# About a minute on 2 CPU cores (57 s at load 3): a 3-layer, 96-wide decoder, 400 steps of 8 sequences. Measured
# on this demo's set: 200 steps of a 2-layer, 64-wide one left held-out text at 1.82 nats and continued 4% of a
# document's tokens right; this reaches 1.33 and 10%.
TRAIN_SETTINGS = ["--objective=causal", "--steps=400", "--dim=96", "--decoder_layers=3", "--heads=4",
                  "--batch_size=8", f"--holdout={HOLDOUT}", "--lr=3e-3", "--warmup_steps=20", "--eval_every=100",
                  "--log_every=50", "--eval_batches=4", "--checkpoint_every=200"]

# photo -> (topic, one sentence about it): the facts a document repeats, so a small model can learn them.
FACTS = {
    "astronaut": ("space", "Eileen Collins was the first woman to pilot the space shuttle."),
    "coffee": ("the kitchen", "The cup of coffee sits on a white saucer."),
    "chelsea": ("animals", "Chelsea the cat likes to sleep in the sun."),
    "cat": ("animals", "Chelsea the cat likes to sleep in the sun."),
    "rocket": ("space", "The rocket stands ready on the launch pad."),
    "camera": ("people", "The man looks through the camera on its tripod."),
    "coins": ("history", "The coins were found in the ruins of Pompeii."),
    "moon": ("space", "The moon is covered with old craters."),
    "hubble_deep_field": ("space", "Every small light in the deep field is a galaxy."),
    "immunohistochemistry": ("medicine", "The stain shows the cells of the colon in brown and blue."),
    "retina": ("medicine", "The doctor looks at the vessels of the retina."),
    "clock": ("objects", "The hands of the clock are blurred by motion."),
    "page": ("books", "The page holds lines of printed words."),
    "text": ("books", "The printed letters lean away from the camera."),
    "cell": ("medicine", "The cell floats in a drop of saline."),
    "microaneurysms": ("medicine", "Small red spots mark the microaneurysms."),
    "brick": ("textures", "The bricks are laid in straight rows."),
    "grass": ("textures", "The grass grows in thin blades."),
    "gravel": ("textures", "The gravel is made of small round stones."),
    "stereo_motorcycle": ("objects", "The motorcycle stands in a quiet studio."),
    "eagle": ("animals", "The eagle watches the river from a branch."),
    "lily": ("plants", "The lily opens its petals in the morning."),
    "skin": ("medicine", "The biopsy shows the layers of the skin."),
}
OPENINGS = ("Notes on {topic}, page {n}.", "A short page about {topic}, number {n}.", "From our album of {topic}, "
            "page {n}.")
BEFORE = ("Here is {caption}.", "The next picture shows {caption}.", "Look at {caption}.")
AFTER = ("{fact} The picture is {colour}.", "The picture is {colour}. {fact}", "{fact} We took it {how}.")
CLOSINGS = ("That is all about {topic} on this page.", "More about {topic} on the next page.", "Thank you for reading "
            "about {topic}.")


def main() -> int:
    """Write the corpus, then ingest, fetch, label, filter, tokenize, pack, train and continue; 0 when every step
    worked."""
    os.chdir(Path(__file__).resolve().parent.parent)
    started = time.time()
    heading("q", "documents: ~100 written now about the bundled photos, OBELICS-style parquet; local files and URLs")
    build_corpus()  # the image part's photos and crops (kept when they are there)
    write_documents()
    server = serve(DOCS_CORPUS / "served")
    try:
        code = pipeline()
    finally:
        if server is not None:
            server.shutdown()
    print(f"the document part took {time.time() - started:.0f}s in all")
    return code


def pipeline() -> int:
    heading("r", "ingest: every document's segments and image table; the local images as a corpus, the URLs as a list")
    if omnimill("documents", "ingest", str(PARQUET), str(DOCS), "--docs-per-unit", "32") != 0:
        return 1

    heading("s", "fetch: the URL images from the local server, each with its status (one 404 on purpose)")
    from omnimill.store.documents import DocumentStore

    code = omnimill("fetch", DocumentStore.open(str(DOCS)).url_list(), str(FETCHED), "--urls-per-unit", "64",
                    "--retries", "0")
    if code == 3:
        print(f"exit code 3 = completed with failures: expected, {MISSING} is not on the server (404, final)")
    elif code != 0:
        return 1
    if omnimill("status", str(FETCHED)) != 0:
        return 1

    heading("t", "label the documents' images (keys DOC_KEY/img_NN): rgb, metadata, clip; index the clip embeddings")
    build_clip_checkpoint()
    print(f"teachers on RANDOM weights (the pipeline is real, their outputs are not): clip ({CLIP_CHECKPOINT}); "
          "rgb and metadata run no model")
    code = label_images()
    if code == 3:
        print(f"exit code 3 = completed with errors: expected, the image behind {MISSING} has no bytes (its row in "
              "the label store says why)")
    elif code != 0:
        return 1
    if not (CLIP_INDEX / "info.json").exists() and omnimill("audit", "index", str(DOC_LABELS), "--field",
                                                            "clip/embedding", "--out", str(CLIP_INDEX)) != 0:
        return 1

    heading("u", "filter: images, text, image size, exact and near duplicates, CLIP image-text similarity")
    # A random CLIP: image-text cosines spread about 0 (-0.18 to 0.28 measured on these images) and any two
    # images score 0.25-0.9999, so these thresholds keep almost everything and which documents they drop is
    # noise. With a real CLIP: MMC4's 0.15 (ViT-L/14) for --min-clip-sim, ~0.95-0.99 for --near-threshold.
    if omnimill("documents", "filter", str(DOCS), "--name", FILTER, "--min-images", "1", "--min-chars", "120",
                "--min-side", "64", "--dedup", "--fetched", str(FETCHED), "--clip-labels", str(DOC_LABELS),
                "--min-clip-sim", str(MIN_CLIP_SIM), "--near-dups", str(CLIP_INDEX), "--near-threshold",
                str(NEAR_THRESHOLD)) != 0:
        return 1
    if omnimill("documents", "status", str(DOCS)) != 0:
        return 1

    heading("v", "tokenize the images with the rgb tokenizer (the image part's, when it ran): the whole view, 1 crop")
    rgb, caption = tokenizers()
    if rgb is None:
        return 1
    if omnimill("tokenize", str(DOC_LABELS), str(DOC_TOKENS), "--crops", "1", "--tokenizer", str(rgb)) != 0:
        return 1

    heading("w", f"interleave: text + BOI <64 image tokens> EOI + alt text, packed into {SEQ_LEN}-token sequences; "
            "verify")
    if not (PACKED / "manifest.json").exists() and omnimill(
            "shards", "interleave", str(DOCS), str(PACKED), "--text-tokenizer", str(caption), "--image-tokens",
            str(DOC_TOKENS), "--filter", FILTER, "--seq-len", str(SEQ_LEN), "--max-images", str(MAX_IMAGES),
            "--samples-per-shard", "16", "--holdout", str(HOLDOUT), "--seed", str(SEED), "--captions", "alt") != 0:
        return 1
    if omnimill("shards", "verify", str(PACKED)) != 0:
        return 1
    manifest = json.loads((PACKED / "manifest.json").read_text())
    print(f"{manifest['n']} sequences of {SEQ_LEN} tokens, padding share {manifest['padding_share']:.1%}")

    heading("x", "train: next-token prediction, MM1's mixture: packed documents 45%, caption pairs 45%, text 10%")
    mixture = text_only(caption)
    if mixture is None:
        return 1
    if omnimill("train", str(PACKED), "--out", str(DOC_RUN), *TRAIN_SETTINGS, *mixture) != 0:
        return 1
    import demo_clips  # here: it imports demo's helpers, as this module does

    demo_clips.print_heldout(DOC_RUN)

    heading("y", "generate: continue a held-out document from its first half")
    key = held_out_document()
    if key is None:
        print("no document is held out whole at this holdout share: nothing to continue honestly")
    elif omnimill("generate", str(DOC_RUN), "--continue", key, "--tokens", "48") != 0:
        return 1
    else:
        print(f"{N_DOCS} documents and a minute of CPU: expect the templates' words and where images go, not "
              "this document's own sentences")

    heading("z", "a document as a page: its text with the images inline, each image's labels a click away")
    page_key = key or "docs_0000000"
    if omnimill("audit", "report", str(DOCS), page_key, "--labels", str(DOC_LABELS), "--fetched", str(FETCHED),
                "--out", str(DOC_PAGE)) != 0:
        return 1
    print(f"open {DOC_PAGE} in a browser ({page_key}: metadata, filter verdicts, paragraphs and pictures)")
    return 0


# ---------------------------------------------------------------------------- (q) the corpus
def write_documents() -> None:
    """docs.parquet + images/ + served/, written to docs-corpus.tmp/ and renamed when complete. The server's
    port is chosen now and kept in docs-corpus/port (the parquet's URLs name it)."""
    if PARQUET.exists():
        print(f"{DOCS_CORPUS} exists: kept")
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = DOCS_CORPUS.with_name(DOCS_CORPUS.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "served").mkdir()
    port = free_port()
    rows = [row_of(texts_images, port, tmp) for texts_images in documents()]
    table = pa.table({"images": [r[0] for r in rows], "texts": [r[1] for r in rows],
                      "metadata": [r[2] for r in rows], "general_metadata": [r[3] for r in rows]})
    pq.write_table(table, tmp / "docs.parquet", row_group_size=32)
    (tmp / "port").write_text(f"{port}\n")
    tmp.rename(DOCS_CORPUS)
    n_images = sum(1 for r in rows for i in r[0] if i)
    n_urls = sum(1 for r in rows for i in r[0] if i and "://" in i)
    print(f"{PARQUET}: {len(rows)} documents, {n_images} images ({n_urls} by URL on 127.0.0.1:{port}, "
          f"{n_images - n_urls} local files)")


def documents() -> list[list[tuple[str, str | None]]]:
    """Each document as positions: ("text", paragraph) or ("image", photo file name, and where: local | url).
    Seeded. N_DOCS documents about one photo each, its pictures drawn without replacement (no duplicates
    among them), then the documents made to fail a filter."""
    rng = np.random.default_rng(SEED)
    pictures = {name: sorted(p.name for p in CORPUS.glob(f"{name}*.jpg") if p.stem == name or
                             p.stem.startswith(f"{name}_crop")) for name in FACTS}
    pools = {name: list(rng.permutation(files)) for name, files in pictures.items() if files}
    names = sorted(pools)
    docs = []
    for n in range(N_DOCS):
        name = names[n % len(names)]
        topic, fact = FACTS[name]
        k = min(int(rng.integers(1, 5)), len(pools[name]))
        doc = [("text", pick(OPENINGS, rng).format(topic=topic, n=n + 1))]
        for _ in range(k):
            picture = pools[name].pop()
            caption = caption_of(picture)
            doc.append(("text", pick(BEFORE, rng).format(caption=caption)))
            doc.append(("image", picture, "url" if rng.random() < 0.5 else "local"))
            how = "with a tripod" if "crop" not in picture else "as a crop of a larger photo"
            colour = "in grey" if "greyscale" in PHOTOS.get(name, "") else "in colour"
            doc.append(("text", pick(AFTER, rng).format(fact=fact, colour=colour, how=how)))
        doc.append(("text", pick(CLOSINGS, rng).format(topic=topic)))
        docs.append(doc)
    first = docs[0][2][1]  # the first document's first picture
    docs.append([("text", repeat("A page with no picture at all.", FACTS["coins"][1]))])  # min_images
    docs.append([("image", pictures[names[1]][0], "local"), ("text", "Too short.")])  # min_chars
    docs.append([("text", repeat("The same picture once more.", FACTS[names[0]][1])), ("image", first, "local"),
                 ("text", "It was on the first page too.")])  # dedup: the same bytes as document 0's
    docs.append([("text", repeat("A picture the server does not have.", FACTS["grass"][1])),
                 ("image", MISSING, "url"), ("text", "The fetch records its 404.")])  # min_side: no size known
    return docs


def repeat(first: str, fact: str) -> str:
    """A paragraph long enough for the text filter: a sentence, then a fact three times."""
    return " ".join([first] + [fact] * 3)


def pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def caption_of(picture: str) -> str:
    """The image part's caption of a photo file (its .txt sidecar), without the crop number: 'a cup of coffee on
    a saucer, mirrored'."""
    text = (CORPUS / picture).with_suffix(".txt").read_text().strip()
    return ", ".join(part for part in text.split(", ") if not part.startswith("crop "))


def row_of(doc: list[tuple], port: int, folder: Path) -> tuple[list, list, str, str]:
    """One OBELICS row: images and texts of equal length (one non-null per position), metadata per position
    (alt text), general metadata. A local picture is copied to images/, a URL picture to served/."""
    images, texts, metadata = [], [], []
    for kind, what, *where in doc:
        if kind == "text":
            images.append(None), texts.append(what + "\n"), metadata.append(None)  # a paragraph
            continue
        if what != MISSING:
            shutil.copyfile(CORPUS / what, folder / ("served" if where[0] == "url" else "images") / what)
        images.append(f"http://127.0.0.1:{port}/{what}" if where[0] == "url" else f"images/{what}")
        texts.append(None)
        metadata.append({"alt_text": caption_of(what) if what != MISSING else "a picture that is not there"})
    return images, texts, json.dumps(metadata), json.dumps({"source": "omnimill demo", "language": "en"})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the fetch records every request's outcome: no access log here
        pass


def serve(folder: Path) -> ThreadingHTTPServer | None:
    """The served/ folder on 127.0.0.1 at the corpus's port, in a daemon thread (404 for what is not there);
    None when that port is taken (a rerun whose fetched store is complete asks the server for nothing)."""
    port = int(PORT_FILE.read_text())
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), partial(QuietHandler, directory=str(folder)))
    except OSError as e:
        print(f"cannot serve on 127.0.0.1:{port} ({e}): URL images not fetched yet will fail to connect; "
              f"remove {DOCS_CORPUS} to write the corpus again on a free port")
        return None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"serving {folder} on http://127.0.0.1:{port}/")
    return server


# ---------------------------------------------------------------------------- (t) label, (v) tokenizers
def build_clip_checkpoint() -> None:
    """A real transformers CLIP (ViT on 32 px views, 8 px patches; a 2-layer text tower) with RANDOM weights and
    a word-level tokenizer of the documents' words: the clip teacher and the CLIP filter run offline."""
    if (CLIP_CHECKPOINT / "config.json").exists():
        print(f"{CLIP_CHECKPOINT} exists: kept")
        return
    import torch
    from transformers import BertTokenizerFast, CLIPConfig, CLIPModel
    from transformers.utils import logging as hf_logging

    words = sorted({w.strip(".,").lower() for doc in documents() for kind, what, *_ in doc if kind == "text"
                    for w in what.split()} | {w.lower() for c in PHOTOS.values() for w in c.replace(",", " ").split()})
    tmp = CLIP_CHECKPOINT.with_name(CLIP_CHECKPOINT.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(str(tmp / "vocab.txt"))
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=64,
                                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                                         pad_token_id=tokenizer.pad_token_id, **small),
                        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=32)
    torch.manual_seed(SEED)
    hf_logging.disable_progress_bar()
    CLIPModel(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(CLIP_CHECKPOINT)
    print(f"wrote {CLIP_CHECKPOINT} (a tiny CLIP with random weights: no CLIP can be downloaded here)")


def label_images() -> int:
    """Every image of the document store (the document sample kind: local ones from its tars, URL ones from the
    fetched store, keys DOC_KEY/img_NN). Returns `omnimill label`'s exit code."""
    return omnimill("label", str(DOCS), str(DOC_LABELS), "--sample-kind", "document", "--fetched", str(FETCHED),
                    "--teacher", "rgb", "--teacher", "metadata", "--teacher", f"clip={CLIP_CHECKPOINT}",
                    "--unit-size", "32")


def tokenizers() -> tuple[Path | None, Path | None]:
    """The image part's rgb (spatial) and caption (sequence) tokenizers; trained on the documents' label store
    with the same recipes when the image part has not run."""
    found = []
    for name in ("rgb", "caption"):
        directory = TOKENIZERS / name
        if not (directory / "config.json").exists():
            directory = DOC_TOKENIZERS / name
            _, field, kind, flags = next(r for r in TOKENIZER_RECIPES if r[0] == name)
            if not (directory / "config.json").exists() and omnimill(
                    "tokenizer", "train", str(DOC_LABELS), "--field", field, "--kind", kind, "--out", str(directory),
                    *flags) != 0:
                return None, None
        print(f"{name} tokenizer: {directory}")
        found.append(directory)
    return found[0], found[1]


# ---------------------------------------------------------------------------- (x) the mixture
def text_only(caption: Path) -> list[str] | None:
    """The trainer's mixture flags: --text= a text-only shard set written here (N_TEXT paragraphs from the
    documents' templates, no picture), and --pairs= the image part's token shards (rgb_image + caption, the
    same two tokenizers as the packed set) when they are there. None when a command failed."""
    if not TEXT_ONLY.exists():
        rng = np.random.default_rng(SEED + 1)
        lines = []
        for n in range(N_TEXT):
            topic, fact = FACTS[sorted(FACTS)[n % len(FACTS)]]
            lines.append(" ".join([pick(OPENINGS, rng).format(topic=topic, n=n + 1), fact,
                                   pick(CLOSINGS, rng).format(topic=topic)]))
        TEXT_ONLY.write_text("\n".join(lines) + "\n")
    if not (TEXT_SHARDS / "manifest.json").exists() and omnimill(
            "shards", "text", str(TEXT_ONLY), str(TEXT_SHARDS), "--tokenizer", str(caption),
            "--samples-per-shard", "64") != 0:
        return None
    flags = [f"--text={TEXT_SHARDS}"]
    if (SHARDS / "manifest.json").exists() and caption.parent == TOKENIZERS:
        flags.append(f"--pairs={SHARDS}")
        print(f"pairs: {SHARDS} (the image part's photos: rgb_image 8 x 8 tokens + caption)")
    else:  # mm1 weighs pairs: without them, documents and text by the same 45 : 10 (rounded)
        flags.append("--data.mix=" + json.dumps({"interleaved": 0.8, "text": 0.2}))
        print(f"no pairs: {SHARDS} (scripts/demo.py makes it) is missing or of other tokenizers; "
              "documents 80%, text 20%")
    return flags


# ---------------------------------------------------------------------------- (w)-(y) the packed set
def held_out_document() -> str | None:
    """The first document of the packed set's held-out split (split by DOC_KEY at packing: the run never
    trained on any of its tokens)."""
    from omnimill.shards.interleave import InterleavedDataset

    first = next(iter(InterleavedDataset(str(PACKED), shuffle=False, epochs=1, split="heldout")), None)
    return first["docs"][0] if first else None


if __name__ == "__main__":
    sys.exit(main())
