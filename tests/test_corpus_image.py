"""omnimill/corpus/image.py: raw bytes -> the canonical view (centre square, EXIF-upright, 8-bit RGB)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import bad_files, jpeg_bytes, photo
from omnimill.errors import SampleError
from omnimill.corpus.image import BACKGROUND, _draft_for_view, centre_square, decode_view

BAD = {name: data for name, data in bad_files().items() if name.startswith("bad_")}
ODD = {name: data for name, data in bad_files().items() if name.startswith("odd_")}

# what each bad file must be refused for: a fragment of the reason, lower case
BAD_REASONS = {
    "bad_truncated.jpg": "truncated",
    "bad_empty.jpg": "empty",
    "bad_text.jpg": "not an image",
    "bad_bomb.png": "decompression bomb",
}

# the PIL mode each odd file has on disk, which ImageInfo must report (not the RGB it became)
ODD_MODES = {
    "odd_cmyk.jpg": ("CMYK", "JPEG"),
    "odd_16bit.png": ("I;16", "PNG"),
    "odd_palette_alpha.png": ("P", "PNG"),
    "odd_grey.jpg": ("L", "JPEG"),
    "odd_rgba.png": ("RGBA", "PNG"),
    "odd_exif_rotated.jpg": ("RGB", "JPEG"),
    "odd_gif.gif": ("P", "GIF"),
}

# The odd files are all made from photo(2, 90, 60): 90 wide, 60 high. A 60-pixel view of the
# 60x60 centre square is a 1:1 copy of it, so pixels can be compared exactly.
SRC_W, SRC_H = 90, 60
SIDE = 60


def encode(array: np.ndarray, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **save)
    return buf.getvalue()


def test_every_bad_file_is_listed_here():
    assert set(BAD) == set(BAD_REASONS)
    assert set(ODD) == set(ODD_MODES)


@pytest.mark.parametrize("name", sorted(BAD_REASONS))
def test_bad_file_raises_decode_error_saying_why(name):
    with pytest.raises(SampleError) as info:
        decode_view(BAD[name], 32)
    assert info.value.stage == "decode"
    assert BAD_REASONS[name] in info.value.reason.lower()
    assert str(info.value).startswith("decode: ")


@pytest.mark.parametrize("name", sorted(ODD_MODES))
def test_odd_file_becomes_an_rgb_view_and_keeps_its_mode(name):
    decoded = decode_view(ODD[name], 48)
    assert decoded.view.shape == (48, 48, 3)
    assert decoded.view.dtype == np.uint8
    mode, fmt = ODD_MODES[name]
    info = decoded.info
    if mode == "I;16" and info.mode == "I":  # Pillow versions differ in how they open 16-bit grey PNG
        mode = "I"
    assert (info.mode, info.format) == (mode, fmt)
    assert info.n_bytes == len(ODD[name])
    assert decoded.view.std() > 20, "an odd file decoded to a near-flat view"
    if name == "odd_exif_rotated.jpg":
        assert (info.width, info.height, info.exif_rotated) == (SRC_H, SRC_W, True)
        assert info.crop_box == (0, 15, 60, 75)
    else:
        assert (info.width, info.height, info.exif_rotated) == (SRC_W, SRC_H, False)
        assert info.crop_box == (15, 0, 75, 60)


@pytest.mark.parametrize("name, tolerance", [
    ("odd_cmyk.jpg", 3),   # JPEG error only: the CMYK file shows the original colours
    ("odd_rgba.png", 0),   # fully opaque alpha: compositing changes nothing
])
def test_colour_odd_files_show_the_original_picture(name, tolerance):
    expected = photo(2, SRC_W, SRC_H)[:, 15:75].astype(int)
    view = decode_view(ODD[name], SIDE).view.astype(int)
    assert np.abs(view - expected).mean() <= tolerance


def test_gif_shows_its_first_frame_colours():
    data = ODD["odd_gif.gif"]
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[:, 15:75]
    assert np.array_equal(decode_view(data, SIDE).view, expected)


def test_grey_file_gives_equal_channels():
    view = decode_view(ODD["odd_grey.jpg"], SIDE).view
    assert np.array_equal(view[..., 0], view[..., 1]) and np.array_equal(view[..., 1], view[..., 2])
    grey = np.asarray(Image.fromarray(photo(2, SRC_W, SRC_H)).convert("L"))[:, 15:75].astype(int)
    assert np.abs(view[..., 0].astype(int) - grey).mean() < 3


def test_exif_rotated_photo_pixels_are_rotated():
    data = ODD["odd_exif_rotated.jpg"]
    decoded = decode_view(data, SIDE)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert upright.size == (SRC_H, SRC_W)  # 60 wide, 90 high once rotated
    expected = np.asarray(upright.crop(decoded.info.crop_box)).astype(int)
    assert np.abs(decoded.view.astype(int) - expected).mean() < 1
    # and the stored (unrotated) pixels are clearly something else, so the check above can fail
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").crop((15, 0, 75, 60))).astype(int)
    assert np.abs(decoded.view.astype(int) - stored).mean() > 20


def test_16bit_png_keeps_contrast():
    view = decode_view(ODD["odd_16bit.png"], SIDE).view
    assert (view == 255).mean() < 0.05, "16-bit values were clipped to white"
    assert view.std() > 30
    grey = np.asarray(Image.fromarray(photo(2, SRC_W, SRC_H)).convert("L"))[:, 15:75].astype(float)
    assert np.corrcoef(view[..., 0].astype(float).ravel(), grey.ravel())[0, 1] > 0.98


def test_palette_alpha_is_composited_over_the_background():
    data = ODD["odd_palette_alpha.png"]
    source = Image.open(io.BytesIO(data))
    indices = np.asarray(source)[:, 15:75]
    opaque_rgb = np.asarray(source.convert("RGB"))[:, 15:75]
    view = decode_view(data, SIDE).view
    transparent = indices == 0  # the file marks palette index 0 transparent
    assert 0 < transparent.sum() < transparent.size
    assert (view[transparent] == BACKGROUND).all()
    assert np.array_equal(view[~transparent], opaque_rgb[~transparent])


@pytest.mark.parametrize("size, box", [
    ((96, 72), (12, 0, 84, 72)),   # landscape: the middle 72 columns
    ((72, 96), (0, 12, 72, 84)),   # portrait: the middle 72 rows
    ((97, 71), (13, 0, 84, 71)),   # odd difference: the extra column goes left
    ((64, 64), (0, 0, 64, 64)),    # square: all of it
])
def test_centre_square_crop(size, box):
    width, height = size
    assert centre_square(width, height) == box
    data = encode(photo(7, width, height), "PNG")
    decoded = decode_view(data, 40)
    assert decoded.info.crop_box == box
    x0, y0, x1, y1 = box
    assert x1 - x0 == y1 - y0 == min(width, height)
    expected = Image.open(io.BytesIO(data)).convert("RGB").resize((40, 40), Image.Resampling.BICUBIC, box=box)
    assert np.abs(decoded.view.astype(int) - np.asarray(expected).astype(int)).mean() < 1


def test_view_of_a_cropped_square_is_not_the_whole_image():
    """The crop must matter: squashing the whole 96x72 frame gives a different view."""
    data = encode(photo(7, 96, 72), "PNG")
    view = decode_view(data, 40).view.astype(int)
    squashed = np.asarray(Image.open(io.BytesIO(data)).resize((40, 40), Image.Resampling.BICUBIC)).astype(int)
    assert np.abs(view - squashed).mean() > 5


def large_jpeg(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(photo(5, 1600, 1200), "JPEG", quality=90, exif=exif.tobytes())


def test_jpeg_draft_decodes_at_reduced_scale():
    image = Image.open(io.BytesIO(large_jpeg()))
    _draft_for_view(image, 64)
    assert image.size == (200, 150)  # 1/8 scale: short side 150 >= 64
    small = Image.open(io.BytesIO(large_jpeg()))
    _draft_for_view(small, 1000)  # short side 1200 < 2 * 1000: no draft
    assert small.size == (1600, 1200)


@pytest.mark.parametrize("orientation, full_size, box", [
    (1, (1600, 1200), (200, 0, 1400, 1200)),
    (6, (1200, 1600), (0, 200, 1200, 1400)),  # rotated: the box is in upright pixels
])
def test_jpeg_draft_view_matches_full_decode(orientation, full_size, box):
    data = large_jpeg(orientation)
    decoded = decode_view(data, 64)
    assert (decoded.info.width, decoded.info.height) == full_size
    assert decoded.info.crop_box == box
    full = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert full.size == full_size
    expected = np.asarray(full.resize((64, 64), Image.Resampling.BICUBIC, box=box)).astype(int)
    view = decoded.view.astype(int)
    assert np.abs(view - expected).mean() < 6
    squashed = np.asarray(full.resize((64, 64), Image.Resampling.BICUBIC)).astype(int)
    assert np.abs(view - squashed).mean() > 6, "the comparison cannot tell a wrong crop from the right one"


def test_raising_max_pixels_lets_the_bomb_through():
    decoded = decode_view(BAD["bad_bomb.png"], 16, max_pixels=100_000_000)
    assert decoded.view.shape == (16, 16, 3)
    assert (decoded.info.width, decoded.info.height) == (10_000, 10_000)
    assert (decoded.view == 0).all()  # Image.new("L") is black


def test_lowering_max_pixels_refuses_a_normal_image():
    data = encode(photo(1, 96, 72), "PNG")
    with pytest.raises(SampleError) as info:
        decode_view(data, 32, max_pixels=96 * 72 - 1)
    assert info.value.stage == "decode"
    assert "96x72" in info.value.reason and "--max-pixels" in info.value.reason
    assert decode_view(data, 32, max_pixels=96 * 72).view.shape == (32, 32, 3)


def huge_header_jpeg(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims width x height: cheap to make and to decode
    with draft (the scan ends early and libjpeg fills the rest), yet every size check sees the claim."""
    data = bytearray(jpeg_bytes(0, (64, 48)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_huge_jpeg_is_refused_by_default():
    data = huge_header_jpeg(15_000, 12_000)  # 180 Mpx
    with pytest.raises(SampleError) as info:
        decode_view(data, 32)
    assert info.value.stage == "decode"
    assert "decompression bomb" in info.value.reason.lower()


def test_max_pixels_overrides_pils_own_limit():
    data = huge_header_jpeg(15_000, 12_000)  # 180 Mpx: over PIL's hard limit of 2 x 89.5 Mpx
    decoded = decode_view(data, 32, max_pixels=1_000_000_000)
    assert decoded.view.shape == (32, 32, 3)
    assert (decoded.info.width, decoded.info.height) == (15_000, 12_000)
    assert decoded.info.crop_box == (1_500, 0, 13_500, 12_000)
