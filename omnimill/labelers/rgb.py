"""rgb: the canonical view itself, so tokenizers and auditors see exactly what teachers saw."""

import numpy as np

from omnimill.labelers.base import Batch, Field, Teacher


class RGB(Teacher):
    name = "rgb"
    renderer = "rgb"

    def fields(self):
        s = self.view_size
        return [Field("image", (s, s, 3), "uint8", dense=True, doc="canonical view, RGB", kind="image")]

    def __call__(self, batch: Batch):
        return {"image": np.ascontiguousarray(batch.views)}
