"""The corpus as flat NumPy arrays of n-gram ids, shared by BLEU (:mod:`.bleu`) and CIDEr-D (:mod:`.metrics`).

Instead of one dictionary of n-gram tuples per sentence (pycocoevalcap's way, minutes for
COCO-sized corpora) every n-gram gets an integer id and the whole corpus becomes a few
flat arrays; see :func:`ngram_counts`. Words are what ``str.split()`` gives, as in
pycocoevalcap's BLEU and CIDEr.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["NgramCounts", "check_corpus", "distinct", "ngram_counts", "reference_layout", "tokenize"]


def check_corpus(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Raise ``ValueError`` naming the problem unless there is one caption and >= 1 references per image."""
    if isinstance(candidates, str) or any(not isinstance(c, str) for c in candidates):
        raise ValueError("candidates must be a list of strings, one caption per image")
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists; need one per image")
    if len(candidates) == 0:
        raise ValueError("the corpus is empty")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0 or any(not isinstance(r, str) for r in refs):
            raise ValueError(f"references[{index}] must be a non-empty list of strings")


def reference_layout(references: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """All references in one list, image by image.

    Returns:
        ``(flat, image_of_reference, first_reference)``: the R reference sentences, the
        image of each (R,), and where each image's references start in ``flat`` (N,),
        ready for ``np.<ufunc>.reduceat``.
    """
    refs_per_image = np.array([len(refs) for refs in references])
    image_of_reference = np.repeat(np.arange(len(references)), refs_per_image)
    first_reference = np.cumsum(refs_per_image) - refs_per_image
    return [ref for refs in references for ref in refs], image_of_reference, first_reference


@dataclass(frozen=True)
class NgramCounts:
    """The n-grams of one order in every sentence, as parallel arrays of E entries.

    Entries are sorted by (sentence, gram) and each (sentence, gram) pair appears once.
    """

    sentence: np.ndarray  # (E,) index of the sentence
    gram: np.ndarray  # (E,) id of the n-gram, in [0, num_grams)
    count: np.ndarray  # (E,) how often the n-gram occurs in that sentence
    num_grams: int


def tokenize(sentences: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def ngram_counts(sentences: list[str], max_order: int) -> tuple[list[NgramCounts], np.ndarray]:
    """Count the 1..max_order-grams of every sentence with integer n-gram ids.

    An n-gram starting at token i is identified by the pair (id of the (n-1)-gram
    starting at i, word at i + n - 1); ``np.unique`` over those pairs numbers the
    n-grams of order n without ever building a tuple of strings::

        words      a   cat  on  a   mat
        1-gram id  0   1    2   0   3
        2-gram id  (0,1)=0  (1,2)=1  (2,0)=2  (0,3)=3

    Returns:
        One :class:`NgramCounts` per order (index 0 = unigrams), and the number of
        words of each sentence (S,).
    """
    word_ids, sentence_of_token, position, lengths = tokenize(sentences)
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
        orders.append(NgramCounts(sentence_and_gram // num_grams, sentence_and_gram % num_grams, counts, num_grams))
    return orders, lengths


def distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; like ``np.unique(values)``, which in NumPy >= 2.3 hashes
    instead of sorting and is slower on arrays of millions of int64s (benchmarks/micro.py --groups unique)."""
    values = np.sort(values)
    keep = np.ones(len(values), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]
