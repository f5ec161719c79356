"""GELU, the exact (erf) form of ``nn.GELU()``, fused into the feed-forward block.

    gelu(x)  = x * Phi(x),                 Phi(x) = (1 + erf(x / sqrt(2))) / 2, the standard normal CDF
    gelu'(x) = Phi(x) + x * phi(x),        phi(x) = exp(-x^2 / 2) / sqrt(2 pi), its density

cs231n's Transformer of 2025-2026 puts it between the two linear maps of its feed-forward block,
``fc2(dropout(gelu(fc1(x))))``; :class:`GeluFeedForward` computes that block as one Function, as
``FeedForward`` (``layers.py``) computes 2021-2024's ReLU block. The elementwise values come from
ATen's one-pass kernels (``gelu`` and ``gelu_backward``, what ``nn.GELU()`` runs), where a chain of
erf, exp and products would take several passes over the (M, F) hidden layer
(``benchmarks/micro.py --groups gelu``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from caption_torch.functional._common import (
    _HALF_DTYPES,
    _addmm,
    _mm,
    _mm_at,
    _rows,
    _save_with_intermediates,
    _unless_unused,
)


def gelu_slope_times(grad: Tensor, x: Tensor, out: Tensor | None = None) -> Tensor:
    """``grad * gelu'(x)`` elementwise, ``gelu'(x) = Phi(x) + x * phi(x)``, in one pass.

    ATen's ``gelu_backward`` kernel evaluates exactly this product (vectorised, wide for 16-bit
    dtypes); the chain rule around it, through the linear maps and the dropout, is this module's.

    Args:
        grad: the upstream gradient, broadcastable to x (a 0-dim scalar scales every element).
        x: the pre-activations, any floating-point tensor.
        out: where to write the result (x's shape; may be x itself, read and written element by element).

    Returns:
        A tensor of x's shape and dtype (``out`` when given).
    """
    grad = grad.expand_as(x)  # the CPU kernel refuses a 0-dim gradient; an expanded view reads the same numbers
    if out is None:
        return torch.ops.aten.gelu_backward(grad, x)
    return torch.ops.aten.gelu_backward.grad_input(grad, x, grad_input=out)


def _gelu_dropout_(pre: Tensor, noise: Tensor, keep_slope: bool) -> Tensor:
    """The dropped hidden layer ``gelu(pre) * noise``, a new tensor; with ``keep_slope``, ``pre`` is
    overwritten with ``gelu'(pre) * noise``, all that backward needs of it.

    Args:
        pre: (M, F) contiguous pre-activations.
        noise: dropout noise of M * F elements (any shape), or a 0-dim scalar.
        keep_slope: whether to overwrite pre with the scaled slope.
    """
    noise = noise.reshape(pre.shape) if noise.dim() else noise
    if pre.dtype in _HALF_DTYPES:  # one rounding of gelu(pre) * noise to 16 bits, not two
        dropped = torch.nn.functional.gelu(pre.float()).mul_(noise).to(pre.dtype)
    else:
        dropped = torch.nn.functional.gelu(pre).mul_(noise)
    if keep_slope:  # the last read of pre: written over with the result, element by element
        gelu_slope_times(noise, pre, out=pre)
    return dropped


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
        pre = _addmm(bias1, _rows(x), weight1.T)  # (M, F)
        dropped = _gelu_dropout_(pre, noise, keep_slope)  # pre now holds the slope times the noise
        out = _addmm(bias2, dropped, weight2.T).view(*x.shape[:-1], weight2.shape[0])
        return out, dropped, pre

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        x, weight1, _, weight2, _, _, _ = inputs
        _, dropped, slope = output
        _save_with_intermediates(ctx, (x, weight1, weight2, dropped, slope), (dropped, slope))

    @staticmethod
    @once_differentiable
    @_unless_unused
    def backward(ctx: FunctionCtx, grad_out: Tensor | None, _grad_dropped: None, _grad_slope: None):
        x, weight1, weight2, dropped, slope = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        grad_rows = _rows(grad_out)  # (M, D')
        # (D', F) with the wide (M, F) input through oneDNN, as FeedForward's second map.
        grad_weight2 = _mm(grad_rows.T, dropped) if need_w2 else None
        grad_bias2 = grad_rows.sum(0) if need_b2 else None
        grad_x = grad_weight1 = grad_bias1 = None
        if need_x or need_w1 or need_b1:
            grad_pre = _mm(grad_rows, weight2).mul_(slope)  # (M, F): through the dropout and the GELU
            rows = _rows(x)
            grad_x = _mm(grad_pre, weight1).view(x.shape) if need_x else None
            grad_weight1 = _mm_at(grad_pre, rows) if need_w1 else None  # (F, D) in the weight's own layout
            grad_bias1 = grad_pre.sum(0) if need_b1 else None
        return grad_x, grad_weight1, grad_bias1, grad_weight2, grad_bias2, None, None
