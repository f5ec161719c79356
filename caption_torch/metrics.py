"""Caption metrics: corpus BLEU-1..4 (torchmetrics) and CIDEr-D (our own, vectorised).

Every metric takes plain captions, words separated by spaces, without ``<START>``,
``<END>`` or ``<NULL>`` (:func:`caption_text` makes them from token ids)::

    candidates = ["a cat on a mat", ...]                           one per image
    references = [["a cat sits on a mat", "the cat on the mat"], ...]  all of each image

CIDEr-D follows the ``Cider`` scorer of pycocoevalcap 1.2 (the coco-caption code)
number for number; ``tests/test_metrics.py`` compares the two. Per image i, with
reference sentences r_1..r_m and candidate c:

    g_k(s)   TF-IDF vector of the k-grams of s: count(s, g) * (log |images| - log max(1, df(g))),
             df(g) = number of images whose references contain g (candidates do not count)
    sim_k    sum_g min(g_k(c), g_k(r)) * g_k(r) / (|g_k(c)| |g_k(r)|)    (clipped cosine)
    penalty  exp(-(len(c) - len(r))^2 / (2 sigma^2))
    CIDEr-D  10 * mean over r of [ mean over k = 1..4 of sim_k * penalty ]

The corpus score is the mean over images. Instead of one dictionary per sentence
(pycocoevalcap's way, minutes for COCO-sized corpora) every n-gram gets an integer id
and the whole corpus becomes a few flat NumPy arrays; see :func:`_ngram_counts`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.text import BLEUScore

from .vocabulary import END, NULL, START

__all__ = ["strip_special", "caption_text", "bleu_scores", "cider_d_scores", "cider_d", "evaluate_captions"]

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

    ``idx_to_word`` may be a dict or cs231n's list of words (position = id).
    """
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"caption_text takes one caption, a 1-D row of ids; got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    return strip_special([idx_to_word[int(idx)] for idx in ids])


# --------------------------------------------------------------------------- #
# BLEU
# --------------------------------------------------------------------------- #


