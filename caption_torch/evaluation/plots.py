"""Pictures people would rather look at than read: the loss curve and captioned images."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from caption_torch.data.protocol import ImageSource  # noqa: E402


def plot_loss_history(
    losses: Sequence[float],
    path: Path | str,
    title: str = "Training loss history",
    steps_per_epoch: int | None = None,
    ylabel: str = "Loss (summed over words, per caption)",
) -> Path:
    """Save the per-iteration training loss (and a smoothed curve when long) as a PNG.

    Args:
        losses: one loss (or, for self-critical training, mean reward) per iteration.
        path: where to write the PNG (folders are created).
        steps_per_epoch: when given, a top axis labels epochs.
        ylabel: what the values are.

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
    ax.set_ylabel(ylabel)
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


def _load_url_image(url: str, timeout: float = 5.0) -> np.ndarray | None:
    """The image at ``url``, or None when it cannot be fetched (offline machines are normal)."""
    import io
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return plt.imread(io.BytesIO(response.read()), format=url.rsplit(".", 1)[-1])
    except Exception:  # no network, 404, not an image: the panel shows the URL instead
        return None


def _draw_source(ax, source: ImageSource) -> None:
    """Draw an image panel: a synthetic scene, a fetched URL, or the URL as text."""
    from caption_torch.data.synthetic.scenes import draw_scene

    if source.scene is not None:
        draw_scene(source.scene, ax)
        return
    url = source.url
    image = _load_url_image(url) if url.startswith(("http://", "https://")) else None
    if image is not None:
        ax.imshow(image)
    else:
        ax.set_facecolor("#eeeeee")
        ax.text(0.5, 0.5, "image not reachable:\n" + "\n".join(textwrap.wrap(url, 28)),
                ha="center", va="center", fontsize=8, color="#555555", transform=ax.transAxes)  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])


def caption_grid(panels: Sequence[tuple], path: Path | str, title: str = "", columns: int = 4) -> Path:
    """Save images with their generated and reference captions under each, like the notebook's figure.

    Args:
        panels: ``(source, generated, reference)`` per image; source is an ImageSource: a scene
            (embedded data, drawn offline) or an image URL (fetched if reachable, else shown as text);
            generated is one caption, or ``(label, caption)`` pairs to show several runs' captions
            of the image one under another.
        path: PNG to write.
        title: figure title.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = min(columns, max(len(panels), 1))
    rows = max(1, -(-len(panels) // columns))
    lines = max((1 if isinstance(generated, str) else len(generated)) for _, generated, _ in panels) if panels else 1
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, (4.2 + 0.5 * lines) * rows), dpi=100,
                             squeeze=False)  # fmt: skip
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (source, generated, reference) in zip(axes.flat, panels):
        _draw_source(ax, source)
        captions = [("ours", generated)] if isinstance(generated, str) else generated
        wrapped = [textwrap.fill(f"{label}: {caption}", 36) for label, caption in [*captions, ("ref", reference)]]
        ax.set_title("\n".join(wrapped), fontsize=8.5, loc="left")
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
