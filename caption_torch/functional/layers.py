"""The Transformer's position-wise layers: linear maps, layer norm, the feed-forward block, positions and the loss.

Weights follow ``nn.Linear``'s layout, (out, in): a layer computes ``x @ W.T + b`` over the
last dimension of an input with any number of leading dimensions (the model's are (N, T)).
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from caption_torch.functional._common import (
    _HALF_DTYPES,
    _addmm,
    _apply_autocast,
    _check_dim,
    _check_feed_forward_weights,
    _check_float,
    _check_input,
    _check_packing,
    _check_same_dtype,
    _check_targets,
    _check_width,
    _mm,
    _mm_at,
    _on_onednn,
    _rows,
    _save_with_intermediates,
    _unless_unused,
)
from caption_torch.functional.dropout import Dropout, check_probability, dropout_noise, drops
from caption_torch.functional.gelu import GeluFeedForward
from caption_torch.functional.words import Affine, weighted_softmax_loss

if TYPE_CHECKING:  # packing.py builds on this module
    from caption_torch.functional.packing import CausalPacking

# --------------------------------------------------------------------------- #
# Linear
# --------------------------------------------------------------------------- #


def _check_linear(x_name: str, x: Tensor, prefix: str, weight: Tensor, bias: Tensor) -> None:
    """x (..., in), ``{prefix}weight`` (out, in) and ``{prefix}bias`` (out,)."""
    w_name, b_name = f"{prefix}weight", f"{prefix}bias"
    _check_float(w_name, weight, 2)
    _check_float(b_name, bias, 1)
    _check_same_dtype(**{x_name: x, w_name: weight, b_name: bias})
    _check_width(x_name, x)
    _check_dim(w_name, weight, 1, x.shape[-1], f"the width of {x_name}")
    _check_dim(b_name, bias, 0, weight.shape[0], f"the output width of {w_name}")


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """An affine map over the last dimension, as ``nn.Linear``.

    Args:
        x: (..., D) inputs.
        weight: (M, D) weights (``nn.Linear``'s layout).
        bias: (M,) bias.

    Returns:
        (..., M) outputs ``x @ weight.T + bias``.
    """
    _check_input("x", x)
    _check_linear("x", x, "", weight, bias)
    return _apply_autocast(Affine, x, weight, bias, True, low_precision=True)


# --------------------------------------------------------------------------- #
# Memory: the M vectors of an image
# --------------------------------------------------------------------------- #


class MemoryMean(torch.autograd.Function):
    """``out[n] = sum_m memory[n, m] / M``: one vector for each image's M memory vectors."""

    @staticmethod
    def forward(memory: Tensor) -> Tensor:
        return memory.mean(1)

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        ctx.shape = inputs[0].shape

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):
        if not ctx.needs_input_grad[0]:
            return None
        N, M, D = ctx.shape
        return (grad_out / M)[:, None].expand(N, M, D)  # every vector shares its image's gradient


def memory_mean(memory: Tensor) -> Tensor:
    """The mean of each image's memory vectors.

    Args:
        memory: (N, M, D) M vectors per image (M = 1 for one fc7 vector, more for image regions).

    Returns:
        (N, D).
    """
    _check_float("memory", memory, 3)
    if memory.shape[1] == 0:
        raise ValueError(f"memory must hold at least one vector per image, got shape {tuple(memory.shape)}")
    return MemoryMean.apply(memory)


# --------------------------------------------------------------------------- #
# Layer norm
# --------------------------------------------------------------------------- #


