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
