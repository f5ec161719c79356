"""What every Function's wrapper and body share: input checks, autocast casting, matrix products."""

from __future__ import annotations

import functools
import math
import os
from typing import Callable

import torch
from torch import Tensor

from caption_torch.functional.checks import check_token_ids

# --------------------------------------------------------------------------- #
# Input validation shared by the wrappers
# --------------------------------------------------------------------------- #


def _check_float(name: str, tensor: Tensor, ndim: int) -> None:
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")


def _check_width(name: str, tensor: Tensor) -> None:
    """The input of a map over the last dimension must have a positive width (no map reads a width of 0)."""
    if tensor.shape[-1] == 0:
        raise ValueError(f"{name} has width 0 in its last dimension (shape {tuple(tensor.shape)})")


def _check_same_dtype(**tensors: Tensor) -> None:
    device = next(iter(tensors.values())).device.type
    if torch.is_autocast_enabled(device):
        return  # mixed dtypes are autocast's normal input; the wrappers cast them (see _apply_autocast)
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name}={dtype}" for name, dtype in dtypes.items())
        raise ValueError(f"all floating-point inputs must share one dtype, got {listed}")


def _check_dim(name: str, tensor: Tensor, dim: int, expected: int, meaning: str) -> None:
    if tensor.shape[dim] != expected:
        raise ValueError(
            f"{name} has size {tensor.shape[dim]} in dimension {dim} but {meaning} is {expected} "
            f"(shape {tuple(tensor.shape)})"
        )


def _check_recurrent(x: Tensor, h0: Tensor, Wx: Tensor, Wh: Tensor, b: Tensor, gates: int, x_ndim: int) -> None:
    """Shared shape checks for the four recurrent wrappers (gates = 1 for RNN, 4 for LSTM)."""
    _check_float("x", x, x_ndim)
    _check_float("prev_h" if x_ndim == 2 else "h0", h0, 2)
    _check_float("Wx", Wx, 2)
    _check_float("Wh", Wh, 2)
    _check_float("b", b, 1)
    _check_same_dtype(x=x, h0=h0, Wx=Wx, Wh=Wh, b=b)
    hidden = h0.shape[1]
    _check_dim("h0", h0, 0, x.shape[0], "the batch size of x")
    _check_dim("Wx", Wx, 0, x.shape[-1], "the input width of x")
    _check_dim("Wx", Wx, 1, gates * hidden, f"{gates} x the hidden width")
    _check_dim("Wh", Wh, 0, hidden, "the hidden width")
    _check_dim("Wh", Wh, 1, gates * hidden, f"{gates} x the hidden width")
    _check_dim("b", b, 0, gates * hidden, f"{gates} x the hidden width")


# --------------------------------------------------------------------------- #
# Mixed precision
# --------------------------------------------------------------------------- #
# Autocast does not look inside a custom Function, so the wrappers do its job: under
# autocast, the products (recurrences, affine maps) run in the autocast dtype (bf16 or
# fp16) and the losses in float32; the Function itself then runs with autocast off, so
# nothing inside is cast again. Gradients flow back through ordinary ``.to()`` casts,
# so float32 parameters receive float32 gradients. As autocast itself does, float64
# tensors are never cast: float64 inputs run in float64.


_HALF_DTYPES = (torch.bfloat16, torch.float16)


def _apply_autocast(function, *args, low_precision: bool):
    """``function.apply(*args)`` with autocast's casting done explicitly (see above)."""
    device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
    if not torch.is_autocast_enabled(device):
        return function.apply(*args)
    dtype = torch.get_autocast_dtype(device) if low_precision else torch.float32
    castable = [isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64 for a in args]
    cast = [a.to(dtype) if castable_a else a for a, castable_a in zip(args, castable)]
    dtypes = {a.dtype for a in cast if isinstance(a, Tensor) and a.is_floating_point()}
    if len(dtypes) > 1:  # float64 beside tensors that autocast did cast
        raise ValueError(f"under autocast, float64 inputs are not cast: pass all of them in float64 or none, "
                         f"got {', '.join(sorted(str(d) for d in dtypes))}")  # fmt: skip
    with torch.autocast(device, enabled=False):
        return function.apply(*cast)


