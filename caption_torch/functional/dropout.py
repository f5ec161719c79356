"""Dropout, with masks drawn from torch's generator, or the way torch's CPU dropout drew them on Intel CPUs.

On Intel CPUs, PyTorch's CPU dropout draws its keep mask through Intel MKL: it takes one
32-bit number ``s`` from torch's default generator (one output of its Mersenne Twister)
and seeds MKL's MCG31m1 generator with it::

    x_0     = s mod (2^31 - 1)        (1 if that is 0)
    x_{k+1} = 1132489760 * x_k mod (2^31 - 1)
    u_k     = x_k / (2^31 - 1)        element k of the flattened tensor is kept if u_k < 1 - p

On other CPUs torch draws the mask differently, so values printed from one machine (such
as cs231n's Transformer_Captioning notebook, made on an Intel CPU) cannot be reproduced on
another with ``nn.Dropout``. Under :func:`mkl_dropout`, every dropout of this project draws
its masks the Intel-MKL way on any CPU (and on any device: the mask is drawn on the host),
consuming torch's default generator exactly as torch does there. Outside it, masks come
from torch's generator the fast way: on the CPU, 32 random bits per element (two from each
64-bit draw) compared with ``(1 - p) * 2^32`` in one vectorised pass, where ``bernoulli_``
(what ``nn.Dropout`` calls) spends a 64-bit draw and a conversion on every element; on
other devices ``bernoulli_``, whose generators are fast there.

Either way a kept element is scaled by ``1 / (1 - p)`` and the mask is drawn by the
wrapper, before the Function runs; the Function multiplies by it and so does its backward.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from caption_torch.functional._common import _check_float

_MCG31_MODULUS = 2**31 - 1
_MCG31_MULTIPLIER = 1132489760

_use_mkl_masks = False


@contextlib.contextmanager
def mkl_dropout() -> Iterator[None]:
    """Within this block every dropout of the project draws its mask as torch's CPU dropout does on Intel MKL.

    The masks then equal those ``nn.Dropout`` draws on an Intel CPU after the same
    ``torch.manual_seed``, on any CPU or GPU; each dropout call takes one 32-bit number
    from torch's default CPU generator, as torch does there. Blocks nest; leaving one
    restores the previous setting.
    """
    global _use_mkl_masks
    previous = _use_mkl_masks
    _use_mkl_masks = True
    try:
        yield
    finally:
        _use_mkl_masks = previous


def uses_mkl_masks() -> bool:
    """Whether dropout masks are drawn the Intel-MKL way now (inside :func:`mkl_dropout`)."""
    return _use_mkl_masks


# --------------------------------------------------------------------------- #
# The Intel-MKL way
# --------------------------------------------------------------------------- #


def _temper(y: int) -> int:
    """The Mersenne Twister's output transform of one state word."""
    y ^= y >> 11
    y ^= (y << 7) & 0x9D2C5680
    y ^= (y << 15) & 0xEFC60000
    return y ^ (y >> 18)


def _next_random32() -> int:
    """Take one 32-bit output of torch's default CPU generator, as its ``random()`` does.

    No torch op returns all 32 bits of one output (``randint`` draws 64 bits per value),
    so a float32 ``rand`` consumes exactly one output, and the word it consumed is read
    back from the generator's state: ``state`` holds the 624 Mersenne Twister words as
    uint64 after an 8-byte seed, two int32 (left, seeded) and a uint64 ``next``, the index
    of the word the next output tempers. ``rand`` keeps that output's low 24 bits, which
    confirms the reading.
    """
    probe = torch.rand((), dtype=torch.float32).item()
    state = torch.get_rng_state().numpy()
    next_index = int(state[16:24].view(np.uint64)[0])
    word = int(state[24 + 8 * (next_index - 1) : 32 + 8 * (next_index - 1)].view(np.uint64)[0])
    value = _temper(word)
    if (value & 0xFFFFFF) / 2**24 != probe:
        raise RuntimeError("torch's generator state has a layout mkl_dropout does not know; it cannot draw MKL masks")
    return value


def _mcg31_powers(start: int, multiplier: int, count: int) -> Tensor:
    """``start * multiplier^k mod m`` for k < count, as int64, by doubling: a block times multiplier^len is the next.

    Every product of two numbers below m = 2^31 - 1 fits in int64.
    """
    values = torch.tensor([start], dtype=torch.int64)
    jump = multiplier  # multiplier^len(values) mod m
    while values.numel() < count:
        values = torch.cat([values, values * jump % _MCG31_MODULUS])
        jump = jump * jump % _MCG31_MODULUS
    return values[:count]


