"""Words in and out: the embedding lookup, the vocabulary projection and the masked softmax loss."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from caption_torch.functional._common import (
    _HALF_DTYPES,
    _addmm,
    _apply_autocast,
    _check_dim,
    _check_float,
    _check_same_dtype,
    _check_token_ids,
    _mm,
)

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
    _check_token_ids("x", x, W.shape[0], ndim=2)
    return WordEmbedding.apply(x, W)


# --------------------------------------------------------------------------- #
# Vocabulary projection and loss
# --------------------------------------------------------------------------- #


class TemporalAffine(torch.autograd.Function):
    """``out[n, t] = x[n, t] @ w + b`` as one GEMM over all N*T rows."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        N, T, D = x.shape
        return _addmm(b, x.reshape(N * T, D), w).view(N, T, w.shape[1])

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple, output: Tensor) -> None:
        x, w, _ = inputs
        ctx.save_for_backward(x, w)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):
        x, w = ctx.saved_tensors
        N, T, D = x.shape
        grad_flat = grad_out.reshape(N * T, w.shape[1])
        grad_x = _mm(grad_flat, w.T).view(N, T, D) if ctx.needs_input_grad[0] else None
        grad_w = _mm(x.reshape(N * T, D).T, grad_flat) if ctx.needs_input_grad[1] else None
        grad_b = grad_flat.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


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
    return _apply_autocast(TemporalAffine, x, w, b, low_precision=True)


def _check_affine(x: tuple[str, Tensor], w: tuple[str, Tensor], b: tuple[str, Tensor]) -> None:
    """(name, tensor) pairs of an affine map's input (N, T, D), weights (D, M) and bias (M,)."""
    (x_name, x_value), (w_name, w_value), (b_name, b_value) = x, w, b
    _check_float(x_name, x_value, 3)
    _check_float(w_name, w_value, 2)
    _check_float(b_name, b_value, 1)
    _check_same_dtype(**{x_name: x_value, w_name: w_value, b_name: b_value})
    _check_dim(w_name, w_value, 0, x_value.shape[2], f"the width of {x_name}")
    _check_dim(b_name, b_value, 0, w_value.shape[1], f"the output width of {w_name}")


def _softmax_loss_grad(probs: Tensor, targets: Tensor, scale: Tensor) -> Tensor:
    """Gradient of ``scale * NLL`` w.r.t. the scores: ``(probs - onehot(targets)) * scale``.

    Args:
        probs: (K, V) softmax probabilities (left untouched: backward may run twice).
        targets: (K,) correct token ids.
        scale: scalar, or (K, 1) per-row weights.
    """
    grad = probs * scale
    rows = torch.arange(probs.shape[0], device=probs.device)
    row_scale = scale.reshape(-1) if scale.dim() > 0 else scale
    grad[rows, targets] -= row_scale
    return grad


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


class TemporalSoftmaxLoss(torch.autograd.Function):
    """Masked softmax cross-entropy summed over timesteps and divided by N."""

    @staticmethod
    def forward(ctx, x, y, mask):
        N, T, V = x.shape
        keep = mask.reshape(N * T, 1).to(x.dtype)
        targets = y.reshape(N * T)
        # ATen's kernel subtracts the row max (finite for scores in the thousands) in one
        # pass over the rows, instead of six ops each reading the block (benchmarks/micro.py --groups softmax).
        log_probs = torch.log_softmax(x.reshape(N * T, V), dim=1)
        loss = -(log_probs.gather(1, targets[:, None]) * keep).sum() / N
        ctx.save_for_backward(log_probs.exp_(), targets, keep)  # probs, (N*T, V)
        ctx.batch_size = N
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        probs, targets, keep = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        N = ctx.batch_size
        grad = _softmax_loss_grad(probs, targets, keep * (grad_loss / N))
        return grad.view(N, -1, probs.shape[1]), None, None