class LayerNorm(torch.autograd.Function):
    """Normalise each row over the last dimension, then scale and shift: ``x_hat * weight + bias``.

    Saves x and each row's mean and 1 / std; backward recomputes x_hat from them.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        # ATen's kernel: one pass per row for the statistics and the output (the same math as
        # (x - mean) / sqrt(var + eps) * weight + bias with the biased variance, written out in backward).
        # Returns (out, mean, inverse_std): the statistics are outputs so that setup_context can save them.
        return torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        x, weight, _, _ = inputs
        _, mean, inverse_std = output
        _save_with_intermediates(ctx, (x, mean, inverse_std, weight), (mean, inverse_std))

    @staticmethod
    @once_differentiable
    @_unless_unused
    def backward(ctx: FunctionCtx, grad_out: Tensor, _grad_mean: None, _grad_inverse_std: None):
        x, mean, inverse_std, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        normalized = (x - mean).mul_(inverse_std)  # x_hat (..., D), recomputed rather than kept
        grad_x = None
        if need_x:
            # With x_hat = (x - mean) / std and g = grad_out * weight:
            # dx = (g - mean(g) - x_hat * mean(g * x_hat)) / std
            grad_normalized = grad_out * weight
            mean_grad = grad_normalized.mean(-1, keepdim=True)
            mean_projection = (grad_normalized * normalized).mean(-1, keepdim=True)
            grad_x = grad_normalized.sub_(mean_grad).sub_(normalized * mean_projection).mul_(inverse_std)
        grad_weight = _rows(grad_out * normalized).sum(0) if need_weight else None
        grad_bias = _rows(grad_out).sum(0) if need_bias else None
        return grad_x, grad_weight, grad_bias, None


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Layer normalisation over the last dimension, as ``nn.LayerNorm(D)``.

    Args:
        x: (..., D) inputs.
        weight: (D,) scale.
        bias: (D,) shift.
        eps: added to the variance before the square root.

    Returns:
        (..., D): ``(x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance of each row.
    """
    _check_input("x", x)
    _check_float("weight", weight, 1)
    _check_float("bias", bias, 1)
    _check_same_dtype(x=x, weight=weight, bias=bias)
    _check_dim("weight", weight, 0, x.shape[-1], "the width of x")
    _check_dim("bias", bias, 0, x.shape[-1], "the width of x")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    # Normalisation runs in float32 under autocast, as autocast runs nn.LayerNorm.
    return _apply_autocast(LayerNorm, x, weight, bias, float(eps), low_precision=False)[0]


# --------------------------------------------------------------------------- #
# Feed-forward block
# --------------------------------------------------------------------------- #


# ATen's fused ReLU derivative: threshold_backward(g, y, 0) = g where y > 0, else 0 (one pass), written into grad_input.
_threshold_backward_into = torch.ops.aten.threshold_backward.grad_input  # the same, written into grad_input


