"""canny: Canny edges on the canonical view (Canny 1986), thresholds set per image from its median.

The automatic thresholds follow the common median rule: low = (1 - 0.33)·median, high = (1 + 0.33)·median
of the blurred grey image, so dark and bright photos get comparable edge density.
"""

import cv2
import numpy as np

from omnimill.labelers.base import Batch, Field, Teacher


class Canny(Teacher):
    name = "canny"
    renderer = "canny"
    options = {"sigma": (float, 0.33)}  # thresholds at (1 -/+ sigma) x median

    def fields(self):
        s = self.view_size
        return [Field("edges", (s, s), "bool", dense=True, doc="Canny edge map", kind="binary")]

    def __call__(self, batch: Batch):
        sigma = self.option("sigma")
        out = np.empty(batch.views.shape[:3], dtype=bool)
        for i, view in enumerate(batch.views):
            grey = cv2.GaussianBlur(cv2.cvtColor(view, cv2.COLOR_RGB2GRAY), (5, 5), 0)
            median = float(np.median(grey))
            low, high = max(0.0, (1 - sigma) * median), min(255.0, (1 + sigma) * median)
            out[i] = cv2.Canny(grey, low, max(high, low + 1)) > 0
        return {"edges": out}
