"""ROUGE-L as the COCO caption evaluation computes it (pycocoevalcap's ``Rouge``), every pair at once.

Per image, with LCS the longest common subsequence of words (split on single spaces):

    P = max over r of LCS(c, r) / |c|,   R = max over r of LCS(c, r) / |r|
    ROUGE-L = (1 + beta^2) P R / (R + beta^2 P),   beta = 1.2   (0 when P or R is 0)

and the corpus score is the mean over images. The LCS table of every (candidate, reference)
pair runs at once instead of one Python loop per pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from caption_torch.metrics.ngrams import check_corpus, reference_layout

__all__ = ["rouge_l", "rouge_l_scores"]


def _word_ids(sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sentences split on single spaces (pycocoevalcap's ROUGE-L: ``""`` is one empty word), as ids.

    Returns:
        ``(ids, lengths)``: (S, L) word ids padded with -1, and (S,) the number of words.
    """
    vocabulary: dict[str, int] = {}
    split = [[vocabulary.setdefault(word, len(vocabulary)) for word in sentence.split(" ")] for sentence in sentences]
    lengths = np.array([len(words) for words in split], dtype=np.int64)
    ids = np.full((len(split), int(lengths.max(initial=1))), -1, dtype=np.int64)
    ids[np.arange(len(split)).repeat(lengths), np.concatenate([np.arange(n) for n in lengths])] = np.concatenate(split)
    return ids, lengths


def _lcs_lengths(first: np.ndarray, first_lengths: np.ndarray, second: np.ndarray, second_lengths: np.ndarray):
    """Length of the longest common subsequence of P pairs of word-id rows, all pairs at once.

    The usual table L[i, j] = L[i-1, j-1] + 1 if first[i] == second[j] else max(L[i-1, j], L[i, j-1]),
    one row i at a time, every pair in the same step; padding never matches (-1 against -2).

    Args:
        first, second: (P, L1) and (P, L2) word ids, padded.
        first_lengths, second_lengths: (P,) true lengths.

    Returns:
        (P,) int64 LCS lengths.
    """
    second = np.where(second < 0, -2, second).T  # (L2, P): row j is word j of every pair
    previous = np.zeros((second.shape[0] + 1, second.shape[1]), dtype=np.int64)  # (L2 + 1, P): L[i-1, :]
    result = np.zeros(len(first_lengths), dtype=np.int64)
    pairs = np.arange(len(first_lengths))
    for i in range(first.shape[1]):
        same = second == first[:, i]  # (L2, P)
        current = np.zeros_like(previous)
        for j in range(second.shape[0]):
            current[j + 1] = np.where(same[j], previous[j] + 1, np.maximum(previous[j + 1], current[j]))
        ends_here = first_lengths == i + 1
        result[ends_here] = current[second_lengths[ends_here], pairs[ends_here]]
        previous = current
    return result


def rouge_l_scores(candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> np.ndarray:
    """ROUGE-L of each image (pycocoevalcap's ``Rouge().compute_score`` second output).

    Returns:
        (N,) float64 scores in [0, 1].
    """
    check_corpus(candidates, references)
    flat_references, image_of_reference, first_reference = reference_layout(references)
    ids, lengths = _word_ids(list(candidates) + flat_references)
    num_images = len(candidates)
    candidate_ids, candidate_lengths = ids[:num_images][image_of_reference], lengths[:num_images][image_of_reference]
    reference_lengths = lengths[num_images:]
    lcs = _lcs_lengths(candidate_ids, candidate_lengths, ids[num_images:], reference_lengths)  # (R,)
    precision = np.maximum.reduceat(lcs / candidate_lengths.astype(np.float64), first_reference)  # (N,)
    recall = np.maximum.reduceat(lcs / reference_lengths.astype(np.float64), first_reference)
    # pycocoevalcap's order of operations, so that the scores agree to the last bit.
    numerator = (1 + beta**2) * precision * recall
    denominator = recall + beta**2 * precision
    matched = (precision != 0) & (recall != 0)
    return np.divide(numerator, denominator, out=np.zeros(num_images), where=matched)


def rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus ROUGE-L: the mean of :func:`rouge_l_scores`."""
    return float(np.mean(rouge_l_scores(candidates, references)))
