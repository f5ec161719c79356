"""Checkpoints that survive a crash, a NaN and rotted bytes; loading them back safely.

* :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the same
  folder, fsyncs it and renames it over the target. ``os.replace`` within one
  filesystem is atomic, so a process killed mid-save leaves the previous file
  intact. (Lightning's default writes through a temp file in the system temp folder
  and moves it, which degrades to a plain copy when that folder is on another
  filesystem, and does not fsync.) It stamps every checkpoint with a SHA-256 of its
  tensors, verified whenever one is read back: zip archives check no CRC on load,
  so flipped bytes inside a tensor would otherwise load as different weights.
* :class:`LastCheckpoint` saves ``last.ckpt`` at the end of every epoch and, if
  asked, every N training steps. Lightning 2.6's ``ModelCheckpoint(save_last=True)``
  refreshes ``last.ckpt`` only when a top-k checkpoint is also saved, so after an
  epoch that did not improve the monitored metric it would point at an older state.
* :class:`RefuseNonFiniteWeights` stops the run before any save whose weights hold a
  NaN or inf, so the previous checkpoint stays the last good state.
* :func:`load_model` rebuilds the model of a checkpoint (tensors only, checksum verified).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from caption_torch.functional.checks import check_positive_integer
from caption_torch.training.checkpoint_schema import CheckpointError, check_checkpoint
from caption_torch.training.self_critical import system_class
from caption_torch.training.system import CaptioningSystem

__all__ = ["CheckpointError", "load_model", "load_system", "read_checkpoint", "check_model_fits_data"]

LAST_CHECKPOINT = "last.ckpt"
RESUME_KEYS = ("epoch", "global_step", "state_dict", "optimizer_states", "lr_schedulers", "loops")
CHECKSUM_KEY = "tensor_sha256"  # hex SHA-256 of every tensor in the checkpoint, in key order
_UNVERIFIED: set[str] = set()  # checkpoints without a checksum already warned about


def _tensors(tree: Any, prefix: str = ""):
    """(key path, tensor) for every tensor in nested dicts, lists and tuples, in a fixed order."""
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, Mapping):
        for key in sorted(tree, key=str):
            if key != CHECKSUM_KEY:
                yield from _tensors(tree[key], f"{prefix}/{key}")
    elif isinstance(tree, (list, tuple)):
        for index, item in enumerate(tree):
            yield from _tensors(item, f"{prefix}/{index}")


def tensor_checksum(checkpoint: Mapping[str, Any]) -> str:
    """Hex SHA-256 over every tensor of a checkpoint: its key path, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for key, tensor in _tensors(checkpoint):
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        # A byte view hashes any dtype (bf16, bool) without a lossy conversion.
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def first_non_finite(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding a NaN or inf, or None if all are finite."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def verify_checksum(checkpoint: Mapping[str, Any], path: Path | str) -> None:
    """Refuse a checkpoint whose tensors no longer match the checksum written with them."""
    stored = checkpoint.get(CHECKSUM_KEY)
    if stored is None:  # written before checkpoints carried one: readable, but unverified
        if str(path) not in _UNVERIFIED:  # once per file, however often it is read
            _UNVERIFIED.add(str(path))
            print(f"warning: checkpoint {path} carries no checksum; its tensors cannot be verified", file=sys.stderr)
        return
    if stored != tensor_checksum(checkpoint):
        raise CheckpointError(
            f"checkpoint {path} is damaged: its tensors do not match the checksum written with them "
            "(bytes changed on disk or in transfer); use another checkpoint or copy it again"
        )


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """A checkpoint as a dict, loaded tensors-only (``weights_only``) and checksum-verified.

    Raises:
        CheckpointError: naming the file, if it is missing, empty, unreadable or damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is an empty file (0 bytes): its write never finished")
    with open(path, "rb") as file:
        head = file.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or its legacy pickle
        raise CheckpointError(f"checkpoint {path} is not a file torch.save wrote (it begins with {head!r}); "
                              "pass a .ckpt from lightning_logs/version_N/checkpoints/")  # fmt: skip
    try:
        # weights_only: a checkpoint holds tensors, numbers, strings, lists and dicts, so reading one never runs code.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:  # permissions, I/O errors: the reason, not a traceback
        raise CheckpointError(f"checkpoint {path} cannot be read: {error.strerror or error}") from None
    except Exception as error:  # torch raises several types for corrupt or foreign files
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: {reason}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a train.py checkpoint")
    verify_checksum(checkpoint, path)
    return checkpoint


def load_model(path: Path | str) -> torch.nn.Module:
    """The decoder stored in a ``train.py`` checkpoint, in eval mode (see :func:`load_system`)."""
    return load_system(path).model.eval()


def load_system(path: Path | str) -> CaptioningSystem:
    """Rebuild the system stored in a ``train.py`` checkpoint: tensors only, checksum verified.

    The LightningModule (a ``CaptioningSystem``, or a ``SelfCriticalSystem`` for a self-critical
    run, without its reward) is rebuilt by Lightning's ``load_from_checkpoint`` from the
    hyperparameters the checkpoint records, so any constructor argument it saved is honoured.
    """
    checkpoint = read_checkpoint(path)
    # Keys, hyperparameter types and every tensor's shape, before anything is built (checkpoint_schema.py).
    _, _, config = check_checkpoint(checkpoint, path)
    bad = first_non_finite(checkpoint["state_dict"])
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} holds non-finite weights ({bad} has NaN or inf); use an earlier one")
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)  # the verified dict, so the file is not read (and trusted) a second time
    buffer.seek(0)
    try:
        system = system_class(config).load_from_checkpoint(buffer, map_location="cpu", weights_only=True)
    except (RuntimeError, TypeError, ValueError, KeyError) as error:  # weights missing or mis-shaped, sizes invalid
        details = re.sub(r"\bmodel\.", "", " ".join(str(error).split()))  # the model's names, on one line
        raise CheckpointError(f"checkpoint {path} does not hold a model train.py can rebuild: {details}") from None
    return system


def check_model_fits_data(model: torch.nn.Module, word_to_idx: dict[str, int], feature_dim: int) -> None:
    """The checkpoint's vocabulary and feature width must be the data's; say what differs."""
    if feature_dim != model.input_dim:
        raise CheckpointError(
            f"the checkpoint expects {model.input_dim}-d features but the data has {feature_dim}-d "
            "(--full-features picks the 4096-d fc7 files)"
        )
    if word_to_idx != model.word_to_idx:
        differing = sorted(set(word_to_idx.items()) ^ set(model.word_to_idx.items()), key=lambda kv: kv[1])
        raise CheckpointError(
            f"the checkpoint's vocabulary ({model.vocab_size} words) is not the data's ({len(word_to_idx)} words); "
            f"first difference: {differing[0][0]!r} -> {differing[0][1]}"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes are atomic on local filesystems and whose files carry a checksum."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        # The last guard: RefuseNonFiniteWeights stops the run before this on every rank, naming the step.
        bad = first_non_finite(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise FloatingPointError(f"refusing to write {path}: {bad} holds NaN or inf")
        checkpoint = {**checkpoint, CHECKSUM_KEY: tensor_checksum(checkpoint)}
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
        except BaseException as error:
            Path(temporary).unlink(missing_ok=True)
            if isinstance(error, OSError) and error.filename is None:  # a full disk names no file: name the target
                raise OSError(error.errno, f"cannot write the checkpoint: {error.strerror}", str(path)) from None
            raise

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        """The checkpoint at ``path`` (``--resume``), tensors only and checksum-verified, on the CPU.

        It must hold the training state a resume restores (a weights-only file cannot be resumed).
        """
        checkpoint = read_checkpoint(path)
        missing = [key for key in RESUME_KEYS if key not in checkpoint]
        if missing:
            raise CheckpointError(
                f"checkpoint {path}: {missing[0]}: expected the training state --resume restores "
                f"({', '.join(RESUME_KEYS)}), found no such key; start from it with --init-from"
            )
        return checkpoint


class LastCheckpoint(L.Callback):
    """Keep ``<log_dir>/checkpoints/last.ckpt`` current: every epoch end, and every N steps if given.

    Args:
        every_n_steps: also save every this many optimizer steps (None: epoch ends only).
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None:
            check_positive_integer("every_n_steps", every_n_steps)
        self.every_n_steps = every_n_steps
        self.path: Path | None = None
        self.saved_step: int | None = None  # global step of the newest save by this run

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.path = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / LAST_CHECKPOINT

    def save(self, trainer: L.Trainer) -> None:
        """Write last.ckpt now (every rank calls this; rank 0 writes); a fast dev run writes nothing."""
        if trainer.fast_dev_run:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)


class RefuseNonFiniteWeights(L.Callback):
    """Before every save, stop the run if any weight is NaN or inf: the file on disk stays the last good one.

    Lightning calls ``on_save_checkpoint`` on every rank before the write, so all ranks
    decide together and none is left waiting for a save that never comes.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        bad = first_non_finite(checkpoint["state_dict"])
        if not trainer.strategy.reduce_boolean_decision(bad is None, all=True):
            where = f"{bad} holds NaN or inf" if bad is not None else "another process's weights hold NaN or inf"
            raise FloatingPointError(
                f"the weights became non-finite by step {trainer.global_step} ({where}); nothing was saved, "
                "the previous checkpoint is kept; lower the learning rate (--lr) or check the features for NaN/inf"
            )