def bleu_scores(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus-level BLEU-1..4 against all references of each image (torchmetrics ``BLEUScore``).

    BLEU-n is the geometric mean of the clipped 1..n-gram precisions, pooled over the
    corpus, times the brevity penalty exp(1 - r / c) when the candidates are shorter
    in total (c words) than the references closest in length to each of them (r words);
    it is 0 when some order up to n has no match.

    Counting n-grams is the slow part (~10 s for 40k images x 5 references), so one
    ``BLEUScore(n_gram=4)`` counts them once and BLEU-1..3 are finished from its
    per-order counts with the formula of ``BLEUScore(n_gram=n).compute()``
    (``tests/test_metrics.py`` checks that they agree).

    Returns:
        ``{"BLEU-1": ..., "BLEU-4": ...}``, each in [0, 1].
    """
    _check_corpus(candidates, references)
    metric = BLEUScore(n_gram=4)
    metric.update(list(candidates), [list(refs) for refs in references])
    clipped = metric.numerator.double()  # (4,) matched n-grams of each order
    total = metric.denominator.double()  # (4,) candidate n-grams of each order
    candidate_words, reference_words = float(metric.preds_len), float(metric.target_len)
    scores = {}
    for order in range(1, 5):
        if bool((clipped[:order] == 0).any()):  # also every candidate empty: no words, no matches
            scores[f"BLEU-{order}"] = 0.0
        else:
            brevity = 1.0 if candidate_words > reference_words else math.exp(1 - reference_words / candidate_words)
            log_precisions = torch.log(clipped[:order] / total[:order])
            scores[f"BLEU-{order}"] = brevity * math.exp(float(log_precisions.mean()))
    return scores


# --------------------------------------------------------------------------- #
# CIDEr-D
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _NgramCounts:
    """The n-grams of one order in every sentence, as parallel arrays of E entries.

    Entries are sorted by (sentence, gram) and each (sentence, gram) pair appears once.
    """

    sentence: np.ndarray  # (E,) index of the sentence
    gram: np.ndarray  # (E,) id of the n-gram, in [0, num_grams)
    count: np.ndarray  # (E,) how often the n-gram occurs in that sentence
    num_grams: int


def _tokenize(sentences: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flatten the corpus into one array of word ids.

    Returns:
        ``(word_ids, sentence_of_token, position_in_sentence)``, each (total_words,),
        and ``lengths`` (S,), the number of words of each sentence.
    """
    split = [sentence.split() for sentence in sentences]
    lengths = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
    vocabulary: dict[str, int] = {}
    word_ids = np.fromiter(
        (vocabulary.setdefault(word, len(vocabulary)) for word in itertools.chain.from_iterable(split)),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    sentence_of_token = np.repeat(np.arange(len(split)), lengths)
    sentence_starts = np.cumsum(lengths) - lengths
    position_in_sentence = np.arange(len(word_ids)) - sentence_starts[sentence_of_token]
    return word_ids, sentence_of_token, position_in_sentence, lengths


def _ngram_counts(sentences: list[str], max_order: int) -> tuple[list[_NgramCounts], np.ndarray]:
    """Count the 1..max_order-grams of every sentence with integer n-gram ids.

    An n-gram starting at token i is identified by the pair (id of the (n-1)-gram
    starting at i, word at i + n - 1); ``np.unique`` over those pairs numbers the
    n-grams of order n without ever building a tuple of strings::

        words      a   cat  on  a   mat
        1-gram id  0   1    2   0   3
        2-gram id  (0,1)=0  (1,2)=1  (2,0)=2  (0,3)=3

    Returns:
        One :class:`_NgramCounts` per order (index 0 = unigrams), and the number of
        words of each sentence (S,).
    """
    word_ids, sentence_of_token, position, lengths = _tokenize(sentences)
    vocabulary_size = int(word_ids.max()) + 1 if len(word_ids) else 1
    remaining = lengths[sentence_of_token] - position  # words from token i to its sentence's end

    orders = []
    starts = np.arange(len(word_ids))  # tokens where an n-gram of the current order starts
    gram_ids = word_ids  # (len(starts),) id of the n-gram starting at each of them
    num_grams = vocabulary_size
    for order in range(1, max_order + 1):
        if order > 1:
            # Keep the (order-1)-grams that can be extended inside their sentence.
            extendable = remaining[starts] >= order
            starts, previous = starts[extendable], gram_ids[extendable]
            pair = previous * vocabulary_size + word_ids[starts + order - 1]
            unique_pairs, gram_ids = np.unique(pair, return_inverse=True)
            num_grams = max(len(unique_pairs), 1)
        sentence_and_gram, counts = np.unique(sentence_of_token[starts] * num_grams + gram_ids, return_counts=True)
        orders.append(_NgramCounts(sentence_and_gram // num_grams, sentence_and_gram % num_grams, counts, num_grams))
    return orders, lengths


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; like ``np.unique(values)``, which in NumPy >= 2.3 hashes
    instead of sorting and is several times slower on arrays of millions of int64s."""
    values = np.sort(values)
    keep = np.ones(len(values), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


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
    _check_corpus(candidates, references)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if max_order < 1:
        raise ValueError(f"max_order must be at least 1, got {max_order}")
    num_images = len(candidates)
    refs_per_image = np.array([len(refs) for refs in references])
    # Sentences 0..N-1 are the candidates (sentence i is image i's); the references follow.
    sentences = list(candidates) + [ref for refs in references for ref in refs]
    image_of_reference = np.repeat(np.arange(num_images), refs_per_image)  # (R,)
    orders, lengths = _ngram_counts(sentences, max_order)

    similarity = np.zeros((max_order, len(image_of_reference)))  # (max_order, R)
    for order, grams in enumerate(orders):
        is_candidate = grams.sentence < num_images
        ref_sentence = grams.sentence[~is_candidate] - num_images  # reference index in [0, R)
        ref_gram, ref_count = grams.gram[~is_candidate], grams.count[~is_candidate]
        ref_image = image_of_reference[ref_sentence]

        # Document frequency: in how many images' reference sets each n-gram occurs.
        image_and_gram = _distinct(ref_image * grams.num_grams + ref_gram)
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
# Everything at once
# --------------------------------------------------------------------------- #


def evaluate_captions(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D of a corpus: ``{"BLEU-1": ..., ..., "BLEU-4": ..., "CIDEr-D": ...}``."""
    scores = bleu_scores(candidates, references)
    scores["CIDEr-D"] = cider_d(candidates, references)
    return scores


def _check_corpus(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(candidates, str) or any(not isinstance(c, str) for c in candidates):
        raise ValueError("candidates must be a list of strings, one caption per image")
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists; need one per image")
    if len(candidates) == 0:
        raise ValueError("the corpus is empty")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0 or any(not isinstance(r, str) for r in refs):
            raise ValueError(f"references[{index}] must be a non-empty list of strings")
