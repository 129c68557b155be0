"""Shared fixtures: small real corpora (good and bad files), a tiny real DINOv2 checkpoint.

Everything is made here at test time: no downloads (HF_HUB_OFFLINE=1), no committed binaries.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TESTS = Path(__file__).parent


def photo(seed: int, width: int = 96, height: int = 72) -> np.ndarray:
    """A smooth random picture (gradients + blobs): compresses like a photo, has edges and colours."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-3, 3, 3)
        channels.append(np.sin(a * x * 6 + b * y * 6 + c))
    img = (np.stack(channels, -1) + 1) * 127.5
    for _ in range(3):  # a few flat blobs give Canny and the palette something to find
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
        img[((x - cx) ** 2 + (y - cy) ** 2) < r * r] = rng.uniform(0, 255, 3)
    return img.clip(0, 255).astype(np.uint8)


def write_images(folder: Path, n: int, start: int = 0, ext: str = "jpg", size=(96, 72)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"img{i:04d}.{ext}"
        Image.fromarray(photo(i, *size)).save(path)
        paths.append(path)
    return paths


def jpeg_bytes(seed: int = 0, size=(96, 72), **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo(seed, *size)).save(buf, "JPEG", **save)
    return buf.getvalue()


def bad_files() -> dict[str, bytes]:
    """name -> bytes of every odd input the engine must survive. Bad ones start with `bad_`."""
    files = {}
    good = jpeg_bytes(1, (120, 80))
    files["bad_truncated.jpg"] = good[: len(good) // 2]
    files["bad_empty.jpg"] = b""
    files["bad_text.jpg"] = b"this is a text file named .jpg\n"
    # decompression bomb: a 10000 x 10000 grey PNG (100 Mpx > PIL's 89.5 Mpx limit), ~100 kB on disk
    bomb = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(bomb, "PNG")
    files["bad_bomb.png"] = bomb.getvalue()

    def save(image: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        image.save(buf, fmt, **kw)
        return buf.getvalue()

    rgb = Image.fromarray(photo(2, 90, 60))
    files["odd_cmyk.jpg"] = save(rgb.convert("CMYK"), "JPEG")
    sixteen = (np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16)
    files["odd_16bit.png"] = save(Image.fromarray(sixteen), "PNG")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    files["odd_palette_alpha.png"] = save(pal, "PNG", transparency=0)
    files["odd_grey.jpg"] = save(rgb.convert("L"), "JPEG")
    files["odd_rgba.png"] = save(rgb.convert("RGBA"), "PNG")
    # EXIF orientation 6 (rotate 90° clockwise to display): stored 90 wide x 60 high, shown 60 x 90
    exif = Image.Exif()
    exif[0x0112] = 6
    files["odd_exif_rotated.jpg"] = save(rgb, "JPEG", exif=exif.tobytes())
    files["odd_gif.gif"] = save(rgb.convert("P"), "GIF")
    return files


@pytest.fixture
def corpus(tmp_path) -> Path:
    """20 good JPEGs in two folders, two with sidecar captions."""
    root = tmp_path / "corpus"
    write_images(root / "a", 12)
    write_images(root / "b", 8, start=12)
    (root / "a" / "img0001.txt").write_text("a red ball on grass\n")
    (root / "b" / "img0013.json").write_text('{"caption": "two cats"}')
    return root


@pytest.fixture
def bad_corpus(tmp_path) -> Path:
    """Good images mixed with every kind of bad and odd file."""
    root = tmp_path / "bad_corpus"
    write_images(root, 6)
    for name, data in bad_files().items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory) -> Path:
    """A real Dinov2Model from a tiny config with random weights, saved as a user's checkpoint would be."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)  # the same tiny weights every session
    path = tmp_path_factory.mktemp("ckpt") / "tiny-dinov2"
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          patch_size=14, image_size=56)
    Dinov2Model(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_depth_anything(tmp_path_factory) -> Path:
    """A real checkpoint of another model type (Depth Anything), for "wrong checkpoint" errors."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    path = tmp_path_factory.mktemp("ckpt") / "depth-anything"
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, out_indices=[1],
                            reshape_hidden_states=False)
    DepthAnythingForDepthEstimation(DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8],
                                                        reassemble_factors=[1])).save_pretrained(path)
    return path


def invoke(*args):
    """The CLI in this process, arguments as strings."""
    from typer.testing import CliRunner

    from omnimill.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, fragment: str) -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.output


def listing(folder) -> dict:
    """Every file under a folder with its bytes: what a test compares before and after."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


WORDS = "red blue green small large cat dog bus tree house street sky water boat road field".split()


@pytest.fixture(scope="session")
def token_data(tmp_path_factory) -> dict:
    """A real token store made by the real pipeline: 40 images (2 of them broken, so some samples lack
    image modalities), captions on every good image, labelled (rgb, palette), three small tokenizers
    trained (rgb spatial 4x4, palette and caption sequences) and tokenized with 2 crops; unit_size 8."""
    from omnimill.engine.label import label
    from omnimill.engine.tokenize import tokenize
    from omnimill.tokenize.train import train_tokenizer

    root = tmp_path_factory.mktemp("token_data")
    corpus = root / "corpus"
    paths = write_images(corpus, 38, size=(80, 64))
    rng = np.random.default_rng(0)
    for path in paths:
        path.with_suffix(".txt").write_text(" ".join(rng.choice(WORDS, 6)) + "\n")
    (corpus / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (corpus / "zz_empty.png").write_bytes(b"")
    labels = str(root / "labels.zarr")
    label(str(corpus), labels, ["rgb", "palette"], workers=1, unit_size=8, view_size=64, progress=False)
    tok = root / "tokenizers"
    tokenizers = {
        "rgb": train_tokenizer(labels, "rgb/image", "spatial", tok / "rgb", steps=30, batch_size=8, input_size=32,
                               grid=4, width=16, vocab=64, progress=False, holdout=0.25),
        "palette": train_tokenizer(labels, "palette", "sequence", tok / "palette", progress=False, holdout=0.25),
        "caption": train_tokenizer(labels, "caption", "sequence", tok / "caption", progress=False, holdout=0.25,
                                   tokens_per_sample=16),
    }
    tokens = str(root / "tokens.zarr")
    result = tokenize(labels, tokens, [str(p) for p in tokenizers.values()], n_crops=2, workers=1, progress=False)
    assert result.exit_code == 0
    return {"root": root, "labels": labels, "tokens": tokens, "tokenizers": {k: str(v) for k, v in tokenizers.items()},
            "captions": {p.stem: p.with_suffix(".txt").read_text().strip() for p in paths}}
