"""Argument types shared by the command lines (train.py, python -m caption_torch.evaluate)."""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
from pathlib import Path

from caption_torch.functional.checks import check_positive_integer

# The largest count or size any flag takes: beyond it a value is a typo (and overflows int64 arithmetic
# downstream); the memory check refuses sizes far below it that would not fit.
MAX_COUNT = 2**31 - 1
SEED_RANGE = (0, 2**32 - 1)  # what NumPy's and Lightning's seeding accept


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # not a number, or more digits than Python converts
        raise argparse.ArgumentTypeError(f"must be an integer, got {text[:40]!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer in [1, MAX_COUNT], else a usage error naming the value."""
    value = _integer(text)
    try:
        check_positive_integer("the value", value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}") from None
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT}, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (NaN and inf refused), else a usage error naming the value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text[:40]!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {value}")
    return value


MAX_CAPTION_LENGTH = 1000  # tokens; COCO's captions have at most 17, and decoding runs one step per token


def caption_length(text: str) -> int:
    """argparse type: a caption length in [1, MAX_CAPTION_LENGTH] (longer ones decode for ever, or out of memory)."""
    value = positive_int(text)
    if value > MAX_CAPTION_LENGTH:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_CAPTION_LENGTH} tokens, got {value}")
    return value


def seed(text: str) -> int:
    """argparse type: a seed the random generators accept, an integer in [0, 2**32 - 1]."""
    value = _integer(text)
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise argparse.ArgumentTypeError(f"must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {value}")
    return value


def worker_count(text: str) -> int:
    """argparse type for --num-workers: 0 (load in the main process) up to 8 per CPU core of this machine.

    Each worker is a process holding a copy of the dataset's handles: thousands of them would
    exhaust the machine before the first batch.
    """
    value = _integer(text)
    most = 8 * (os.cpu_count() or 1)
    if not 0 <= value <= most:
        raise argparse.ArgumentTypeError(f"must be in [0, {most}] (8 per CPU core of this machine), got {value}")
    return value


def device_count(text: str) -> int | str:
    """argparse type for --devices: ``auto``, a count > 0, ``-1`` (all), or device indices like ``0,1``."""
    if text == "auto" or re.fullmatch(r"\d{1,9}(,\d{1,9})*,?", text) and "," in text:
        return text  # Lightning parses the list form itself
    if re.fullmatch(r"-1|\d{1,9}", text) and int(text) != 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be 'auto', a positive count, -1 (all) or indices like 0,1; got {text!r}")


# Environment variables by which a launcher (torchrun, SLURM, MPI, LSF, Lightning's own) tells a process its node.
MULTI_NODE_VARIABLES = ("NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID",
                        "OMPI_COMM_WORLD_SIZE", "LSB_JOBID", "WORLD_SIZE")  # fmt: skip


def check_hardware(accelerator: str, devices: int | str, num_nodes: int = 1) -> None:
    """The devices and nodes asked for exist; else a ValueError naming the flag and what the machine has.

    ``--devices N`` beyond this machine's GPUs (or CPU cores) would fail inside Lightning; ``--num-nodes``
    above 1 without a launcher would wait forever for machines that never join.
    """
    import torch  # here, not at import: the argument types load with the parser

    if num_nodes > 1 and not any(name in os.environ for name in MULTI_NODE_VARIABLES):
        raise ValueError(
            f"--num-nodes {num_nodes} needs a launcher on every machine (torchrun, SLURM, or "
            "NODE_RANK and MASTER_ADDR set); without one the run waits for nodes that never join"
        )
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if accelerator not in ("cpu", "gpu", "cuda", "auto") or (on_gpu and not torch.cuda.is_available()):
        return  # Lightning names an accelerator it cannot provide
    have, kind = (torch.cuda.device_count(), "GPUs") if on_gpu else (os.cpu_count() or 1, "CPU cores")
    if isinstance(devices, int) and devices > have:
        raise ValueError(f"--devices {devices}: this machine has {have} {kind}")
    if isinstance(devices, str) and devices != "auto":
        indices = [int(index) for index in devices.split(",") if index]
        if on_gpu and max(indices) >= have:
            raise ValueError(f"--devices {devices}: this machine has {have} {kind} (indices 0 to {have - 1})")


def check_writable_folder(folder: Path, flag: str) -> None:
    """Create ``folder`` if needed and prove a file can be written there; else a ValueError naming the flag."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{flag} {folder} is not writable: {error.strerror or error}") from None


def check_writable_file(path: Path, flag: str) -> None:
    """``path`` can be written as a file (its folder exists and is writable, it is no folder); else a ValueError."""
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name inside it")
    if not path.suffix:
        raise ValueError(f"{flag} {path} has no file extension (e.g. .png, .jsonl)")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: the folder {path.parent} does not exist ({flag})")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"cannot write {path}: permission denied ({flag})")
