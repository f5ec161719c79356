"""Batched fc7 extraction that survives being killed: completed batches are on disk before they are counted.

DataLoader workers decode and resize images while the model runs on the batch before::

    workers: file ─► Pillow ─► (3, 224, 224)  ─┐
    main:                        batch (B, 3, 224, 224) ─► VGG-16 fc7 on the GPU if any ─► rows.f32 += B rows
                                                                                        ─► progress.json (atomic)

``rows.f32`` holds the fc7 rows of the images done so far, float32, in image order. After
each batch its bytes are fsynced, and only then is ``progress.json`` replaced (write,
fsync, rename) with the new row count and the problems met so far. A run started again
with the same job (same images, weights, batch size and device type) truncates
``rows.f32`` to the recorded count and continues; batches start at multiples of the batch
size either way, so each row is computed from the same batch as in an uninterrupted run
and comes out the same.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from caption_torch.features.images import MAX_PIXELS, ImageFiles
from caption_torch.features.vgg import FC7_DIM, VGG16

ROWS_FILE = "rows.f32"
PROGRESS_FILE = "progress.json"


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def write_json_atomically(path: Path, value) -> None:
    """Write JSON to ``path`` through a fsynced temporary file and a rename: readers see the old or the new."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=1, sort_keys=True)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def collate_images(items: list) -> tuple[torch.Tensor, list[str]]:
    """DataLoader collate of ImageFiles items: ``(images (B, 3, 224, 224), B reasons, "" for usable files)``."""
    return torch.stack([tensor for tensor, _ in items]), [reason for _, reason in items]


@torch.inference_mode()
def fc7_of_tensors(model: VGG16, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """(B, 3, 224, 224) preprocessed images -> (B, 4096) float32 fc7 rows on the CPU."""
    # channels_last: oneDNN's and cuDNN's convolutions run without reordering the activations (faster).
    images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
    return model.fc7(images).float().cpu().numpy()


def extract_resumable(
    model: VGG16,
    paths: Sequence[Path | str],
    work_dir: Path,
    job: dict,
    batch_size: int = 32,
    workers: int = 2,
    device: torch.device | None = None,
    max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, dict[int, str]]:
    """fc7 rows of every image in ``paths``, resuming the work recorded in ``work_dir`` if it is the same job.

    Args:
        model: the eval-mode backbone.
        paths: N image files, in row order.
        work_dir: folder for ``rows.f32`` and ``progress.json`` (created if needed).
        job: JSON-able description of the work; a recorded job that differs is started over.
        batch_size: images per forward pass.
        workers: DataLoader worker processes decoding images (0: in this process).
        device: where the model runs (default: the GPU if any).

    Returns:
        ``(rows, problems)``: (N, 4096) float32 fc7 rows (zeros for unusable files) as a read-only
        memory map, and ``{row: reason}`` for every unusable file.
    """
    device = device or default_device()
    work_dir.mkdir(parents=True, exist_ok=True)
    rows_path, progress_path = work_dir / ROWS_FILE, work_dir / PROGRESS_FILE
    job = {**job, "images": len(paths), "batch_size": batch_size, "device": device.type}
    done, problems = 0, {}
    if progress_path.is_file():
        try:
            progress = json.loads(progress_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            progress = {}
        if progress.get("job") == job:
            done = int(progress["rows_done"])
            problems = {int(row): reason for row, reason in progress["problems"].items()}
            print(f"resuming: {done} of {len(paths)} images already extracted")
    row_bytes = FC7_DIM * 4
    model = model.to(device)
    with open(rows_path, "ab") as rows_file:
        rows_file.truncate(done * row_bytes)  # drop rows written after the last recorded batch
        rows_file.seek(done * row_bytes)
        if done == 0:
            write_json_atomically(progress_path, {"job": job, "rows_done": 0, "problems": {}})
        remaining = Subset(ImageFiles(paths, max_pixels), range(done, len(paths)))
        loader = DataLoader(
            remaining,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate_images,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        with tqdm(total=len(paths), initial=done, desc="fc7", unit="img", smoothing=0.1) as bar:
            for images, reasons in loader:
                rows = fc7_of_tensors(model, images, device)
                rows_file.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())
                rows_file.flush()
                os.fsync(rows_file.fileno())
                problems |= {done + i: reason for i, reason in enumerate(reasons) if reason}
                done += len(reasons)
                recorded = {str(row): reason for row, reason in problems.items()}
                write_json_atomically(progress_path, {"job": job, "rows_done": done, "problems": recorded})
                bar.update(len(reasons))
    if not paths:
        return np.zeros((0, FC7_DIM), dtype=np.float32), problems
    return np.memmap(rows_path, dtype="<f4", mode="r", shape=(len(paths), FC7_DIM)), problems
