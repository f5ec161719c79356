"""Checks of arguments that every layer and decoder shares: positive integers and token ids.

Each raises ``ValueError`` naming the argument, so a bad size or id fails where it is passed,
with the same message whichever layer or decoder received it.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor


def check_positive_integer(name: str, value: int) -> None:
    """``value`` must be a positive integer (Python's or numpy's; not a bool, not a float such as 2.0).

    Args:
        name: the argument's name, quoted in the message.
        value: e.g. a width, a head count, max_length or beam_size.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_token_ids(
    name: str, ids: Tensor, vocab_size: int, ndim: int, unit: str = "token id", within: str = "the vocabulary"
) -> None:
    """ids must be an int64/int32 tensor of ``ndim`` dimensions with values in [0, vocab_size).

    ``unit`` and ``within`` name an id and its range in the error messages.
    """
    # int32/int64 only: the lookups (index_select, gather) take no other index dtype.
    if not isinstance(ids, Tensor) or ids.dtype not in (torch.int32, torch.int64):
        dtype = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be an int64 (or int32) tensor of {unit}s, got {dtype}")
    if ids.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(ids.shape)}")
    if ids.numel() > 0:
        low, high = torch.stack(torch.aminmax(ids)).tolist()  # one host sync for both bounds
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{name} contains {unit} {bad}, outside {within} [0, {vocab_size})")
