"""Checkpoints that survive a crash: atomic writes and a ``last.ckpt`` that is always the latest.

* :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the same
  folder, fsyncs it and renames it over the target. ``os.replace`` within one
  filesystem is atomic, so a process killed mid-save leaves the previous file
  intact. (Lightning's default writes through a temp file in the system temp folder
  and moves it, which degrades to a plain copy when that folder is on another
  filesystem, and does not fsync.)
* :class:`LastCheckpoint` saves ``last.ckpt`` at the end of every epoch and, if
  asked, every N training steps. Lightning 2.6's ``ModelCheckpoint(save_last=True)``
  refreshes ``last.ckpt`` only when a top-k checkpoint is also saved, so after an
  epoch that did not improve the monitored metric it would point at an older state.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

LAST_CHECKPOINT = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes are atomic on local filesystems."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialise fully before touching the disk
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        try:
            # mkstemp creates the file 0600 whatever the umask; a checkpoint is read by the whole group.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(handle, 0o666 & ~umask)
            with os.fdopen(handle, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


class LastCheckpoint(L.Callback):
    """Keep ``<log_dir>/checkpoints/last.ckpt`` current: every epoch end, and every N steps if given.

    Args:
        every_n_steps: also save every this many optimizer steps (None: epoch ends only).
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.path: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.path = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / LAST_CHECKPOINT

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            trainer.save_checkpoint(self.path, weights_only=False)  # every rank calls it; rank 0 writes

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
