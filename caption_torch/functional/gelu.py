"""GELU, the exact (erf) form of ``nn.GELU()``, alone and fused into the feed-forward block.

    gelu(x)  = x * Phi(x),                 Phi(x) = (1 + erf(x / sqrt(2))) / 2, the standard normal CDF
    gelu'(x) = Phi(x) + x * phi(x),        phi(x) = exp(-x^2 / 2) / sqrt(2 pi), its density

cs231n's Transformer of 2025-2026 puts it between the two linear maps of its feed-forward block,
``fc2(dropout(gelu(fc1(x))))``; :class:`GeluFeedForward` computes that block as one Function, as
``FeedForward`` (``layers.py``) computes 2021-2024's ReLU block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from caption_torch.functional._common import _HALF_DTYPES, _addmm, _check_float, _mm, _mm_at

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _gelu(x: Tensor) -> Tensor:
    """``x * Phi(x)`` elementwise (ATen's exact-form kernel: one pass, the value ``nn.GELU()`` gives)."""
    return torch.nn.functional.gelu(x)


def _normal_cdf_and_density(x: Tensor) -> tuple[Tensor, Tensor]:
    """Phi(x) and phi(x) elementwise, new tensors of x's dtype."""
    cdf = torch.erf(x * _SQRT_HALF).add_(1).mul_(0.5)
    density = x.square().mul_(-0.5).exp_().mul_(_INV_SQRT_2PI)
    return cdf, density


def gelu_slope(x: Tensor) -> Tensor:
    """gelu'(x) = Phi(x) + x * phi(x), elementwise, in x's dtype (computed in float32 for 16-bit x).

    Args:
        x: any floating-point tensor (the pre-activations).

    Returns:
        A tensor of x's shape and dtype.
    """
    wide = x.float() if x.dtype in _HALF_DTYPES else x
    cdf, density = _normal_cdf_and_density(wide)
    return cdf.addcmul_(wide, density).to(x.dtype)


# The feed-forward block's elementwise work (gelu, its slope, the dropout noise) takes several passes;
# over blocks this size (a few hundred KiB in float32, with their temporaries) they run in cache, so
# the whole reads the (M, F) pre-activations and noise once and writes each result once.
_BLOCK = 1 << 17


def _gelu_dropout_(pre: Tensor, noise: Tensor, keep_slope: bool) -> Tensor:
    """The dropped hidden layer ``gelu(pre) * noise``, a new tensor; with ``keep_slope``, ``pre`` is
    overwritten with ``gelu'(pre) * noise``, all that backward needs of it.

    Args:
        pre: (M, F) contiguous pre-activations.
        noise: (M, F) dropout noise or a 0-dim scalar.
        keep_slope: whether to overwrite pre with the scaled slope.
    """
    dropped = torch.empty_like(pre)
    pre_blocks, dropped_blocks = pre.view(-1).split(_BLOCK), dropped.view(-1).split(_BLOCK)
    noise_blocks = noise.reshape(-1).split(_BLOCK) if noise.dim() else [noise] * len(pre_blocks)
    half = pre.dtype in _HALF_DTYPES
    for pre_block, dropped_block, noise_block in zip(pre_blocks, dropped_blocks, noise_blocks):
        wide = pre_block.float() if half else pre_block
        cdf, density = _normal_cdf_and_density(wide)
        if half:
            dropped_block.copy_((wide * cdf).mul_(noise_block))
        else:
            torch.mul(wide, cdf, out=dropped_block).mul_(noise_block)
        if keep_slope and half:
            pre_block.copy_(cdf.addcmul_(wide, density).mul_(noise_block))
        elif keep_slope:  # the last read of this block of pre: written over with the result, element by element
            torch.addcmul(cdf, wide, density, out=pre_block).mul_(noise_block)
    return dropped


class Gelu(torch.autograd.Function):
    """``out = gelu(x)``; backward: ``grad_out * gelu'(x)``, from the saved x."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return _gelu(x)

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * gelu_slope(x) if ctx.needs_input_grad[0] else None


def gelu(x: Tensor) -> Tensor:
    """The Gaussian error linear unit, exact form, as ``nn.GELU()`` (``approximate="none"``).

    Args:
        x: any floating-point tensor.

    Returns:
        ``x * Phi(x)`` elementwise, x's shape and dtype (Phi: the standard normal CDF).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    _check_float("x", x, x.dim())
    return Gelu.apply(x)


class GeluFeedForward(torch.autograd.Function):
    """``Linear2(Dropout(GELU(Linear1(x))))`` with the dropout's noise given (see ``dropout_noise``).

    Returns the block's output and two intermediates marked non-differentiable, for backward (the
    wrappers return the output only): the dropped hidden layer (M, F), the second map's input, and
    ``gelu'(Linear1(x)) * noise`` (M, F), through which backward takes the hidden gradient to the
    first map (so the noise is not kept). ``keep_slope`` False (nothing needs a gradient) skips the
    slope: the second intermediate is then ``Linear1(x)``.
    """

    @staticmethod
    def forward(x: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor, bias2: Tensor, noise: Tensor,
                keep_slope: bool):  # fmt: skip
        pre = _addmm(bias1, x.reshape(-1, x.shape[-1]), weight1.T)  # (M, F)
        dropped = _gelu_dropout_(pre, noise, keep_slope)  # pre now holds the slope times the noise
        out = _addmm(bias2, dropped, weight2.T).view(*x.shape[:-1], weight2.shape[0])
        return out, dropped, pre

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        x, weight1, _, weight2, _, _, _ = inputs
        _, dropped, slope = output
        ctx.mark_non_differentiable(dropped, slope)
        ctx.save_for_backward(x, weight1, weight2, dropped, slope)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor, _grad_dropped: Tensor, _grad_slope: Tensor):
        x, weight1, weight2, dropped, slope = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])  # (M, D')
        # (D', F) with the wide (M, F) input through oneDNN, as FeedForward's second map.
        grad_weight2 = _mm(grad_rows.T, dropped) if need_w2 else None
        grad_bias2 = grad_rows.sum(0) if need_b2 else None
        grad_x = grad_weight1 = grad_bias1 = None
        if need_x or need_w1 or need_b1:
            grad_pre = _mm(grad_rows, weight2).mul_(slope)  # (M, F): through the dropout and the GELU
            rows = x.reshape(-1, x.shape[-1])
            grad_x = _mm(grad_pre, weight1).view(x.shape) if need_x else None
            grad_weight1 = _mm_at(grad_pre, rows) if need_w1 else None  # (F, D) in the weight's own layout
            grad_bias1 = grad_pre.sum(0) if need_b1 else None
        return grad_x, grad_weight1, grad_bias1, grad_weight2, grad_bias2, None, None
