"""Words in and out: the embedding lookup, the affine maps, row selection and the weighted softmax loss.

:class:`Affine` is every affine map of the project: ``temporal_affine`` (cs231n's (in, out) weights,
the vocabulary projection) and ``layers.linear`` (``nn.Linear``'s (out, in)). :class:`SelectRows` and
its adjoint :class:`PlaceRows` move rows between (N, T, ...) tensors and the positions a mask keeps.

Every softmax loss of the project is one Function, :class:`WeightedSoftmaxLoss`, over rows of
scores with a weight per row (per word)::

    loss = -sum_k weights[k] * log softmax(scores[k])[targets[k]] / total

and the losses are its wrappers, which only choose the rows, the weights and the total:

    temporal_softmax_loss     every (N, T) position, weight 1 where the target counts, total N   (cs231n's RNN)
    transformer_softmax_loss  the same rows and weights, total N * T                      (cs231n's Transformer)
    vocab_softmax_loss        the counted positions' hidden states projected to scores first, total N
    policy_gradient_loss      vocab_softmax_loss with a weight per caption or per word     (policy.py)
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from caption_torch.functional._common import (
    _HALF_DTYPES,
    _addmm,
    _apply_autocast,
    _check_dim,
    _check_float,
    _check_input,
    _check_same_dtype,
    _check_targets,
    _check_width,
    _is_dense,
    _mm,
    _mm_at,
    _rows,
    _save_with_intermediates,
    _unless_unused,
    _without_autocast,
)
from caption_torch.functional.checks import check_token_ids

# --------------------------------------------------------------------------- #
# Word embedding
# --------------------------------------------------------------------------- #


class WordEmbedding(torch.autograd.Function):
    """Look up the row of W for every token id: ``out[n, t] = W[x[n, t]]``."""

    @staticmethod
    def forward(x: Tensor, W: Tensor) -> Tensor:
        return W.index_select(0, x.reshape(-1)).view(*x.shape, W.shape[1])

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        x, W = inputs
        ctx.save_for_backward(x)
        ctx.vocab_size = W.shape[0]

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None
        D = grad_out.shape[-1]
        grad_W = grad_out.new_zeros(ctx.vocab_size, D)
        # index_add_ accumulates: a word used several times gets the sum of its gradients.
        grad_W.index_add_(0, x.reshape(-1), grad_out.reshape(-1, D))
        return None, grad_W


def word_embedding(x: Tensor, W: Tensor) -> Tensor:
    """Embed token ids.

    Args:
        x: (N, T) integer token ids, each in [0, V).
        W: (V, D) embedding matrix.

    Returns:
        (N, T, D) word vectors.
    """
    _check_float("W", W, 2)
    check_token_ids("x", x, W.shape[0], ndim=2)
    return WordEmbedding.apply(x, W)


# --------------------------------------------------------------------------- #
# Affine maps and rows
# --------------------------------------------------------------------------- #


class Affine(torch.autograd.Function):
    """``x @ W.T + b`` for a weight in ``nn.Linear``'s (out, in) layout (``out_in``), or ``x @ w + b``
    for cs231n's (in, out) layout: one GEMM over all leading positions.

    The weight's gradient is computed in the weight's own layout, (out, in) through BLAS (which
    reads the transposed left operand in place), (in, out) through :func:`_mm`.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor, out_in: bool) -> Tensor:
        right = weight.T if out_in else weight  # (in, out)
        return _addmm(bias, _rows(x), right).view(*x.shape[:-1], right.shape[1])

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        x, weight, _, out_in = inputs
        ctx.save_for_backward(x, weight)
        ctx.out_in = out_in

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias, _ = ctx.needs_input_grad
        grad_rows, rows = _rows(grad_out), _rows(x)  # (rows, out), (rows, in)
        grad_x = _mm(grad_rows, weight if ctx.out_in else weight.T).view(x.shape) if need_x else None
        grad_weight = None
        if need_weight:
            grad_weight = _mm_at(grad_rows, rows) if ctx.out_in else _mm(rows.T, grad_rows)
        grad_bias = grad_rows.sum(0) if need_bias else None
        return grad_x, grad_weight, grad_bias, None