# --------------------------------------------------------------------------- #
# Matrix products
# --------------------------------------------------------------------------- #
# On CPUs, float32 products go through oneDNN (the library behind nn.LSTM's CPU
# kernels) when this torch build has it, instead of the BLAS behind torch.mm; which of
# the two is faster depends on the CPU (benchmarks/README.md; benchmarks/micro.py --groups mm
# measures it). Other dtypes and devices use torch.mm. Set CAPTION_TORCH_ONEDNN=0 to use
# ATen only (torch.mm, and torch.tanh in _tanh).


def _probe_onednn() -> bool:
    if os.environ.get("CAPTION_TORCH_ONEDNN", "1") == "0":
        return False
    try:
        probe = torch.arange(6.0).view(2, 3)
        product = torch.ops.mkldnn._linear_pointwise(probe, probe, None, "none", [], "")
        return torch.equal(product, probe @ probe.T)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


_ONEDNN = _probe_onednn()


def _on_onednn(*tensors: Tensor) -> bool:
    """Whether a product of these (non-empty, CPU float32) operands goes through oneDNN."""
    return _ONEDNN and all(t.dtype == torch.float32 and t.device.type == "cpu" and t.numel() for t in tensors)


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for (M, K) and (K, P) matrices, through oneDNN for CPU float32 (any strides)."""
    if _on_onednn(a, b):
        # _linear_pointwise(x, w) computes x @ w.T with w of shape (out, in).
        return torch.ops.mkldnn._linear_pointwise(a, b.T, None, "none", [], "")
    return torch.mm(a, b)


def _mm_at(a: Tensor, b: Tensor) -> Tensor:
    """``a.T @ b`` for row matrices (M, K) and (M, P): a weight gradient, summed over M positions.

    BLAS reads the transposed left operand in place; oneDNN's linear copies it first, which pays
    only where the input side is the wide one (the feed-forward block's second map, ``layers.py``).
    """
    return torch.mm(a.T, b)


def _times(b: Tensor) -> Callable[[Tensor], Tensor]:
    """``a -> a @ b`` (a with at least one row) with :func:`_mm`'s routing decided once: the time loops' products."""
    if _on_onednn(b):
        weight, linear = b.T, torch.ops.mkldnn._linear_pointwise.default
        return lambda a: linear(a, weight, None, "none", [], "")
    return lambda a: torch.mm(a, b)


def _addmm(bias: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``bias + a @ b`` with a (P,) bias broadcast over rows."""
    if _on_onednn(a, b):
        return torch.ops.mkldnn._linear_pointwise(a, b.T, bias, "none", [], "")
    return torch.addmm(bias, a, b)


# On some CPUs ATen's float32 tanh costs several times its sigmoid; oneDNN's tanh, the one
# under nn.LSTM's CPU kernels, costs about what sigmoid does. Its two layout copies make the
# detour pay only for large blocks: from the crossover below (64 rows of 512, measured with
# benchmarks/micro.py --groups tanh), i.e. generation and large batches. The per-step blocks
# of a batch of 25 (12.8k elements) stay with ATen.
_ONEDNN_TANH_MIN_ELEMENTS = 32768


def _probe_onednn_tanh() -> bool:
    try:
        probe = torch.linspace(-3.0, 3.0, 7)
        return _ONEDNN and torch.allclose(torch.tanh(probe.to_mkldnn()).to_dense(), torch.tanh(probe))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


_ONEDNN_TANH = _probe_onednn_tanh()


def _tanh(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``tanh(x)``, written into ``out`` if given (``out`` may be ``x`` itself: in place)."""
    if _ONEDNN_TANH and x.numel() >= _ONEDNN_TANH_MIN_ELEMENTS and _on_onednn(x):
        result = torch.tanh(x.contiguous().to_mkldnn()).to_dense()
        return result if out is None else out.copy_(result)
    return torch.tanh(x, out=out)


# ATen's fused derivative kernels, one pass each instead of three elementwise ops:
#   sigmoid_backward(g, s) = g * s * (1 - s)      (s = sigmoid(a), so this is g * sigmoid'(a))
#   tanh_backward(g, t)    = g * (1 - t * t)      (t = tanh(a))
_sigmoid_backward = torch.ops.aten.sigmoid_backward
_tanh_backward = torch.ops.aten.tanh_backward


def _check_projected(x_projected: Tensor, h: Tensor, h_name: str, Wh: Tensor, gates: int, x_ndim: int) -> None:
    """Shape checks for the ``*_projected`` wrappers: x_projected (N, [T,] gH), h (N, H), Wh (H, gH)."""
    _check_float("x_projected", x_projected, x_ndim)
    _check_float(h_name, h, 2)
    _check_float("Wh", Wh, 2)
    _check_same_dtype(**{"x_projected": x_projected, h_name: h, "Wh": Wh})
    H = h.shape[1]
    _check_dim(h_name, h, 0, x_projected.shape[0], "the batch size of x_projected")
    _check_dim("Wh", Wh, 0, H, "the hidden width")
    _check_dim("Wh", Wh, 1, gates * H, f"{gates} x the hidden width")
    _check_dim("x_projected", x_projected, x_ndim - 1, gates * H, f"{gates} x the hidden width")


def _check_feed_forward_weights(x: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor, bias2: Tensor) -> None:
    """The feed-forward block's maps for x (..., D): weight1 (F, D), bias1 (F,), weight2 (D', F), bias2 (D',)."""
    _check_float("weight1", weight1, 2)
    _check_float("bias1", bias1, 1)
    _check_float("weight2", weight2, 2)
    _check_float("bias2", bias2, 1)
    _check_same_dtype(x=x, weight1=weight1, bias1=bias1, weight2=weight2, bias2=bias2)
    _check_width("x", x)
    _check_dim("weight1", weight1, 1, x.shape[-1], "the width of x")
    _check_dim("bias1", bias1, 0, weight1.shape[0], "the output width of weight1")
    _check_dim("weight2", weight2, 1, weight1.shape[0], "the output width of weight1")
    _check_dim("bias2", bias2, 0, weight2.shape[0], "the output width of weight2")


def _check_packing(packing) -> None:
    """``packing`` must be a ``CausalPacking`` from ``causal_packing()``; it is known by its ``check_rows``
    method, as the modules below ``packing.py`` (``layers.py``) take one without importing it."""
    if not callable(getattr(packing, "check_rows", None)):
        raise ValueError(f"packing must be a CausalPacking from causal_packing(), got {type(packing).__name__}")


def _check_input(name: str, x: Tensor, min_ndim: int = 1) -> None:
    """A floating-point tensor of at least ``min_ndim`` dimensions."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    _check_float(name, x, max(x.dim(), min_ndim))


def _check_targets(y: Tensor, mask: Tensor, batch_shape: tuple, vocab_size: int) -> None:
    """Targets y and mask must both be (N, T) with N >= 1; y must hold ids in [0, V), mask 0s and 1s."""
    check_token_ids("y", y, vocab_size, ndim=2)
    if tuple(y.shape) != tuple(batch_shape):
        raise ValueError(f"y has shape {tuple(y.shape)} but the scores have (N, T) = {tuple(batch_shape)}")
    if batch_shape[0] == 0:
        raise ValueError("the scores hold N = 0 sequences; the loss is divided by N")
    if not isinstance(mask, Tensor) or mask.shape != y.shape:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor of shape {tuple(y.shape)} like y, got {shape}")
    # A bool mask is what the model passes; other dtypes cost one host sync to check.
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("mask must hold only 0 and 1 (or be bool): positions count or they do not")


def _is_dense(tensor: Tensor) -> bool:
    """Whether the strides give every element its own place, with no gaps (some order of a contiguous layout)."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride()), key=lambda pair: pair[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _without_autocast(function, *args):
    """``function.apply(*args)`` with autocast off and nothing cast: for Functions that pick their own dtypes."""
    device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
    if not torch.is_autocast_enabled(device):
        return function.apply(*args)
    with torch.autocast(device, enabled=False):
        return function.apply(*args)


# --------------------------------------------------------------------------- #
# Attention heads (attention.py, packing.py)
# --------------------------------------------------------------------------- #


def _rows(x: Tensor) -> Tensor:
    """x (..., D) as a matrix (M, D) of its rows (a view when x's layout allows)."""
    return x.reshape(-1, x.shape[-1])


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(N, L, E) -> (N, H, L, d), a view."""
    N, L, E = x.shape
    return x.view(N, L, heads, E // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(N, H, L, d) -> (N * L, E), heads side by side (a copy)."""
    N, H, L, d = x.shape
    return x.transpose(1, 2).reshape(N * L, H * d)


def _project(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """(N, L, E) @ weight.T + bias -> (N, L, E') as one GEMM."""
    N, L, E = x.shape
    return _addmm(bias, x.reshape(N * L, E), weight.T).view(N, L, weight.shape[0])


def _attend(Q: Tensor, K: Tensor, V: Tensor, noise: Tensor | None, blocked: Tensor | None = None):
    """Scaled dot-product attention of every head: ``softmax(Q K^T / sqrt(d))``, masked, dropped, times V.

    Args:
        Q: (N, H, S, d) queries; K, V: (N, H, T, d) keys and values.
        noise: (N, H, S, T) dropout noise of the weights, a 0-dim scalar, or None (no dropout: the
            dropped weights are the weights).
        blocked: optional (S, T) bool, True where a query may not look (its score becomes -inf).

    Returns:
        weights (N, H, S, T), the dropped weights (N, H, S, T) and the context (N, H, S, d):
        what :func:`_attend_backward` reads.
    """
    scores = torch.matmul(Q, K.transpose(2, 3)).mul_(1 / math.sqrt(Q.shape[-1]))  # (N, H, S, T)
    if blocked is not None:
        scores.masked_fill_(blocked, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    dropped = weights if noise is None else weights * noise
    return weights, dropped, torch.matmul(dropped, V)


def _attend_backward(grad_context: Tensor, Q: Tensor, K: Tensor, V: Tensor, weights: Tensor, dropped: Tensor,
                     noise: Tensor, out: tuple[Tensor, Tensor, Tensor] | None = None):  # fmt: skip
    """The gradients of :func:`_attend`'s context with respect to Q, K and V, by hand.

    Args:
        grad_context: (N, H, S, d); Q, K, V, weights, dropped, noise: as :func:`_attend` took and gave them.
        out: optional (grad_Q, grad_K, grad_V) tensors to write the results into.

    Returns:
        grad_Q (N, H, S, d), grad_K and grad_V (N, H, T, d).
    """
    grad_Q, grad_K, grad_V = out if out is not None else (None, None, None)
    grad_V = torch.matmul(dropped.transpose(2, 3), grad_context, out=grad_V)
    grad_weights = torch.matmul(grad_context, V.transpose(2, 3)).mul_(noise)  # (N, H, S, T)
    # Softmax backward, row by row: weights * (g - sum(g * weights)); a masked weight is 0, so its score gets none.
    grad_scores = grad_weights.sub_((grad_weights * weights).sum(-1, keepdim=True)).mul_(weights)
    grad_scores.mul_(1 / math.sqrt(Q.shape[-1]))
    grad_Q = torch.matmul(grad_scores, K, out=grad_Q)
    return grad_Q, torch.matmul(grad_scores.transpose(2, 3), Q, out=grad_K), grad_V


# --------------------------------------------------------------------------- #
# Functions that return their intermediates for backward
# --------------------------------------------------------------------------- #


def _save_with_intermediates(ctx, saved: tuple, intermediates: tuple) -> None:
    """Save ``saved`` for backward, where ``intermediates`` are extra outputs of the Function (kept for
    backward, never differentiated): they are marked non-differentiable, and backward gets None, not a
    tensor of zeros, for them and for an output that was not used."""
    ctx.mark_non_differentiable(*intermediates)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*saved)


def _unless_unused(backward: Callable) -> Callable:
    """Wrap a ``backward(ctx, grad_out, *grad_intermediates)`` of a Function that saved with
    :func:`_save_with_intermediates`: if the main output was not used, no gradient flows back."""

    @functools.wraps(backward)
    def wrapped(ctx, grad_out, *grad_intermediates):
        if grad_out is None:
            return (None,) * len(ctx.needs_input_grad)
        return backward(ctx, grad_out, *grad_intermediates)

    return wrapped
