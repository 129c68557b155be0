"""The image sample kind: raw bytes -> the canonical view every teacher sees.

The canonical view is the centre square crop of the (EXIF-upright) original, resized to
`view_size`. Dense labels live on a grid over exactly this region, so they line up across
teachers. `crop_box` = (x0, y0, x1, y1) of that square in original pixels maps boxes and
keypoints back to the original.

Odd inputs are normalised, not refused: CMYK, 16-bit, float, palette (+alpha), grayscale and
alpha images all become 8-bit RGB. Broken inputs raise `SampleError` with a reason a person
can act on (empty file, not an image, truncated, decompression bomb).

`ImageKind` is this rule as a sample kind (registered in corpus/kinds.py): a teacher's batch holds
the views (B, S, S, 3) and their `ImageInfo`s; the label store holds each sample's `crop_box`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from omnimill.corpus.sample import DecodeSettings, SampleArray, SampleKind
from omnimill.errors import SampleError

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"})
# PIL's own limit (~89.5 Mpx, a 9459² image). Above it we refuse before decoding any pixel.
DEFAULT_MAX_PIXELS = 89_478_485
# Alpha is composited over this grey, so transparent regions look neither black nor white.
BACKGROUND = (124, 116, 104)


@dataclass
class ImageInfo:
    """What the original looked like, before the canonical view was cut from it."""

    width: int  # after EXIF rotation
    height: int
    mode: str  # PIL mode of the file, e.g. "CMYK", "I;16", "P"
    format: str  # "JPEG", "PNG", ...
    n_bytes: int
    exif_rotated: bool
    crop_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in original pixels
    caption: str = ""


@dataclass
class Decoded:
    view: np.ndarray  # (S, S, 3) uint8
    info: ImageInfo


def centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    """Largest centred square: (x0, y0, x1, y1)."""
    side = min(width, height)
    x0 = (width - side) // 2
    y0 = (height - side) // 2
    return x0, y0, x0 + side, y0 + side


def decode_view(data: bytes, view_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Raw bytes -> canonical view. Raises SampleError("decode", reason) for bad input."""
    if not data:
        raise SampleError("decode", "empty file (0 bytes)")
    if max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
        # PIL refuses > 2x its own limit inside open(), before our check; a user who raised
        # --max-pixels asked for more, so lift PIL's limit to theirs (it never goes down here).
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # header only: nothing decoded yet
            if width * height > max_pixels:
                raise SampleError(
                    "decode",
                    f"decompression bomb: {width}x{height} = {width * height:,} pixels "
                    f"> limit {max_pixels:,} (raise --max-pixels to accept it)",
                )
            mode, fmt = image.mode, image.format or "unknown"
            orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
            _draft_for_view(image, view_size)
            image = ImageOps.exif_transpose(image)  # loads pixels; honours EXIF orientation
            rgb = to_rgb(image)
    except SampleError:
        raise
    except UnidentifiedImageError:
        raise SampleError("decode", "not an image (no decoder recognises the bytes)") from None
    except Image.DecompressionBombError as e:
        raise SampleError("decode", f"decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise SampleError("decode", f"{type(e).__name__}: {e}") from None

    # `rgb` may be a JPEG draft at 1/2..1/8 scale; the crop box is reported in full-size pixels.
    full_w, full_h = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    box = centre_square(full_w, full_h)
    scale = rgb.width / full_w
    draft_box = tuple(round(c * scale) for c in box)
    view = rgb.resize((view_size, view_size), Image.Resampling.BICUBIC, box=draft_box, reducing_gap=3.0)
    info = ImageInfo(full_w, full_h, mode, fmt, len(data), orientation not in (0, 1), box)
    return Decoded(np.asarray(view, dtype=np.uint8), info)


def _draft_for_view(image: Image.Image, view_size: int) -> None:
    """Let JPEG decode at 1/2, 1/4 or 1/8 scale when the view is that much smaller (DCT scaling).

    draft() keeps both sides >= the requested size, so the short side stays >= view_size.
    """
    if image.format != "JPEG":
        return
    width, height = image.size
    short = min(width, height)
    if short > 2 * view_size:
        image.draft("RGB", (width * view_size // short, height * view_size // short))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, keeping what the pixels mean."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit / float: stretch the actual range to 0..255 (a plain convert clips at 255).
        a = np.asarray(image, dtype=np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.nan_to_num(a).astype(np.uint8), "L").convert("RGB")
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


class ImageKind(SampleKind):
    """A still image; what teachers see is its canonical view."""

    name = "image"
    noun = "image"
    plural = "images"
    extensions = IMAGE_EXTS
    sample_arrays = (SampleArray("crop_box", (4,), "int32", "canonical view (x0, y0, x1, y1) in original pixels"),)

    def decode(self, data: bytes, sample: dict, settings: DecodeSettings) -> Decoded:
        decoded = decode_view(data, settings.view_size, settings.max_pixels)
        decoded.info.caption = str(sample.get("caption", ""))
        return decoded

    def batch_fields(self, decoded: list[Decoded]) -> dict:
        return {"views": np.stack([d.view for d in decoded]), "infos": [d.info for d in decoded]}

    def sample_values(self, decoded: Decoded) -> dict:
        return {"crop_box": decoded.info.crop_box}
