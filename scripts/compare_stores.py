"""Are two omnimill stores' arrays bit-identical? For refactors that must not change what is written.

    python scripts/compare_stores.py OLD/labels.zarr NEW/labels.zarr [--moved /old/prefix=/new/prefix]

Compares every array outside _runs/ (commit markers carry times and hosts): shape, dtype, chunks and values
bit for bit (floats as their raw bytes, so NaNs compare too). String arrays that hold paths (the label
store's `source`) differ when the same corpus sits in another folder: --moved rewrites that prefix first.
Exit 0 when identical, 1 otherwise; one line per difference.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import zarr


def arrays(group, prefix: str = "") -> dict:
    out = {prefix + name: array for name, array in group.arrays()}
    for name, sub in group.groups():
        if not (prefix + name).startswith("_runs"):
            out.update(arrays(sub, prefix + name + "/"))
    return out


def same(a: np.ndarray, b: np.ndarray, moved: tuple[str, str] | None) -> bool:
    if a.dtype.kind in "fc":
        return a.tobytes() == b.tobytes()
    if moved and a.dtype.kind in "OUT":
        a = np.array([str(x).replace(*moved) for x in a.ravel()], dtype=object).reshape(a.shape)
    return np.array_equal(a, b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--moved", help="OLD_PREFIX=NEW_PREFIX for paths stored in string arrays")
    args = parser.parse_args()
    moved = tuple(args.moved.split("=", 1)) if args.moved else None
    old, new = arrays(zarr.open_group(args.old, mode="r")), arrays(zarr.open_group(args.new, mode="r"))
    differences = [f"only in {'old' if p in old else 'new'}: {p}" for p in sorted(set(old) ^ set(new))]
    for path in sorted(set(old) & set(new)):
        a, b = old[path], new[path]
        if (a.shape, a.dtype, a.chunks) != (b.shape, b.dtype, b.chunks):
            differences.append(f"{path}: {a.shape} {a.dtype} {a.chunks} vs {b.shape} {b.dtype} {b.chunks}")
        elif not same(a[...], b[...], moved):
            differences.append(f"{path}: values differ")
    print("\n".join(differences) or f"identical: {len(set(old) & set(new))} arrays")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
