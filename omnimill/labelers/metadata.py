"""metadata: cheap image statistics, as in 4M-21's metadata modality (Bachmann et al., 2024).

Pixel statistics are measured on the canonical view (what every other label describes); size,
bytes, format and orientation describe the original file. All scalars per sample:

  brightness    mean luma, 0..1                      (Rec. 601: Y = .299 R + .587 G + .114 B)
  contrast      RMS contrast: std of luma, 0..0.5
  saturation    mean HSV saturation, 0..1
  colorfulness  Hasler & Süsstrunk (2003): sqrt(σrg² + σyb²) + 0.3·sqrt(μrg² + μyb²), on 0..255 RGB
  entropy       Shannon entropy of the 256-bin luma histogram, bits (0..8)
  sharpness     variance of the Laplacian of luma (0..255 scale); low = blurry
"""

import cv2
import numpy as np

from omnimill.labelers.base import Batch, Field, Teacher

PIXEL_STATS = ("brightness", "contrast", "saturation", "colorfulness", "entropy", "sharpness")


class Metadata(Teacher):
    name = "metadata"
    serializer = "metadata"
    renderer = "metadata"

    def fields(self):
        stats = [Field(n, (), "float32", doc=_doc(n), kind="scalar") for n in PIXEL_STATS]
        return stats + [
            Field("orig_width", (), "int32", doc="original width in pixels, EXIF-upright", kind="scalar"),
            Field("orig_height", (), "int32", doc="original height in pixels, EXIF-upright", kind="scalar"),
            Field("aspect_ratio", (), "float32", doc="original width / height", kind="scalar"),
            Field("file_bytes", (), "int64", doc="size of the encoded file", kind="scalar"),
            Field("exif_rotated", (), "bool", doc="EXIF orientation was applied", kind="scalar"),
            Field("format", (), "str", doc="file format as decoded (JPEG, PNG, ...)", kind="scalar"),
            Field("mode", (), "str", doc="PIL mode of the file before conversion to RGB", kind="scalar"),
        ]

    def __call__(self, batch: Batch):
        out = {n: np.zeros(len(batch), np.float32) for n in PIXEL_STATS}
        for i, view in enumerate(batch.views):
            for name, value in pixel_stats(view).items():
                out[name][i] = value
        infos = batch.infos
        out["orig_width"] = np.array([x.width for x in infos], np.int32)
        out["orig_height"] = np.array([x.height for x in infos], np.int32)
        out["aspect_ratio"] = np.array([x.width / max(x.height, 1) for x in infos], np.float32)
        out["file_bytes"] = np.array([x.n_bytes for x in infos], np.int64)
        out["exif_rotated"] = np.array([x.exif_rotated for x in infos], bool)
        out["format"] = np.array([x.format for x in infos], dtype=object)
        out["mode"] = np.array([x.mode for x in infos], dtype=object)
        return out


def pixel_stats(view: np.ndarray) -> dict[str, float]:
    rgb = view.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    rg, yb = r - g, 0.5 * (r + g) - b
    colorfulness = np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    hist = np.bincount(luma.astype(np.uint8).ravel(), minlength=256) / luma.size
    nonzero = hist[hist > 0]
    saturation = cv2.cvtColor(view, cv2.COLOR_RGB2HSV)[..., 1].mean() / 255.0
    return {
        "brightness": luma.mean() / 255.0,
        "contrast": luma.std() / 255.0,
        "saturation": float(saturation),
        "colorfulness": float(colorfulness),
        "entropy": float(-(nonzero * np.log2(nonzero)).sum()),
        "sharpness": float(cv2.Laplacian(luma, cv2.CV_32F).var()),
    }


def _doc(name: str) -> str:
    for line in __doc__.splitlines():
        if line.strip().startswith(name + " "):
            return line.strip()[len(name):].strip()
    return ""
