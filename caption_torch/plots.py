"""Pictures people would rather look at than read: the loss curve and captioned images."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_loss_history(
    losses: Sequence[float], path: Path | str, title: str = "Training loss history", steps_per_epoch: int | None = None
) -> Path:
    """Save the per-iteration training loss (and a smoothed curve when long) as a PNG.

    Args:
        losses: one loss per iteration.
        path: where to write the PNG (folders are created).
        steps_per_epoch: when given, a top axis labels epochs.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    losses = np.asarray(losses, dtype=np.float64)
    iterations = np.arange(1, len(losses) + 1)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.plot(iterations, losses, color="tab:blue", alpha=0.45 if len(losses) > 50 else 1.0, lw=1, label="loss")
    if len(losses) > 50:
        window = max(len(losses) // 50, 5)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(iterations[window - 1 :], smooth, color="tab:blue", lw=2, label=f"mean of {window}")
        ax.legend()
    ax.set_xlabel("Iteration")
    ax.set_ylabel("Loss (summed over words, per caption)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if losses.size and losses.min() > 0 and losses.max() / losses.min() > 50:
        ax.set_yscale("log")  # the overfit run falls by three orders of magnitude
    if steps_per_epoch:
        top = ax.secondary_xaxis("top", functions=(lambda i: i / steps_per_epoch, lambda e: e * steps_per_epoch))
        top.set_xlabel("Epoch")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
