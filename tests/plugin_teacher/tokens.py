"""The serializer of `spots`: one item per spot, `<spot> <c x> <c y> <v brightness>`, brightest first.

Coordinates move into the crop's frame (a spot outside the crop is left out, a flip mirrors x), as
omnimill's own structures do, with omnimill's helpers for bins and parsing.
"""

from __future__ import annotations

import numpy as np

from omnimill.tokenize.crops import crop_points
from omnimill.tokenize.serialize import (COORD_BINS, Serializer, coord, from_bins, number, parse_chunks, to_bins,
                                         value)

BRIGHTNESS_BINS = 16


class SpotsSerializer(Serializer):
    name = "spots"
    default_fields = ("spots", "count")

    def needs(self):
        return {"spots": ("K", 3), "count": ()}

    def configure(self, values, source):
        o = self.options
        o["coord_bins"] = int(o.get("coord_bins", COORD_BINS))
        o["brightness_bins"] = int(o.get("brightness_bins", BRIGHTNESS_BINS))
        o["max_items"] = int(o.get("max_items", np.shape(values["spots"])[1]))

    def specials(self):
        o = self.options
        return ["<spot>"] + [coord(q) for q in range(o["coord_bins"])] + [value(q) for q in range(o["brightness_bins"])]

    def items(self, sample, crop):
        o = self.options
        n = min(int(sample["count"]), len(sample["spots"]))
        spots = np.asarray(sample["spots"][:n], np.float32)
        xy, inside = crop_points(spots[:, :2], crop)
        keep = np.flatnonzero(inside)[:self.max_items]
        q, b = to_bins(xy[keep], o["coord_bins"]), to_bins(spots[keep, 2], o["brightness_bins"])
        return [(int(q[j, 0]), int(q[j, 1]), int(b[j])) for j in range(len(keep))]

    def tokens(self, item, first):
        x, y, b = item
        return ["<spot>", coord(x), coord(y), value(b)]

    def parse(self, pieces):
        o = self.options

        def one(chunk):
            if len(chunk) != 4:
                raise ValueError(chunk)
            return (number(chunk[1], "<c", o["coord_bins"]), number(chunk[2], "<c", o["coord_bins"]),
                    number(chunk[3], "<v", o["brightness_bins"]))

        return parse_chunks(pieces, {"<spot>"}, one)

    def arrays(self, rows):
        o, k = self.options, self.max_items
        spots, count = np.zeros((len(rows), k, 3), np.float32), np.zeros(len(rows), np.int32)
        for i, row in enumerate(rows):
            row = row[:k]
            count[i] = len(row)
            for j, (x, y, b) in enumerate(row):  # coordinates 0..1 of the crop, as every structure decodes
                spots[i, j] = [from_bins(x, o["coord_bins"]), from_bins(y, o["coord_bins"]),
                               from_bins(b, o["brightness_bins"])]
        return {"spots": spots, "count": count}
