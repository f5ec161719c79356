"""The benchmark's ratios as one bar chart, for people who would rather look than read."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

TARGET = 1.3  # the speed-up the project aims for on every row, drawn as a line


def ratio_bars(rows: Sequence[dict]) -> list[tuple[str, float]]:
    """(label, ratio) for every step, sampling and memory row; ratio > 1 means the project is better.

    Args:
        rows: result rows as ``bench.run`` returns them under ``"rows"``.
    """
    bars = []
    for row in rows:
        cell, device = row.get("cell_type", "").upper(), row.get("device", "cpu")
        where = f" ({device})" if device != "cpu" else ""
        if row["row"] == "step" and "speedup" in row:  # a contender that failed leaves no ratio
            precision = f", {row['precision']}" if row["precision"] != "fp32" else ""
            bars.append((f"{cell} training step, batch {row['batch']}{precision}{where}", row["speedup"]))
        elif row["row"] == "sample":
            bars.append((f"{cell} greedy sampling, {row['images']} images{where}", row["speedup"]))
        elif row["row"] == "memory":
            bars.append((f"{cell} peak memory, batch {row['batch']}{where}", row["ratio"]))
    return bars


def plot_ratios(rows: Sequence[dict], path: Path | str, title: str) -> Path:
    """Save a horizontal bar per ratio with the 1.0 (parity) and 1.3 (target) lines as a PNG.

    Returns:
        The path written.
    """
    bars = ratio_bars(rows)
    if not bars:
        raise ValueError("no step, sample or memory row to plot; run those rows (--rows step,sample,memory)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels, ratios = zip(*bars)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(bars) + 1.4), dpi=110)
    colours = ["tab:green" if ratio >= TARGET else "tab:orange" for ratio in ratios]
    positions = range(len(bars))[::-1]  # first row on top
    ax.barh(list(positions), ratios, color=colours)
    for y, ratio in zip(positions, ratios):
        # A white box keeps the number readable where it crosses the dashed target line.
        label_box = dict(facecolor="white", edgecolor="none", pad=1)
        ax.text(ratio + 0.02, y, f"{ratio:.2f}×", va="center", fontsize=9, bbox=label_box)
    ax.axvline(1.0, color="black", lw=1)
    ax.axvline(TARGET, color="tab:red", lw=1, ls="--", label=f"target {TARGET}×")
    ax.set_yticks(list(positions), labels, fontsize=9)
    ax.set_xlim(0, max(max(ratios), TARGET) * 1.15)
    ax.set_xlabel("native / project (time or memory); > 1: the project is faster or smaller")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
