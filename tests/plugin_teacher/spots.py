"""The teacher: the K brightest spots of the view, a field of the plug-in's own kind `spots`."""

from __future__ import annotations

import numpy as np

from omnimill.labelers.base import Batch, Field, Teacher
from omnimill.labelers.fields import define_kind
from plugin_teacher.picture import spots_picture
from plugin_teacher.tokens import SpotsSerializer

SPOTS = define_kind("spots", "(K, 3) float32 x, y in view pixels and brightness 0..1, brightest first")
MAX_SPOTS = 6  # spots kept per image
CELL = 8  # one spot at most per CELL x CELL block of the view: spots spread over the picture


class Spots(Teacher):
    name = "spots"
    serializer = SpotsSerializer  # its own structure, not one of omnimill's
    renderer = spots_picture  # its own picture
    options = {"max_spots": (int, MAX_SPOTS)}

    def fields(self):
        k = self.option("max_spots")
        return [Field("spots", (k, 3), "float32", doc="x, y, brightness of the brightest blocks; 0 = padding",
                      kind=SPOTS),
                Field("count", (), "int32", doc="spots found", kind="count")]

    def __call__(self, batch: Batch):
        k, n, s = self.option("max_spots"), len(batch), self.view_size
        grey = batch.views.astype(np.float32).mean(-1) / 255.0  # (B, S, S)
        blocks = grey[:, :s // CELL * CELL, :s // CELL * CELL].reshape(n, s // CELL, CELL, s // CELL, CELL)
        mean = blocks.mean((2, 4)).reshape(n, -1)  # (B, cells)
        spots = np.zeros((n, k, 3), np.float32)
        count = np.zeros(n, np.int32)
        per_row = s // CELL
        for i in range(n):
            best = np.argsort(-mean[i], kind="stable")[:k]
            best = best[mean[i, best] > 0.5]  # only blocks brighter than mid-grey are spots
            count[i] = len(best)
            spots[i, :len(best), 0] = (best % per_row + 0.5) * CELL  # block centre, view pixels
            spots[i, :len(best), 1] = (best // per_row + 0.5) * CELL
            spots[i, :len(best), 2] = mean[i, best]
        return {"spots": spots, "count": count}