def temporal_affine(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Apply one affine map at every timestep.

    Args:
        x: (N, T, D) inputs.
        w: (D, M) weights.
        b: (M,) bias.

    Returns:
        (N, T, M) outputs.
    """
    _check_affine(("x", x), ("w", w), ("b", b))
    return _apply_autocast(Affine, x, w, b, False, low_precision=True)


def _check_affine(x: tuple[str, Tensor], w: tuple[str, Tensor], b: tuple[str, Tensor]) -> None:
    """(name, tensor) pairs of an affine map's input (N, T, D), weights (D, M) and bias (M,)."""
    (x_name, x_value), (w_name, w_value), (b_name, b_value) = x, w, b
    _check_float(x_name, x_value, 3)
    _check_float(w_name, w_value, 2)
    _check_float(b_name, b_value, 1)
    _check_same_dtype(**{x_name: x_value, w_name: w_value, b_name: b_value})
    _check_width(x_name, x_value)
    _check_dim(w_name, w_value, 0, x_value.shape[2], f"the width of {x_name}")
    _check_dim(b_name, b_value, 0, w_value.shape[1], f"the output width of {w_name}")


# --------------------------------------------------------------------------- #
# Rows of counted positions
# --------------------------------------------------------------------------- #


class SelectRows(torch.autograd.Function):
    """``x[mask]``: the (K, ...) rows of an (N, T, ...) tensor where the (N, T) bool mask is True, in row order.

    Boolean indexing reads the rows from any strides (the time-major view that the recurrences
    return is not copied whole). The gradient is laid out as x is (its strides, where each
    element of x has its own place), so the Function that produced x gets the layout it wrote.
    """

    @staticmethod
    def forward(x: Tensor, mask: Tensor) -> Tensor:
        return x[mask]

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        x, mask = inputs
        ctx.save_for_backward(mask)
        # Only x's layout is needed for its gradient: keeping x would hold all N*T rows until backward.
        ctx.layout = (x.shape, x.stride() if _is_dense(x) else None, x.dtype, x.device)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_rows: Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        (mask,) = ctx.saved_tensors
        shape, stride, dtype, device = ctx.layout
        if stride is None:
            grad_x = torch.zeros(shape, dtype=dtype, device=device)
        else:
            grad_x = torch.empty_strided(shape, stride, dtype=dtype, device=device).zero_()
        grad_x[mask] = grad_rows  # rows that were not selected affect nothing
        return grad_x, None


class PlaceRows(torch.autograd.Function):
    """The adjoint of :class:`SelectRows`: (K, ...) rows placed, in row order, at the positions where the
    (N, T) bool mask is True of an (N, T, ...) tensor of zeros. The gradient is the selected rows'."""

    @staticmethod
    def forward(rows: Tensor, mask: Tensor) -> Tensor:
        placed = rows.new_zeros(*mask.shape, *rows.shape[1:])
        placed[mask] = rows
        return placed

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(inputs[1])

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_placed: Tensor):
        (mask,) = ctx.saved_tensors
        return (grad_placed[mask] if ctx.needs_input_grad[0] else None), None


def select_rows(x: Tensor, mask: Tensor) -> Tensor:
    """The rows of the positions where mask is True.

    Args:
        x: (N, T, ...) one entry per position.
        mask: (N, T) bool.

    Returns:
        (K, ...) with K = mask.sum(), position by position in (n, t) order.
    """
    _check_input("x", x, 2)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
        shape = (tuple(mask.shape), mask.dtype) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of x's (N, T) = {tuple(x.shape[:2])}, got {shape}")
    return SelectRows.apply(x, mask)


# --------------------------------------------------------------------------- #
# The softmax loss
# --------------------------------------------------------------------------- #


class WeightedSoftmaxLoss(torch.autograd.Function):
    """``-sum_k weights[k] * log softmax(scores[k])[targets[k]] / total``: every softmax loss of the project.

    ``forward(scores (K, V), targets (K,), weights (K,) or a 0-dim weight of every row, total)``.
    Half-precision scores (autocast's) get a float32 softmax and loss; their gradient is
    returned in their own dtype. No gradient flows into the weights (rewards, masks).
    Saves the (K, V) probabilities; the scores are not kept.
    """

    @staticmethod
    def forward(scores: Tensor, targets: Tensor, weights: Tensor, total: float) -> tuple[Tensor, Tensor]:
        # ATen's kernel subtracts the row max (finite for scores in the thousands) in one
        # pass over the rows, instead of six ops each reading the block (benchmarks/micro.py --groups softmax).
        log_probs = torch.log_softmax(scores, dim=1, dtype=torch.float32 if scores.dtype in _HALF_DTYPES else None)
        picked = log_probs.gather(1, targets[:, None])[:, 0]  # (K,)
        loss = -(picked * weights.to(picked.dtype)).sum() / total
        return loss, log_probs.exp_()  # the probabilities are an output so that setup_context can save them

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        scores, targets, weights, total = inputs
        _, probs = output
        _save_with_intermediates(ctx, (probs, targets, weights), (probs,))
        ctx.total, ctx.scores_dtype = total, scores.dtype

    @staticmethod
    @once_differentiable
    @_unless_unused
    def backward(ctx: FunctionCtx, grad_loss: Tensor, _grad_probs: None):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        probs, targets, weights = ctx.saved_tensors
        # d loss / d scores[k] = weights[k] * (probs[k] - onehot(targets[k])) / total, written over probs' copy.
        scale = weights.to(probs.dtype) * (grad_loss / ctx.total)  # (K,) or 0-dim
        row_scale = scale[:, None] if scale.dim() else scale
        grad = probs * row_scale
        grad[torch.arange(probs.shape[0], device=probs.device), targets] -= scale
        return grad.to(ctx.scores_dtype), None, None, None