def _addmm_relu(bias: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``relu(bias + a @ b)``; oneDNN applies the ReLU as it writes the product (no second pass)."""
    if _on_onednn(a, b):
        return torch.ops.mkldnn._linear_pointwise(a, b.T, bias, "relu", [], "")
    return torch.addmm(bias, a, b).relu_()


class FeedForward(torch.autograd.Function):
    """``Linear2(Dropout(ReLU(Linear1(x))))`` with the dropout's noise given (see ``dropout_noise``).

    Saves the dropped hidden layer only: where it is positive the ReLU let the unit through
    and the dropout kept it (its noise there is the one kept scale, 1 / (1 - p)), and
    everywhere else the hidden gradient is zero. So the noise is not kept for backward.
    """

    @staticmethod
    def forward(x: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor, bias2: Tensor, noise: Tensor):
        hidden = _addmm_relu(bias1, _rows(x), weight1.T)  # (M, F)
        dropped = hidden.mul_(noise.view(hidden.shape)) if noise.dim() else hidden.mul_(noise)
        out = _addmm(bias2, dropped, weight2.T).view(*x.shape[:-1], weight2.shape[0])
        return out, dropped  # the hidden layer is an output so that setup_context can save it

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        x, weight1, _, weight2, _, noise = inputs
        _, dropped = output
        # noise.amax(): every kept unit's noise (0-dim)
        _save_with_intermediates(ctx, (x, weight1, weight2, dropped, noise.amax()), (dropped,))

    @staticmethod
    @once_differentiable
    @_unless_unused
    def backward(ctx: FunctionCtx, grad_out: Tensor, _grad_dropped: None):
        x, weight1, weight2, dropped, kept_scale = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        grad_rows = _rows(grad_out)  # (M, D)
        # (D', F) with the wide (M, F) input: oneDNN, its operands' copies included, beats BLAS on
        # this shape (benchmarks/micro.py --groups weight_grad).
        grad_weight2 = _mm(grad_rows.T, dropped) if need_w2 else None
        grad_bias2 = grad_rows.sum(0) if need_b2 else None
        grad_x = grad_weight1 = grad_bias1 = None
        if need_x or need_w1 or need_b1:
            # (M, F): into the hidden layer through the kept units' noise (a scale of the narrow (M, D)
            # gradient), then 0 where the ReLU or the dropout blocked, in place.
            grad_hidden = _mm(grad_rows * kept_scale, weight2)
            _threshold_backward_into(grad_hidden, dropped, 0, grad_input=grad_hidden)
            grad_x = _mm(grad_hidden, weight1).view(x.shape) if need_x else None
            # (F, D) in the weight's own layout: a transposed result would be copied by autograd.
            grad_weight1 = _mm_at(grad_hidden, _rows(x)) if need_w1 else None
            grad_bias1 = grad_hidden.sum(0) if need_b1 else None
        return grad_x, grad_weight1, grad_bias1, grad_weight2, grad_bias2, None


def feed_forward(
    x: Tensor,
    weight1: Tensor,
    bias1: Tensor,
    weight2: Tensor,
    bias2: Tensor,
    dropout_p: float = 0.0,
    training: bool = True,
    activation: str = "relu",
    packing: CausalPacking | None = None,
) -> Tensor:
    """The Transformer's position-wise block: ``Linear2(Dropout(ReLU(Linear1(x))))``, or GELU for ReLU.

    Args:
        x: (..., D) inputs, or (P, D) packed rows with ``packing``.
        weight1: (F, D), bias1: (F,) the first map (F = 2048 in cs231n's decoder layer).
        weight2: (D', F), bias2: (D',) the second map.
        dropout_p: probability of dropping a hidden unit (drawn as :func:`dropout` draws).
        training: False turns the dropout off.
        activation: ``"relu"`` (cs231n 2021-2024) or ``"gelu"`` (exact form, cs231n 2025-2026).
        packing: the packing of x's rows (``packing.py``): the hidden dropout is then masked as the
            unpacked (N, T, F) layer's would be.

    Returns:
        (..., D') outputs.
    """
    if packing is None:
        _check_input("x", x)
    else:
        _check_packing(packing)
        packing.check_rows(x)
    _check_feed_forward_weights(x, weight1, bias1, weight2, bias2)
    check_probability("dropout_p", dropout_p)
    check_activation(activation)
    if packing is not None:
        noise = packing.row_noise(weight1.shape[0], dropout_p, training, x)
        return apply_feed_forward(activation, x, weight1, bias1, weight2, bias2, noise)
    hidden_shape = (*x.shape[:-1], weight1.shape[0])
    hidden_like = torch.empty(hidden_shape, dtype=x.dtype, device=x.device) if training else x
    if drops(dropout_p, training, hidden_like):
        noise = dropout_noise(hidden_like, dropout_p)
    else:  # a scalar: 1 keeps every unit, 0 drops them all (p = 1)
        noise = torch.tensor(0.0 if training and dropout_p == 1 else 1.0, dtype=x.dtype, device=x.device)
    return apply_feed_forward(activation, x, weight1, bias1, weight2, bias2, noise)


def check_activation(activation: str) -> None:
    """The feed-forward block's activation must be one the project has a Function for."""
    if activation not in ("relu", "gelu"):
        raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")


def apply_feed_forward(
    activation: str, x: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor, bias2: Tensor, noise: Tensor
) -> Tensor:
    """The feed-forward Function of ``activation`` on checked inputs and drawn noise (the hidden layer's, or a
    scalar), under autocast as the other products; returns its (..., D') output."""
    if activation == "relu":
        return _apply_autocast(FeedForward, x, weight1, bias1, weight2, bias2, noise, low_precision=True)[0]
    keep_slope = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight1, bias1, weight2, bias2))
    return _apply_autocast(GeluFeedForward, x, weight1, bias1, weight2, bias2, noise, keep_slope,
                           low_precision=True)[0]  # fmt: skip


# --------------------------------------------------------------------------- #
# Positions
# --------------------------------------------------------------------------- #


class AddPositions(torch.autograd.Function):
    """``out[n, t] = x[n, t] + encoding[t]``."""

    @staticmethod
    def forward(x: Tensor, encoding: Tensor) -> Tensor:
        return x + encoding

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        pass  # the gradient needs nothing from the forward pass

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):
        need_x, need_encoding = ctx.needs_input_grad
        return (grad_out if need_x else None), (grad_out.sum(0) if need_encoding else None)


