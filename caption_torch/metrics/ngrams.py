"""Captions as flat arrays of word ids, and their n-grams as int64 keys: the one n-gram counting of BLEU
(:mod:`.bleu`) and CIDEr-D (:mod:`.cider`).

Instead of one dictionary of n-gram tuples per sentence (pycocoevalcap's way, minutes for
COCO-sized corpora) a corpus is a few flat arrays (:class:`Sentences`), and an n-gram of
word ids w_1 .. w_n in a vocabulary of V words is one integer,

    key(w_1 .. w_n) = ((w_1 * V + w_2) * V + ...) * V + w_n

the same in every batch, so keys counted once over a corpus (CIDEr-D's document
frequencies) can be looked up later. Every join is a sort and a ``searchsorted``.
Text enters through :meth:`Sentences.from_text`: words are what ``str.split()`` gives,
as in pycocoevalcap's BLEU and CIDEr.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from caption_torch.functional.checks import check_positive_integer

__all__ = ["NgramCounts", "PairCodes", "Sentences", "check_corpus", "check_key_range", "distinct", "ngram_counts",
           "pair_codes", "reference_layout", "runs_of"]  # fmt: skip


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


def check_key_range(vocab_size: int, max_order: int) -> None:
    """Raise ``ValueError`` unless every n-gram key of orders up to ``max_order`` fits an int64."""
    check_positive_integer("vocab_size", vocab_size)
    check_positive_integer("max_order", max_order)
    if float(vocab_size) ** max_order >= 2**62:
        raise ValueError(f"{max_order}-grams of a {vocab_size}-word vocabulary do not fit an int64 key")


# Not whitespace for str.split(), and not a word of any caption (checked: from_text counts the breaks).
_CAPTION_BREAK = "\x00"


@dataclass(frozen=True)
class Sentences:
    """Captions as word ids, flattened: ``words`` (total,) concatenated, ``lengths`` (S,) words per caption."""

    words: np.ndarray
    lengths: np.ndarray

    @classmethod
    def from_ids(cls, ids: torch.Tensor | np.ndarray, end_id: int, skipped_ids: Sequence[int]) -> Sentences:
        """The words of (S, L) id rows: up to the first ``end_id``, without ``skipped_ids`` (<START>, <NULL>).

        This is :func:`caption_torch.metrics.coco.caption_text` on ids: the same words, in the same order.
        """
        ids = torch.as_tensor(ids).cpu().numpy().astype(np.int64, copy=False)
        before_end = np.cumsum(ids == end_id, axis=1) == 0  # (S, L)
        keep = before_end & ~np.isin(ids, np.asarray(skipped_ids, dtype=np.int64))
        return cls(ids[keep], keep.sum(axis=1))

    @classmethod
    def from_lists(cls, captions: Sequence[Sequence[int]]) -> Sentences:
        """Captions given as lists of word ids (already without special tokens)."""
        lengths = np.fromiter(map(len, captions), dtype=np.int64, count=len(captions))
        words = np.fromiter((w for caption in captions for w in caption), dtype=np.int64, count=int(lengths.sum()))
        return cls(words, lengths)

    @classmethod
    def from_text(cls, sentences: Sequence[str]) -> tuple[Sentences, int]:
        """Plain captions (words as ``str.split()`` gives) numbered in order of first appearance.

        Returns:
            ``(sentences, V)``: the S captions as ids, and V, the number of distinct words (>= 1).
        """
        # One split of the captions joined by a word of their own costs far less than one split per caption.
        tokens = f" {_CAPTION_BREAK} ".join(sentences).split()
        # dict.fromkeys keeps the order of first appearance; map(dict.__getitem__) runs without a Python frame.
        vocabulary = {word: index for index, word in enumerate(dict.fromkeys(tokens))}
        ids = np.fromiter(map(vocabulary.__getitem__, tokens), dtype=np.int64, count=len(tokens))
        breaks = vocabulary.get(_CAPTION_BREAK, -1)
        is_break = ids == breaks
        ends = np.flatnonzero(is_break)
        if len(ends) != len(sentences) - 1:  # no caption, or a caption holds the break word itself
            split = [sentence.split() for sentence in sentences]
            lengths = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
            vocabulary = {word: index for index, word in enumerate(dict.fromkeys(itertools.chain.from_iterable(split)))}
            words = np.fromiter(map(vocabulary.__getitem__, itertools.chain.from_iterable(split)), dtype=np.int64,
                                count=int(lengths.sum()))  # fmt: skip
            return cls(words, lengths), max(len(vocabulary), 1)
        lengths = np.diff(np.concatenate(([-1], ends, [len(ids)]))) - 1
        words = ids[~is_break]
        if breaks >= 0:  # number the words as if the break word were not there
            words -= words > breaks
        return cls(words, lengths), max(len(vocabulary) - (breaks >= 0), 1)

    def __len__(self) -> int:
        return len(self.lengths)

    def split(self, count: int) -> tuple[Sentences, Sentences]:
        """The first ``count`` captions and the rest."""
        boundary = int(self.lengths[:count].sum())
        return (Sentences(self.words[:boundary], self.lengths[:count]),
                Sentences(self.words[boundary:], self.lengths[count:]))  # fmt: skip


@dataclass(frozen=True)
class NgramCounts:
    """The n-grams of one order in every sentence, as parallel arrays of E entries.

    Entries are sorted by (sentence, key) and each (sentence, key) pair appears once.
    """

    sentence: np.ndarray  # (E,) index of the sentence
    key: np.ndarray  # (E,) int64 key of the n-gram (module docstring)
    count: np.ndarray  # (E,) how often the n-gram occurs in that sentence


@dataclass(frozen=True)
class PairCodes:
    """(group, key) pairs of several arrays as one int64 each: ``group * base + k``, ordered as the pairs,
    equal for equal pairs across the arrays. k is the key itself when that fits an int64, else the key's
    rank among the distinct keys (``key_values[k]``)."""

    codes: list[np.ndarray]
    base: int
    key_values: np.ndarray | None  # None: k is the key

    def split(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(group, key)`` of codes."""
        group, k = np.divmod(codes, self.base)
        return group, k if self.key_values is None else self.key_values[k]