def _mcg31_stream(seed: int, count: int) -> Tensor:
    """The first ``count`` states x_0, x_1, ... of MKL's MCG31m1 generator seeded with ``seed``, as int64.

    x_k = x_0 * a^k mod m, laid out as a (rows, width) block: x_{i*width + j} is the row
    start x_0 * a^(i*width) times a^j, so two short power lists and one outer product
    replace a sequential loop.
    """
    first = seed % _MCG31_MODULUS or 1
    width = max(1, math.isqrt(count))
    rows = -(-count // width)
    within_row = _mcg31_powers(1, _MCG31_MULTIPLIER, width)  # a^j
    row_starts = _mcg31_powers(first, pow(_MCG31_MULTIPLIER, width, _MCG31_MODULUS), rows)  # x_0 a^(i*width)
    return (row_starts[:, None] * within_row[None, :] % _MCG31_MODULUS).view(-1)[:count]


def _keep_mask_from_bits(shape: torch.Size, keep_probability: float) -> Tensor:
    """A bool keep mask of ``shape`` on the host, each element kept with probability ``keep_probability``.

    Each element reads 32 uniform bits (a signed int32 half of a full-range 64-bit draw from
    torch's default generator) and is kept when they fall below ``keep_probability * 2^32``,
    so the keep probability is exact to 2^-33.
    """
    count = shape.numel()
    words = torch.empty((count + 1) // 2, dtype=torch.int64).random_(-(2**63), None)
    bound = round(keep_probability * 2**32)  # keep the 32-bit numbers below it
    if bound >= 2**32:  # 1 - p is 1 at 32 bits (p < 2^-33): every element is kept (the generator advanced as ever)
        return torch.ones(shape, dtype=torch.bool)
    return (words.view(torch.int32)[:count] < bound - 2**31).view(shape)  # the halves are uniform on [-2^31, 2^31)


def _mkl_keep_mask(shape: torch.Size, keep_probability: float) -> Tensor:
    """A bool keep mask of ``shape`` on the host, drawn as MKL's ``viRngBernoulli`` (inverse-CDF method)."""
    states = _mcg31_stream(_next_random32(), shape.numel())
    return (states.double() / _MCG31_MODULUS < keep_probability).view(shape)


# --------------------------------------------------------------------------- #
# The Function
# --------------------------------------------------------------------------- #


def dropout_noise(like: Tensor, p: float) -> Tensor:
    """What a dropout of ``like`` multiplies it by: the keep mask scaled by ``1 / (1 - p)``.

    Args:
        like: the tensor to drop elements of (only its shape, dtype and device are read).
        p: probability of dropping an element, in (0, 1).

    Returns:
        A tensor of ``like``'s shape, dtype and device holding 0 and 1 / (1 - p).
        Draws from torch's default generator (see :func:`mkl_dropout`).
    """
    if _use_mkl_masks:
        noise = _mkl_keep_mask(like.shape, 1 - p).to(device=like.device, dtype=like.dtype)
    elif like.device.type == "cpu":
        noise = _keep_mask_from_bits(like.shape, 1 - p).to(like.dtype)
    else:
        noise = torch.empty_like(like, memory_format=torch.contiguous_format).bernoulli_(1 - p)
    return noise.div_(1 - p)  # the kept value is torch's own dropout's: the mask divided by 1 - p in like's dtype


class Dropout(torch.autograd.Function):
    """``out = x * noise`` for a noise tensor from :func:`dropout_noise`; the gradient is scaled alike."""

    @staticmethod
    def forward(x: Tensor, noise: Tensor) -> Tensor:
        return x * noise

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(inputs[1])

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):
        (noise,) = ctx.saved_tensors
        return (grad_out * noise if ctx.needs_input_grad[0] else None), None


def check_probability(name: str, p: float) -> None:
    """A dropout probability must be a real number in [0, 1]."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")


def drops(p: float, training: bool, like: Tensor) -> bool:
    """Whether a dropout with these settings draws a mask (torch's rule: not for p = 0, 1, eval or no elements)."""
    return training and 0 < p < 1 and like.numel() > 0


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element of x with probability p and scale the rest by ``1 / (1 - p)``.

    As ``torch.nn.functional.dropout``: nothing is drawn when not training, when p is 0
    or 1, or when x has no elements; p = 1 gives zeros. The mask is drawn the Intel-MKL
    way inside :func:`mkl_dropout`.

    Args:
        x: any floating-point tensor.
        p: probability of dropping an element, in [0, 1].
        training: False returns x unchanged.

    Returns:
        A tensor of x's shape and dtype.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    _check_float("x", x, x.dim())
    check_probability("p", p)
    if training and p == 1:
        return Dropout.apply(x, torch.zeros((), dtype=x.dtype, device=x.device))
    if not drops(p, training, x):
        return x
    return Dropout.apply(x, dropout_noise(x, p))
