"""Pictures every tokenizer evaluation draws the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_usage(counts: np.ndarray, path: Path, metrics: dict) -> None:
    """How often each code was used, most used first (log scale): a dead codebook shows at a glance."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(np.arange(len(counts)), np.sort(counts)[::-1], width=1.0)
    ax.set(xlabel="code (sorted by use)", ylabel="count", yscale="symlog",
           title=f"codebook usage {100 * metrics['codebook_usage']:.1f}% of {len(counts)} codes, "
                 f"perplexity {metrics['perplexity']:.0f}")
    fig.tight_layout()
    fig.savefig(path)


def plot_spectrograms(originals: np.ndarray, reconstructions: np.ndarray, path: Path, title: str,
                      seconds_per_frame: float | None = None, n: int = 4) -> None:
    """Held-out clips' log-mel (N, K, M, F), original left and decode(encode(x)) right, one clip a row: the K
    segments side by side in time order (white lines between them), on one colour scale per row."""
    from matplotlib.figure import Figure

    n = min(n, len(originals))
    k, m, f = originals.shape[1:]
    fig = Figure(figsize=(11, 1.9 * n + 0.6), dpi=100)
    extent = (0, k * f * (seconds_per_frame or 1), 0, m)
    for row in range(n):
        both = [np.concatenate(list(x[row]), axis=1) for x in (originals, reconstructions)]  # (M, K x F)
        low, high = float(both[0].min()), float(both[0].max())
        for col, (picture, label) in enumerate(zip(both, ("original", "decode(encode(x))"))):
            ax = fig.add_subplot(n, 2, 2 * row + col + 1)
            image = ax.imshow(picture, origin="lower", aspect="auto", cmap="magma", vmin=low, vmax=high,
                              extent=extent, interpolation="nearest")
            for s in range(1, k):
                ax.axvline(extent[1] * s / k, color="white", linewidth=1)
            ax.set_ylabel("mel band" if col == 0 else "")
            if row == 0:
                ax.set_title(label)
            if row == n - 1:
                ax.set_xlabel(f"{'seconds' if seconds_per_frame else 'frame'} ({k} segments side by side)")
        fig.colorbar(image, ax=ax, label="log mel power")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
