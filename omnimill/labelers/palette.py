"""palette: dominant colours of the canonical view (median cut), as 4M-21's colour-palette modality.

Up to `max_colors` colours sorted by the share of pixels they cover; padded with zeros, `count` says
how many are real. Computed on a 64x64 thumbnail: a palette does not need every pixel.
"""

import numpy as np
from PIL import Image

from omnimill.labelers.base import Batch, Field, Teacher

THUMBNAIL = 64


class Palette(Teacher):
    name = "palette"
    serializer = "palette"
    renderer = "palette"
    options = {"max_colors": (int, 7)}

    @property
    def max_colors(self) -> int:
        return self.option("max_colors")

    def fields(self):
        k = self.max_colors
        return [
            Field("colors", (k, 3), "uint8", doc="RGB colours, most frequent first, zero-padded", kind="palette"),
            Field("weights", (k,), "float32", doc="share of pixels per colour; sums to 1 over count", kind="scalar"),
            Field("count", (), "int32", doc="number of real colours", kind="count"),
        ]

    def __call__(self, batch: Batch):
        k = self.max_colors
        colors = np.zeros((len(batch), k, 3), np.uint8)
        weights = np.zeros((len(batch), k), np.float32)
        count = np.zeros(len(batch), np.int32)
        for i, view in enumerate(batch.views):
            thumb = Image.fromarray(view).resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
            quant = thumb.quantize(colors=k, method=Image.Quantize.MEDIANCUT)
            palette = np.array(quant.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
            used = sorted(quant.getcolors(256), reverse=True)  # [(pixels, index)], most first
            n = min(k, len(used))
            pixels = np.array([c for c, _ in used[:n]], np.float32)
            colors[i, :n] = palette[[idx for _, idx in used[:n]]]
            weights[i, :n] = pixels / pixels.sum()
            count[i] = n
        return {"colors": colors, "weights": weights, "count": count}