class VocabSoftmaxLoss(torch.autograd.Function):
    """``temporal_affine`` followed by ``temporal_softmax_loss``, fused.

    Only the K unmasked positions are scored: padding after ``<END>`` never reaches
    the (N*T, H) @ (H, V) product, which is the largest GEMM of the model. Saves
    the (K, H) scored hidden states and the (K, V) probabilities.
    """

    @staticmethod
    def forward(ctx, hidden, W_vocab, b_vocab, y, mask):
        keep = mask.bool()  # (N, T)
        # Boolean indexing reads the K scored rows in (n, t) order from any strides: the
        # time-major view that rnn/lstm return is not copied whole.
        scored = hidden[keep]  # (K, H)
        targets = y[keep]  # (K,)
        # The product may be bf16/fp16 under autocast; the softmax and the loss are float32.
        scores = _addmm(b_vocab, scored, W_vocab)  # (K, V)
        log_probs = torch.log_softmax(scores, dim=1, dtype=torch.float32 if scores.dtype in _HALF_DTYPES else None)
        loss = -log_probs.gather(1, targets[:, None]).sum() / hidden.shape[0]
        ctx.save_for_backward(scored, W_vocab, keep, targets, log_probs.exp_())
        # Only hidden's layout is needed for its gradient: keeping the tensor would hold (N*T, H) until backward.
        # Its strides are reused only if each element has its own place (not for an expanded view).
        stride = hidden.stride() if _is_dense(hidden) else None
        ctx.hidden_layout = (hidden.shape, stride, hidden.dtype, hidden.device)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        scored, W_vocab, keep, targets, probs = ctx.saved_tensors
        need_hidden, need_W, need_b = ctx.needs_input_grad[:3]
        shape, stride, dtype, device = ctx.hidden_layout
        grad_scores = _softmax_loss_grad(probs, targets, grad_loss / shape[0]).to(scored.dtype)  # (K, V)
        grad_hidden = None
        if need_hidden:
            # hidden's own strides (time-major from rnn/lstm), so the gradient has the layout they expect.
            if stride is None:
                grad_hidden = torch.zeros(shape, dtype=dtype, device=device)
            else:
                grad_hidden = torch.empty_strided(shape, stride, dtype=dtype, device=device).zero_()
            grad_hidden[keep] = _mm(grad_scores, W_vocab.T)  # (K, H) into the scored positions
        grad_W = _mm(scored.T, grad_scores) if need_W else None
        grad_b = grad_scores.sum(0) if need_b else None
        return grad_hidden, grad_W, grad_b, None, None


def _check_targets(y: Tensor, mask: Tensor, batch_shape: tuple, vocab_size: int) -> None:
    """Targets y and mask must both be (N, T) with N >= 1; y must hold ids in [0, V), mask 0s and 1s."""
    _check_token_ids("y", y, vocab_size, ndim=2)
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
    return _apply_autocast(TemporalSoftmaxLoss, x, y, mask, low_precision=False)


def vocab_softmax_loss(hidden: Tensor, W_vocab: Tensor, b_vocab: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """``temporal_softmax_loss(temporal_affine(hidden, W_vocab, b_vocab), y, mask)`` in one Function.

    Equal to the two-Function composition (tested), but the scores of masked
    positions are never computed and no (N, T, V) tensor is materialised.

    Args:
        hidden: (N, T, H) hidden states.
        W_vocab: (H, V) vocabulary projection.
        b_vocab: (V,) its bias.
        y: (N, T) correct token ids in [0, V).
        mask: (N, T) bool (or 0/1): which positions count.

    Returns:
        Scalar loss, summed over timesteps and divided by N.
    """
    _check_affine(("hidden", hidden), ("W_vocab", W_vocab), ("b_vocab", b_vocab))
    _check_targets(y, mask, hidden.shape[:2], W_vocab.shape[1])
    return _apply_autocast(VocabSoftmaxLoss, hidden, W_vocab, b_vocab, y, mask, low_precision=True)
