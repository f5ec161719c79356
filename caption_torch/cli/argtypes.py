"""Argument types shared by the command lines (train.py, python -m caption_torch.evaluate)."""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: an integer > 0, else a usage error naming the value."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (NaN and inf refused), else a usage error naming the value."""
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {value}")
    return value


def device_count(text: str) -> int | str:
    """argparse type for --devices: ``auto``, a count > 0, ``-1`` (all), or device indices like ``0,1``."""
    if text == "auto" or re.fullmatch(r"\d+(,\d+)*,?", text) and "," in text:
        return text  # Lightning parses the list form itself
    if re.fullmatch(r"-1|\d+", text) and int(text) != 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be 'auto', a positive count, -1 (all) or indices like 0,1; got {text!r}")


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
