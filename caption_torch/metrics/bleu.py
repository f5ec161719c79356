"""BLEU-1..4 as the COCO caption evaluation computes it (pycocoevalcap's ``Bleu(4)``), vectorised.

Per image i, with candidate c_i and references r_i1..r_im (words as ``str.split()`` gives):

    matches_ik     k-grams of c_i, each counted at most as often as in the one reference
                   of image i that has it most often ("clipped")
    ngrams_ik      max(0, |c_i| - k + 1), the k-grams of c_i
    ref_length_i   the |r_ij| closest to |c_i|; on a tie the shorter one

and the corpus score pools the counts over images before dividing:

    p_k     = (sum_i matches_ik + 1e-15) / (sum_i ngrams_ik + 1e-9)
    BLEU-n  = (p_1 ... p_n)^(1/n) * min(1, exp(1 - R / C)),   C = sum_i |c_i|, R = sum_i ref_length_i

(C and R also get the 1e-15 and 1e-9 of pycocoevalcap in the ratio C / R.) The constants make
an order without matches give a tiny BLEU rather than a zero or a division by zero.
Per image, the same formula on that image's counts alone is pycocoevalcap's per-image BLEU.

Every count is a sum over images, so :class:`CocoBLEUScore` keeps sums as its states:
summed across processes, they give a one-process score exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics import Metric

from caption_torch.functional.checks import check_positive_integer
from caption_torch.metrics.ngrams import (
    Sentences,
    check_corpus,
    ngram_counts,
    pair_codes,
    reference_layout,
    runs_of,
)

__all__ = ["BleuCounts", "CocoBLEUScore", "bleu_counts", "bleu_scores", "bleu_scores_per_image"]

MAX_ORDER = 4
# pycocoevalcap's smoothing: numerators get TINY, denominators SMALL, so 0 matches give ~1e-6, not 0/0.
TINY = 1e-15
SMALL = 1e-9


@dataclass(frozen=True)
class BleuCounts:
    """What BLEU needs to know about each of N images."""

    matches: np.ndarray  # (N, max_order) clipped n-gram matches of each order
    ngrams: np.ndarray  # (N, max_order) n-grams of each order in the candidate
    candidate_length: np.ndarray  # (N,) words of the candidate
    reference_length: np.ndarray  # (N,) words of the reference closest in length (the shorter on a tie)


def bleu_counts(
    candidates: Sequence[str], references: Sequence[Sequence[str]], max_order: int = MAX_ORDER
) -> BleuCounts:
    """Count clipped matches, n-grams and lengths of every image at once.

    Args:
        candidates: N generated captions, one per image.
        references: N lists of reference captions (at least one per image).
        max_order: n-grams of orders 1..max_order are counted.

    Returns:
        :class:`BleuCounts` with (N, max_order) and (N,) int64 arrays.
    """
    check_corpus(candidates, references)
    check_positive_integer("max_order", max_order)
    num_images = len(candidates)
    flat_references, image_of_reference, first_reference = reference_layout(references)
    # Sentences 0..N-1 are the candidates (sentence i is image i's); the references follow.
    sentences, vocab_size = Sentences.from_text([*candidates, *flat_references])

    matches = np.zeros((num_images, max_order), dtype=np.int64)
    for order, grams in enumerate(ngram_counts(sentences, max_order, vocab_size)):
        is_candidate = grams.sentence < num_images
        # Largest count of each n-gram in any one reference of the image, per (image, key).
        reference_image = image_of_reference[grams.sentence[~is_candidate] - num_images]
        reference_key, reference_count = grams.key[~is_candidate], grams.count[~is_candidate]
        if len(reference_key) == 0:  # every reference empty: nothing can match
            continue
        # Candidate i is image i: its (image, key) codes join the references' (image, key) codes.
        candidate_pairs, reference_pairs = pair_codes(
            (grams.sentence[is_candidate], grams.key[is_candidate]), (reference_image, reference_key)
        ).codes
        by_pair, first = runs_of(reference_pairs)
        reference_pairs, most = reference_pairs[by_pair[first]], np.maximum.reduceat(reference_count[by_pair], first)
        where = np.searchsorted(reference_pairs, candidate_pairs).clip(max=len(reference_pairs) - 1)
        found = reference_pairs[where] == candidate_pairs
        clipped = np.where(found, np.minimum(grams.count[is_candidate], most[where]), 0)
        matches[:, order] = np.bincount(grams.sentence[is_candidate], clipped, minlength=num_images).astype(np.int64)

    candidate_length = sentences.lengths[:num_images]
    reference_lengths = sentences.lengths[num_images:]
    # "Closest" reference length, the shorter on a tie: the smallest (distance, length) pair,
    # packed into one integer so that one reduceat per image finds it.
    base = int(reference_lengths.max(initial=0)) + 1
    distance = np.abs(reference_lengths - candidate_length[image_of_reference])
    reference_length = np.minimum.reduceat(distance * base + reference_lengths, first_reference) % base

    orders_range = np.arange(1, max_order + 1)
    ngrams = np.maximum(candidate_length[:, None] - orders_range + 1, 0)  # (N, max_order)
    return BleuCounts(matches, ngrams, candidate_length, reference_length)


def _bleu_from_sums(matches, ngrams, candidate_length, reference_length) -> list[float]:
    """BLEU-1..max_order from corpus sums, in pycocoevalcap's order of operations (Python floats)."""
    scores, product = [], 1.0
    for order, (matched, total) in enumerate(zip(matches, ngrams), start=1):
        product *= float(matched + TINY) / (total + SMALL)
        scores.append(product ** (1.0 / order))
    ratio = (candidate_length + TINY) / (reference_length + SMALL)
    brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    return [score * brevity for score in scores]


