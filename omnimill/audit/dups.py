"""Near-duplicate groups over an index: `omnimill audit dups DIR --threshold 0.95`.

    every indexed vector (read again from the store, in blocks) ──FAISS top-k──▶ pairs with cosine >= T
        ──union-find──▶ connected components of two or more samples = groups, largest first

Two samples are near-duplicates when the cosine similarity of their vectors is at least the threshold.
Groups are closed under that relation transitively (a ~ b and b ~ c puts a, b, c in one group), so a
chain of small edits ends up in one group. Each sample looks at its `k` nearest neighbours only: a group
larger than k + 1 is still found whole as long as its members link up through their own top-k lists.
With IVF or PQ indexes the search is approximate, like every query of that index. On a per-frame index of
a clip store, two clips are near-duplicates when a frame of one is that close to a frame of the other; a
clip's own frames are not compared with each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnimill.audit.index import FieldRows, iter_vectors, load_index
from omnimill.audit.query import open_store
from omnimill.errors import UserError

DEFAULT_THRESHOLD = 0.95
DEFAULT_K = 16


@dataclass
class Group:
    keys: list[str]
    indices: list[int]  # sample indices in the store
    min_cosine: float  # the weakest link that joined the group

    def as_dict(self) -> dict:
        return {"size": len(self.keys), "keys": self.keys, "indices": self.indices,
                "min_cosine": round(self.min_cosine, 6)}


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(index_dir: str | Path, threshold: float = DEFAULT_THRESHOLD, k: int = DEFAULT_K,
                    store: str | None = None) -> tuple[list[Group], dict]:
    """Groups of near-duplicate samples (largest first), and the index's info."""
    if not -1.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: a cosine similarity lies in [-1, 1] (e.g. 0.95)")
    if k < 1:
        raise UserError(f"-k {k}: look at one neighbour at least")
    loaded = load_index(index_dir)
    info = loaded.info
    labels = open_store(info, store)
    teacher, name = info["teacher"], info["field"].split("/", 1)[1]
    # Nodes are samples: a per-frame index's frames are joined per clip, and a clip's own frames (alike in
    # any still shot) never make it a duplicate of itself.
    samples, node = np.unique(loaded.ids, return_inverse=True)
    rows = loaded.rows
    links = UnionFind(len(samples))
    weakest = np.full(len(samples), np.inf)
    vectors = FieldRows(labels, teacher, name)
    for found_rows, x in iter_vectors(vectors, vectors.ok, vectors.unit_size):
        me = node[np.searchsorted(rows, found_rows)]
        scores, found = loaded.search(x, min(k + 1, len(loaded.ids)))
        other = node[np.maximum(found, 0)]
        close = (found >= 0) & (other != me[:, None]) & (scores >= threshold)
        a, b, s = np.broadcast_to(me[:, None], found.shape)[close], other[close], scores[close]
        for i, j in zip(a.tolist(), b.tolist()):
            links.union(i, j)
        np.minimum.at(weakest, a, s)
        np.minimum.at(weakest, b, s)
    roots = np.array([links.find(a) for a in range(len(samples))])
    order = np.argsort(roots, kind="stable")
    starts = np.flatnonzero(np.r_[True, roots[order][1:] != roots[order][:-1]])
    first = np.zeros(len(samples), np.int64)  # a FAISS id of each sample, for its key
    first[node[::-1]] = np.arange(len(node))[::-1]
    groups = []
    for start, stop in zip(starts, np.r_[starts[1:], len(order)]):
        if stop - start < 2:
            continue
        members = order[start:stop]  # sample nodes, in sample order (np.unique sorted them)
        groups.append(Group([str(loaded.keys[first[m]]) for m in members], [int(samples[m]) for m in members],
                            float(weakest[members].min())))
    groups.sort(key=lambda g: (-len(g.keys), g.keys[0]))
    return groups, info
