"""curves.png: the training loss and the validation metrics per epoch, from metrics.jsonl's records."""
from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] + 1 for m in history]
    metrics = sorted({k for m in history for k in m if k.startswith(("recall@", "ndcg@"))})
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(10 if metrics else 5, 4), squeeze=False)
    axes[0][0].plot(epochs, [m["loss"] for m in history], marker="o")
    axes[0][0].set(title="training loss", xlabel="epoch")
    if metrics:
        for name in metrics:
            points = [(m["epoch"] + 1, m[name]) for m in history if name in m]
            axes[0][1].plot(*zip(*points), marker="o", label=name)
        axes[0][1].set(title="validation", xlabel="epoch")
        axes[0][1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