def weighted_softmax_loss(scores: Tensor, targets: Tensor, weights: Tensor, total: float = 1.0) -> Tensor:
    """The softmax cross-entropy of rows of scores, each weighted, summed and divided by ``total``.

    Args:
        scores: (K, V) unnormalised scores, one row per word.
        targets: (K,) correct token ids in [0, V).
        weights: (K,) one finite weight per row (0 drops a row, a negative one makes its word rarer),
            or a 0-dim tensor weighting every row; no gradient flows into it.
        total: positive number the weighted sum is divided by (e.g. N, or N * T).

    Returns:
        Scalar ``-sum_k weights[k] * log softmax(scores[k])[targets[k]] / total``. Under autocast the
        softmax runs in float32 whatever the scores' dtype (as autocast runs ``cross_entropy``).
    """
    _check_float("scores", scores, 2)
    check_token_ids("targets", targets, scores.shape[1], ndim=1)
    _check_dim("targets", targets, 0, scores.shape[0], "the rows of scores")
    if not isinstance(weights, Tensor) or not weights.is_floating_point() or weights.dim() > 1:
        raise ValueError(f"weights must be a floating-point (K,) or 0-dim tensor, got {weights!r:.80}")
    if weights.dim() == 1:
        _check_dim("weights", weights, 0, scores.shape[0], "the rows of scores")
    if isinstance(total, bool) or not isinstance(total, numbers.Real) or not total > 0:
        raise ValueError(f"total must be a positive number, got {total!r}")
    return _without_autocast(WeightedSoftmaxLoss, scores, targets, weights.detach(), total)[0]


def _ones(like: Tensor) -> Tensor:
    """A 0-dim 1 of like's dtype and device: the weight of every row of an unweighted loss."""
    return torch.ones((), dtype=like.dtype, device=like.device)


def temporal_softmax_loss(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Masked softmax loss over a sequence, as cs231n's ``temporal_softmax_loss``.

    Args:
        x: (N, T, V) scores.
        y: (N, T) correct token ids in [0, V).
        mask: (N, T) bool (or 0/1): which positions count.

    Returns:
        Scalar loss: the masked cross-entropy summed over all timesteps and divided
        by N (not by the number of unmasked tokens).
    """
    _check_float("x", x, 3)
    _check_targets(y, mask, x.shape[:2], x.shape[2])
    N, T, V = x.shape
    weights = mask.reshape(N * T).to(torch.float32 if x.dtype in _HALF_DTYPES else x.dtype)
    return weighted_softmax_loss(x.reshape(N * T, V), y.reshape(N * T), weights, N)


def vocab_softmax_loss(
    hidden: Tensor, W_vocab: Tensor, b_vocab: Tensor, y: Tensor, mask: Tensor, weights: Tensor | None = None
) -> Tensor:
    """``temporal_softmax_loss(temporal_affine(hidden, W_vocab, b_vocab), y, mask)``, scoring counted positions only.

    The K counted positions' hidden states are selected first (:func:`select_rows`), so the
    scores of masked positions are never computed and no (N, T, V) tensor is materialised.

    Args:
        hidden: (N, T, H) hidden states.
        W_vocab: (H, V) vocabulary projection.
        b_vocab: (V,) its bias.
        y: (N, T) correct token ids in [0, V).
        mask: (N, T) bool (or 0/1): which positions count.
        weights: optional (N, T) weight of every position (checked by ``policy_gradient_loss``);
            None weighs every counted position 1.

    Returns:
        Scalar loss, summed over timesteps (each position times its weight) and divided by N.
    """
    _check_affine(("hidden", hidden), ("W_vocab", W_vocab), ("b_vocab", b_vocab))
    _check_targets(y, mask, hidden.shape[:2], W_vocab.shape[1])
    keep = mask.bool()  # (N, T)
    rows = select_rows(hidden, keep)  # (K, H)
    # squeeze, not [0]: indexing's backward would write the (K, V) gradient into a fresh zero tensor.
    scores = temporal_affine(rows[None], W_vocab, b_vocab).squeeze(0)  # (K, V)
    row_weights = _ones(W_vocab) if weights is None else weights[keep]
    return weighted_softmax_loss(scores, y[keep], row_weights, hidden.shape[0])