def sinusoidal_positions(max_len: int, embed_dim: int) -> Tensor:
    """The Transformer's sinusoidal encoding (max_len, embed_dim), float32.

    ``P[i, 2j] = sin(i * 10000^(-2j / E))`` and ``P[i, 2j + 1] = cos(i * 10000^(-2j / E))``,
    computed in float64 and rounded once (angles reach max_len radians: float32 angles
    would carry errors of max_len * 6e-8 into every sine).
    """
    positions = torch.arange(max_len, dtype=torch.float64)[:, None]  # (L, 1)
    frequencies = torch.pow(10000.0, -torch.arange(0, embed_dim, 2, dtype=torch.float64) / embed_dim)  # (E/2,)
    encoding = torch.zeros(max_len, embed_dim, dtype=torch.float64)
    encoding[:, 0::2] = torch.sin(positions * frequencies)
    encoding[:, 1::2] = torch.cos(positions * frequencies)
    return encoding.float()


def add_positions(x: Tensor, encoding: Tensor, dropout_p: float = 0.0, training: bool = True) -> Tensor:
    """Add each position's encoding to every sequence, then dropout (cs231n's ``PositionalEncoding``).

    Args:
        x: (N, T, E) word vectors.
        encoding: (L, E) one row per position, L >= T (from :func:`sinusoidal_positions`); cast to x's dtype.
        dropout_p: dropout probability after the sum (drawn as :func:`dropout` draws).
        training: False turns the dropout off.

    Returns:
        (N, T, E): ``dropout(x + encoding[:T])``.
    """
    _check_float("x", x, 3)
    _check_float("encoding", encoding, 2)
    _check_dim("encoding", encoding, 1, x.shape[2], "the width of x")
    if encoding.shape[0] < x.shape[1]:
        raise ValueError(f"encoding has {encoding.shape[0]} positions but x has T = {x.shape[1]} of them")
    check_probability("dropout_p", dropout_p)
    summed = AddPositions.apply(x, encoding[: x.shape[1]].to(x.dtype))
    if training and dropout_p == 1:
        return Dropout.apply(summed, torch.zeros((), dtype=summed.dtype, device=summed.device))
    if not drops(dropout_p, training, summed):
        return summed
    return Dropout.apply(summed, dropout_noise(summed, dropout_p))


# --------------------------------------------------------------------------- #
# Loss
# --------------------------------------------------------------------------- #


def transformer_softmax_loss(scores: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Masked softmax loss averaged over every position, as cs231n's Transformer solver.

    Args:
        scores: (N, T, V) unnormalised scores.
        y: (N, T) correct token ids in [0, V).
        mask: (N, T) bool (or 0/1): which positions count (targets that are not ``<NULL>``).

    Returns:
        Scalar: the cross-entropy of the counted positions summed and divided by N * T,
        so uncounted positions still count in the denominator (unlike :func:`temporal_softmax_loss`,
        which divides by N).
    """
    _check_float("scores", scores, 3)
    _check_targets(y, mask, scores.shape[:2], scores.shape[2])
    N, T, V = scores.shape
    if T == 0:
        raise ValueError("the scores hold T = 0 positions; the loss is divided by N * T")
    weights = mask.reshape(N * T).to(torch.float32 if scores.dtype in _HALF_DTYPES else scores.dtype)
    return weighted_softmax_loss(scores.reshape(N * T, V), y.reshape(N * T), weights, N * T)