def pair_codes(*pairs: tuple[np.ndarray, np.ndarray]) -> PairCodes:
    """Code every (group, key) pair of the given ``(group (E_i,), key (E_i,))`` arrays, all non-negative int64.

    Sorting or searching one int64 array is several times faster than ``np.lexsort`` on two;
    the keys are renumbered (one ``np.unique``) only when group * key would overflow.
    """
    keys = [key for _, key in pairs]
    base = max((int(key.max()) + 1 for key in keys if len(key)), default=1)
    groups = max((int(group.max()) + 1 for group, _ in pairs if len(group)), default=1)
    key_values = None
    if float(groups) * base >= 2**62:
        key_values, dense = np.unique(np.concatenate(keys), return_inverse=True)
        base = max(len(key_values), 1)
        keys = np.split(dense, np.cumsum([len(key) for key in keys])[:-1])
    return PairCodes([group * base + key for (group, _), key in zip(pairs, keys)], base, key_values)


def runs_of(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort codes and find their distinct values.

    Returns:
        ``(order, starts)``: the permutation that sorts ``codes``, and the positions in that
        order where a new distinct value starts (K,), ready for ``reduceat``.
    """
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    new = np.ones(len(ordered), dtype=bool)
    new[1:] = ordered[1:] != ordered[:-1]
    return order, np.flatnonzero(new)


def ngram_counts(sentences: Sentences, max_order: int, vocab_size: int) -> list[NgramCounts]:
    """Count the 1..max_order-grams of every sentence, keyed as in the module docstring.

    An n-gram starting at word i extends the (n-1)-gram starting there by word i + n - 1,
    so each order's keys come from the previous order's by one multiply-add::

        words   a   cat  on  a   mat      (ids 0 1 2 0 3, V = 4)
        1-gram  0   1    2   0   3
        2-gram  0*4+1  1*4+2  2*4+0  0*4+3

    Args:
        sentences: S captions of ids in [0, vocab_size).
        max_order: the longest n-grams counted.
        vocab_size: V (see :func:`check_key_range`).

    Returns:
        One :class:`NgramCounts` per order (index 0 = unigrams).
    """
    check_key_range(vocab_size, max_order)
    words, lengths = sentences.words, sentences.lengths
    sentence_of_word = np.repeat(np.arange(len(lengths)), lengths)
    sentence_starts = np.cumsum(lengths) - lengths
    remaining = lengths[sentence_of_word] - (np.arange(len(words)) - sentence_starts[sentence_of_word])
    orders = []
    starts, keys = np.arange(len(words)), words.astype(np.int64)  # words where an n-gram starts; its key
    for order in range(1, max_order + 1):
        if order > 1:  # keep the (order-1)-grams that can be extended inside their sentence
            extendable = remaining[starts] >= order
            starts, keys = starts[extendable], keys[extendable] * vocab_size + words[starts[extendable] + order - 1]
        coded = pair_codes((sentence_of_word[starts], keys))
        codes, counts = distinct(coded.codes[0])
        orders.append(NgramCounts(*coded.split(codes), counts))
    return orders


def distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and how often each occurs: ``np.unique(values, return_counts=True)``, which in
    NumPy >= 2.3 is slower on arrays of millions of int64s (benchmarks/micro.py --groups unique).

    Returns:
        ``(values, counts)``, each (K,).
    """
    values = np.sort(values)
    new = np.ones(len(values), dtype=bool)
    new[1:] = values[1:] != values[:-1]
    first = np.flatnonzero(new)
    return values[first], np.diff(np.append(first, len(values)))
