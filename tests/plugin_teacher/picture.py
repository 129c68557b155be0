"""The audit picture of `spots`: rings on the view, bigger for brighter spots."""

from __future__ import annotations

import numpy as np

from omnimill.audit.render import Tile, colors_for, generic


def spots_picture(teacher, fields, sample):
    if "spots" not in fields or "count" not in fields:
        return generic(teacher, fields, sample)
    n = int(fields["count"])
    spots = np.asarray(fields["spots"])[:n]
    s = sample.view_size or 1
    base = sample.view if sample.view is not None else np.full((s, s, 3), 128, np.uint8)
    if spots.size and spots[:, :2].max() <= 1.0 and s > 1:  # decoded tokens: 0..1 of the crop
        spots = spots * np.array([s, s, 1], np.float32)

    def draw(ax):
        ax.imshow(base)
        ax.scatter(spots[:, 0], spots[:, 1], s=20 + 200 * spots[:, 2], facecolors="none",
                   edgecolors=colors_for(np.arange(n)), linewidths=1.5)
        ax.set_xticks([])
        ax.set_yticks([])

    return [Tile(f"{teacher} · {n} bright spots (plug-in kind)", draw)]
