"""Pictures of a run: the loss curve against the unigram baselines."""

from __future__ import annotations

from pathlib import Path


def plot_curve(history: list[dict], baseline: dict[str, float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if "loss" in h]
    heldout = [h for h in history if "heldout" in h]
    names = sorted({k for h in heldout for k in h["heldout"]})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    axes[0].plot([h["step"] for h in train], [h["loss"] for h in train], color="#37474f")
    axes[0].set(title="training loss (all target tokens)", xlabel="step", ylabel="cross-entropy (nats/token)")
    colors = plt.cm.tab10.colors
    for i, name in enumerate(names):
        points = [(h["step"], h["heldout"][name]) for h in heldout if name in h["heldout"]]
        color = colors[i % len(colors)]
        axes[1].plot(*zip(*points), marker="o", color=color, label=name)
        if name in baseline:
            axes[1].axhline(baseline[name], color=color, linestyle="--", linewidth=1)
    axes[1].set(title="held-out loss per modality (dashed: unigram baseline)", xlabel="step",
                ylabel="cross-entropy (nats/token)")
    if names:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
