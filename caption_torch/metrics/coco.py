"""Caption metrics of the COCO caption evaluation: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.

Every metric takes plain captions, words separated by spaces, without ``<START>``,
``<END>`` or ``<NULL>`` (:func:`caption_text` makes them from token ids)::

    candidates = ["a cat on a mat", ...]                           one per image
    references = [["a cat sits on a mat", "the cat on the mat"], ...]  all of each image

Each equals its scorer in pycocoevalcap 1.2 (the coco-caption code) number for number;
``tests/test_metrics.py`` compares them. BLEU lives in :mod:`.bleu`; METEOR runs
pycocoevalcap's own jar (it needs ``java``); ROUGE-L and CIDEr-D are computed here.

CIDEr-D, per image i, with reference sentences r_1..r_m and candidate c:

    g_k(s)   TF-IDF vector of the k-grams of s: count(s, g) * (log |images| - log max(1, df(g))),
             df(g) = number of images whose references contain g (candidates do not count)
    sim_k    sum_g min(g_k(c), g_k(r)) * g_k(r) / (|g_k(c)| |g_k(r)|)    (clipped cosine)
    penalty  exp(-(len(c) - len(r))^2 / (2 sigma^2))
    CIDEr-D  10 * mean over r of [ mean over k = 1..4 of sim_k * penalty ]

ROUGE-L, per image: with LCS the longest common subsequence of words,

    P = max over r of LCS(c, r) / |c|,   R = max over r of LCS(c, r) / |r|
    ROUGE-L = (1 + beta^2) P R / (R + beta^2 P),   beta = 1.2   (0 when P or R is 0)

Corpus CIDEr-D and ROUGE-L are the means over images. The n-gram metrics count with
integer n-gram ids over flat arrays (:mod:`.ngrams`), and ROUGE-L runs the LCS table of
every (candidate, reference) pair at once instead of one Python loop per pair.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from caption_torch.metrics.bleu import bleu_scores, bleu_scores_per_image
from caption_torch.metrics.ngrams import check_corpus, distinct, ngram_counts, reference_layout
from caption_torch.vocabulary import END, NULL, START

__all__ = [
    "strip_special",
    "caption_text",
    "bleu_scores",
    "bleu_scores_per_image",
    "cider_d_scores",
    "cider_d",
    "rouge_l_scores",
    "rouge_l",
    "meteor",
    "meteor_unavailable",
    "MetricUnavailable",
    "evaluate_captions",
    "scores_per_image",
    "COCO_METRICS",
]

# The order of the COCO caption evaluation's table.
COCO_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")

# <UNK> is a real (if unhelpful) word of a generated caption, so it is kept.
SKIPPED_TOKENS = frozenset({START, NULL})


# --------------------------------------------------------------------------- #
# From token ids to the plain text the metrics compare
# --------------------------------------------------------------------------- #


def strip_special(tokens_or_string: str | Sequence[str]) -> str:
    """The plain caption: words up to the first ``<END>``, without ``<START>`` / ``<NULL>``.

    Args:
        tokens_or_string: a list of words, or one string of space-separated words
            (for instance cs231n's ``decode_captions`` output ``"<START> a cat <END>"``).

    Returns:
        The remaining words joined by single spaces, e.g. ``"a cat"``.
    """
    words = tokens_or_string.split() if isinstance(tokens_or_string, str) else tokens_or_string
    kept = []
    for word in words:
        if word == END:
            break
        if word not in SKIPPED_TOKENS:
            kept.append(word)
    return " ".join(kept)


def caption_text(ids: torch.Tensor | Sequence[int], idx_to_word: Mapping[int, str] | Sequence[str]) -> str:
    """Turn one row of token ids (T,) into its plain caption, as :func:`strip_special` does.

    ``idx_to_word`` may be any mapping ``{id: word}`` (ids need not be contiguous) or
    cs231n's list of words (position = id). An id it lacks is a ``ValueError`` naming it.
    """
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"caption_text takes one caption, a 1-D row of ids; got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    try:
        words = [idx_to_word[int(idx)] for idx in ids]
    except (KeyError, IndexError):
        missing = next(int(idx) for idx in ids if not _has_id(idx_to_word, int(idx)))
        raise ValueError(f"token id {missing} is not in the vocabulary ({len(idx_to_word)} words)") from None
    return strip_special(words)


def _has_id(idx_to_word: Mapping[int, str] | Sequence[str], idx: int) -> bool:
    if isinstance(idx_to_word, Mapping):
        return idx in idx_to_word
    return 0 <= idx < len(idx_to_word)


# --------------------------------------------------------------------------- #
# CIDEr-D
# --------------------------------------------------------------------------- #


def cider_d_scores(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    sigma: float = 6.0,
    max_order: int = 4,
) -> np.ndarray:
    """CIDEr-D of each image; document frequencies come from the references of this corpus.

    Args:
        candidates: N generated captions, one per image.
        references: N lists of reference captions (at least one per image).
        sigma: width of the gaussian length penalty.
        max_order: n-grams of orders 1..max_order are compared.

    Returns:
        (N,) float64 scores (pycocoevalcap's ``Cider().compute_score`` second output).
    """
    check_corpus(candidates, references)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if max_order < 1:
        raise ValueError(f"max_order must be at least 1, got {max_order}")
    num_images = len(candidates)
    refs_per_image = np.array([len(refs) for refs in references])
    # Sentences 0..N-1 are the candidates (sentence i is image i's); the references follow.
    sentences = list(candidates) + [ref for refs in references for ref in refs]
    image_of_reference = np.repeat(np.arange(num_images), refs_per_image)  # (R,)
    orders, lengths = ngram_counts(sentences, max_order)

    similarity = np.zeros((max_order, len(image_of_reference)))  # (max_order, R)
    for order, grams in enumerate(orders):
        is_candidate = grams.sentence < num_images
        ref_sentence = grams.sentence[~is_candidate] - num_images  # reference index in [0, R)
        ref_gram, ref_count = grams.gram[~is_candidate], grams.count[~is_candidate]
        ref_image = image_of_reference[ref_sentence]

        # Document frequency: in how many images' reference sets each n-gram occurs.
        image_and_gram = distinct(ref_image * grams.num_grams + ref_gram)
        document_frequency = np.bincount(image_and_gram % grams.num_grams, minlength=grams.num_grams)
        idf = np.log(num_images) - np.log(np.maximum(document_frequency, 1))  # (num_grams,)

        # Norms of the TF-IDF vectors; n-grams absent from all references still count
        # in the candidate's norm (with df = 1, i.e. the largest idf).
        weights = grams.count * idf[grams.gram]
        norms_squared = np.bincount(grams.sentence, weights * weights, minlength=len(sentences))
        norms = np.sqrt(norms_squared)
        candidate_norm, reference_norm = norms[:num_images], norms[num_images:]

        # Clipped dot product, only over n-grams shared by a candidate and a reference
        # of the same image: join on the key (image, gram). Candidate keys are already
        # sorted because the entries are sorted by (sentence, gram).
        candidate_keys = grams.sentence[is_candidate] * grams.num_grams + grams.gram[is_candidate]
        candidate_count = grams.count[is_candidate]
        reference_keys = ref_image * grams.num_grams + ref_gram
        where = np.searchsorted(candidate_keys, reference_keys).clip(max=max(len(candidate_keys) - 1, 0))
        shared = (candidate_keys[where] == reference_keys) if len(candidate_keys) else np.zeros(0, bool)
        # min(c * idf, r * idf) * r * idf == min(c, r) * r * idf^2 because idf >= 0.
        clipped = np.minimum(candidate_count[where[shared]], ref_count[shared]) * ref_count[shared]
        dot = np.bincount(
            ref_sentence[shared], clipped * idf[ref_gram[shared]] ** 2, minlength=len(image_of_reference)
        ).astype(np.float64)  # bincount of no entries comes back as int64
        denominator = candidate_norm[image_of_reference] * reference_norm
        # A zero norm means a zero vector, whose dot product is zero as well.
        similarity[order] = np.divide(dot, denominator, out=np.zeros_like(dot), where=denominator != 0)

    # pycocoevalcap measures length in bigrams (words - 1), which gives the same difference
    # unless a caption is empty - and then its similarity is 0 anyway.
    delta = (lengths[:num_images][image_of_reference] - lengths[num_images:]).astype(np.float64)
    penalty = np.exp(-(delta**2) / (2 * sigma**2))  # (R,)
    per_reference = similarity.mean(axis=0) * penalty
    return 10.0 * np.bincount(image_of_reference, per_reference, minlength=num_images) / refs_per_image


def cider_d(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    sigma: float = 6.0,
    max_order: int = 4,
) -> float:
    """Corpus CIDEr-D: the mean of :func:`cider_d_scores` (about 0 to 10; COCO models score ~1)."""
    return float(cider_d_scores(candidates, references, sigma=sigma, max_order=max_order).mean())


# --------------------------------------------------------------------------- #
# ROUGE-L
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# METEOR
# --------------------------------------------------------------------------- #


class MetricUnavailable(RuntimeError):
    """A metric that cannot run on this machine (METEOR without java or pycocoevalcap)."""


def meteor_unavailable() -> str | None:
    """Why METEOR cannot run here, in a few words, or None when it can."""
    if shutil.which("java") is None:
        return "java is not on the PATH (e.g. apt-get install default-jre-headless)"
    try:
        import pycocoevalcap.meteor.meteor  # noqa: F401
    except ImportError:
        return "pycocoevalcap is not installed (pip install pycocoevalcap)"
    return None


def meteor(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR 1.5 from pycocoevalcap's own jar (its ``Meteor().compute_score`` first output).

    METEOR aligns words also through stems and paraphrase tables that only the jar has,
    so it is run rather than reimplemented. Raises :class:`MetricUnavailable` with the
    reason when java or pycocoevalcap is missing, or the jar fails.
    """
    check_corpus(candidates, references)
    reason = meteor_unavailable()
    if reason is not None:
        raise MetricUnavailable(reason)
    from pycocoevalcap.meteor.meteor import Meteor

    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [candidate] for i, candidate in enumerate(candidates)}
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    except (ValueError, OSError) as error:  # the jar died: its answer is an empty line or a broken pipe
        raise MetricUnavailable(f"the METEOR jar failed ({error})") from None
    return float(score)


# --------------------------------------------------------------------------- #
# Everything at once
# --------------------------------------------------------------------------- #


def evaluate_captions(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    with_meteor: bool = True,
    notice: Callable[[str], None] | None = None,
) -> dict[str, float | None]:
    """The COCO table, in its order (:data:`COCO_METRICS`): ``{"BLEU-1": ..., "METEOR": ..., "CIDEr-D": ...}``.

    METEOR is None when not asked for, or when it cannot run; then ``notice`` (if given)
    gets one line saying why, and the other scores are still computed.
    """
    scores: dict[str, float | None] = dict(bleu_scores(candidates, references))
    scores["METEOR"] = None
    if with_meteor:
        try:
            scores["METEOR"] = meteor(candidates, references)
        except MetricUnavailable as reason:
            if notice is not None:
                notice(f"METEOR skipped: {reason}")
    scores["ROUGE-L"] = rouge_l(candidates, references)
    scores["CIDEr-D"] = cider_d(candidates, references)
    return scores


def scores_per_image(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """Per-image CIDEr-D and BLEU-4 (for browsing results): ``{"CIDEr-D": (N,), "BLEU-4": (N,)}``."""
    return {"CIDEr-D": cider_d_scores(candidates, references),
            "BLEU-4": bleu_scores_per_image(candidates, references)[:, 3]}  # fmt: skip
