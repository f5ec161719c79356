"""The policy-gradient loss of self-critical training: the vocabulary softmax loss with a weight per caption or word."""

from __future__ import annotations

import torch
from torch import Tensor

from caption_torch.functional._common import _check_float
from caption_torch.functional.words import vocab_softmax_loss


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
        Scalar ``-sum_n sum_t weights mask log p(y) / N`` (:func:`vocab_softmax_loss` with weights;
        a weight may be negative: a sample worse than its baseline is made less likely). With all
        weights 1 this is ``vocab_softmax_loss``.
    """
    _check_float("hidden", hidden, 3)
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
    per_word = weights if weights.dim() == 2 else weights[:, None].expand(hidden.shape[:2])  # (N, T)
    return vocab_softmax_loss(hidden, W_vocab, b_vocab, y, mask, per_word.detach())
