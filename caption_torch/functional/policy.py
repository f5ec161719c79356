"""The policy-gradient loss of self-critical training: a masked softmax loss with a weight per caption."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from caption_torch.functional._common import _HALF_DTYPES, _addmm, _apply_autocast, _check_float, _mm
from caption_torch.functional.words import _check_affine, _check_targets, _softmax_loss_grad


class WeightedVocabSoftmaxLoss(torch.autograd.Function):
    """``-sum_n sum_t weights[n, t] * mask[n, t] * log p(y[n, t] | hidden[n, t]) / N``, projection fused in.

    ``forward(hidden (N, T, H), W_vocab (H, V), b_vocab (V,), y (N, T), mask (N, T), weights (N,) or (N, T))``;
    a weight per caption holds for each of its words. As ``VocabSoftmaxLoss``, only the K
    unmasked positions are projected; a weight may be negative (a sample worse than its
    baseline is made less likely).
    """

    @staticmethod
    def forward(ctx, hidden, W_vocab, b_vocab, y, mask, weights):
        keep = mask.bool()  # (N, T)
        scored = hidden[keep]  # (K, H) in (n, t) order
        targets = y[keep]  # (K,)
        row_weights = (weights[:, None].expand_as(keep) if weights.dim() == 1 else weights)[keep]  # (K,)
        scores = _addmm(b_vocab, scored, W_vocab)  # (K, V)
        log_probs = torch.log_softmax(scores, dim=1, dtype=torch.float32 if scores.dtype in _HALF_DTYPES else None)
        picked = log_probs.gather(1, targets[:, None])[:, 0]  # (K,)
        loss = -(picked * row_weights.to(picked.dtype)).sum() / hidden.shape[0]
        ctx.save_for_backward(scored, W_vocab, keep, targets, row_weights, log_probs.exp_())
        ctx.hidden_meta = (hidden.shape, hidden.dtype)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        scored, W_vocab, keep, targets, row_weights, probs = ctx.saved_tensors
        need_hidden, need_W, need_b = ctx.needs_input_grad[:3]
        shape, dtype = ctx.hidden_meta
        scale = (row_weights.to(probs.dtype) * (grad_loss / shape[0]))[:, None]  # (K, 1)
        grad_scores = _softmax_loss_grad(probs, targets, scale).to(scored.dtype)  # (K, V)
        grad_hidden = None
        if need_hidden:
            grad_hidden = torch.zeros(shape, dtype=dtype, device=scored.device)
            grad_hidden[keep] = _mm(grad_scores, W_vocab.T)
        grad_W = _mm(scored.T, grad_scores) if need_W else None
        grad_b = grad_scores.sum(0) if need_b else None
        return grad_hidden, grad_W, grad_b, None, None, None


def policy_gradient_loss(
    hidden: Tensor, W_vocab: Tensor, b_vocab: Tensor, y: Tensor, mask: Tensor, weights: Tensor
) -> Tensor:
    """REINFORCE's loss for sampled captions: their log-likelihood weighted by (reward - baseline).

    Args:
        hidden: (N, T, H) hidden states of N sampled captions (teacher-forced on their own words).
        W_vocab: (H, V), b_vocab: (V,): the vocabulary projection.
        y: (N, T) the sampled words, each in [0, V).
        mask: (N, T) bool (or 0/1): the words that count (each caption's words up to and including <END>).
        weights: (N,) one finite weight per caption, e.g. reward minus baseline, or (N, T) one per word
            (captions packed into rows carry their caption's weight on each word); no gradient flows into it.

    Returns:
        Scalar ``-sum_n sum_t weights mask log p(y) / N``. With all weights 1 this is
        ``vocab_softmax_loss``.
    """
    _check_affine(("hidden", hidden), ("W_vocab", W_vocab), ("b_vocab", b_vocab))
    _check_targets(y, mask, hidden.shape[:2], W_vocab.shape[1])
    if isinstance(weights, Tensor) and weights.dim() == 2:
        _check_float("weights", weights, 2)
        if weights.shape != hidden.shape[:2]:
            raise ValueError(f"weights of every word must be (N, T) = {tuple(hidden.shape[:2])}, "
                             f"got {tuple(weights.shape)}")  # fmt: skip
    else:
        _check_float("weights", weights, 1)
    if weights.shape[0] != hidden.shape[0]:
        raise ValueError(f"weights has {weights.shape[0]} entries but there are {hidden.shape[0]} captions (N)")
    if not bool(torch.isfinite(weights).all()):
        raise ValueError("weights must be finite (a reward or baseline is inf or nan)")
    return _apply_autocast(WeightedVocabSoftmaxLoss, hidden, W_vocab, b_vocab, y, mask, weights.detach(),
                           low_precision=True)  # fmt: skip