def bleu_scores(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 equal to pycocoevalcap's ``Bleu(4).compute_score`` first output.

    Returns:
        ``{"BLEU-1": ..., "BLEU-4": ...}``, each in [0, 1].
    """
    counts = bleu_counts(candidates, references)
    scores = _bleu_from_sums(counts.matches.sum(0).tolist(), counts.ngrams.sum(0).tolist(),
                             int(counts.candidate_length.sum()), int(counts.reference_length.sum()))  # fmt: skip
    return {f"BLEU-{order}": score for order, score in enumerate(scores, start=1)}


def bleu_scores_per_image(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """BLEU-1..4 of each image on its own, pycocoevalcap's per-image list (its second output).

    Returns:
        (N, 4) float64; column n-1 is BLEU-n.
    """
    counts = bleu_counts(candidates, references)
    precisions = (counts.matches + TINY) / (counts.ngrams + SMALL)  # (N, 4)
    orders = np.arange(1, MAX_ORDER + 1)
    scores = np.cumprod(precisions, axis=1) ** (1.0 / orders)
    ratio = (counts.candidate_length + TINY) / (counts.reference_length + SMALL)  # (N,)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return scores * brevity[:, None]


class CocoBLEUScore(Metric):
    """Corpus BLEU-``n_gram`` as pycocoevalcap computes it, accumulated over batches and processes.

    ``update(candidates, references)`` takes plain captions as :func:`bleu_scores`;
    ``compute()`` returns the scalar BLEU-``n_gram``. The states are per-order sums of
    matches and n-grams and the two length sums, so ``dist_reduce_fx="sum"`` makes a
    sharded validation equal one process's.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, n_gram: int = MAX_ORDER, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 1 <= n_gram <= MAX_ORDER:
            raise ValueError(f"n_gram must be in 1..{MAX_ORDER}, got {n_gram}")
        self.n_gram = n_gram
        # int64: the counts are integers and their sums stay exact on every backend.
        self.add_state("matches", torch.zeros(n_gram, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("ngrams", torch.zeros(n_gram, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("candidate_length", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("reference_length", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        counts = bleu_counts(candidates, references, max_order=self.n_gram)
        self.matches += torch.from_numpy(counts.matches.sum(0)).to(self.matches.device)
        self.ngrams += torch.from_numpy(counts.ngrams.sum(0)).to(self.ngrams.device)
        self.candidate_length += int(counts.candidate_length.sum())
        self.reference_length += int(counts.reference_length.sum())

    def compute(self) -> torch.Tensor:
        scores = _bleu_from_sums(self.matches.tolist(), self.ngrams.tolist(),
                                 int(self.candidate_length), int(self.reference_length))  # fmt: skip
        return torch.tensor(scores[-1], dtype=torch.float64)
